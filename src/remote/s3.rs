//! Step 2: the browser-style POST of one file to S3, streamed from disk.
//!
//! The multipart body is written here rather than by reqwest: S3 needs a Content-Length (it
//! refuses chunked POSTs), each part's Content-Disposition must be encoded as browsers and curl
//! do (RFC 7578: `"` as `%22`, CR and LF as `%0D`/`%0A`, UTF-8 as is), and the file's MD5 is
//! computed from the very bytes that are sent, to compare with the ETag S3 answers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use tokio::io::AsyncReadExt;

use super::api::Form;
use super::{Client, RemoteError, S3_ANSWER_CAP, log_request, read_capped, upload_timeout};

/// What S3 stored.
#[derive(Clone, Debug)]
pub struct Uploaded {
    /// The MD5 of the bytes sent, in hex; S3's ETag matched it (when S3 gave one).
    pub md5: String,
}

/// A multipart field name or file name as browsers write it inside `"…"`.
fn quote(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn random_boundary() -> String {
    use rand::Rng;
    let tail: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("----opcrm-import-{tail}")
}

/// The bytes before and after the file, for `fields` then `key`, `filename` and the file part.
fn envelope(
    boundary: &str,
    fields: &[(String, String)],
    key: &str,
    filename: &str,
) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(4096);
    let mut text_part = |name: &str, value: &str| {
        head.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{value}\r\n",
                quote(name)
            )
            .as_bytes(),
        );
    };
    for (name, value) in fields {
        text_part(name, value);
    }
    text_part("key", key);
    text_part("filename", filename);
    head.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            quote(filename)
        )
        .as_bytes(),
    );
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    (head, tail)
}

/// What went out of the file so far, shared between the request body and [`Client::upload`]:
/// the MD5 of the bytes and how many there were.
type Sent = Arc<Mutex<(Md5, u64)>>;

/// The request body: `head`, exactly `size` bytes of `file`, hashed and counted as they go out
/// (into the [`Sent`] returned with it), then `tail`.
fn streamed_body(
    file: tokio::fs::File,
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
) -> (reqwest::Body, Sent) {
    let sent = Arc::new(Mutex::new((Md5::new(), 0u64)));
    let counter = sent.clone();
    let file_stream =
        tokio_util::io::ReaderStream::with_capacity(file.take(size), 64 * 1024).map(move |chunk| {
            if let Ok(bytes) = &chunk {
                let mut guard = counter.lock().unwrap_or_else(|e| e.into_inner());
                guard.0.update(bytes);
                guard.1 += bytes.len() as u64;
            }
            chunk
        });
    let body =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
            .chain(file_stream)
            .chain(futures_util::stream::once(
                async move { Ok(Bytes::from(tail)) },
            ));
    (reqwest::Body::wrap_stream(body), sent)
}

/// The MD5 (in hex) and the count of the bytes of the file that went out.
fn sent_so_far(sent: &Sent) -> (String, u64) {
    let guard = sent.lock().unwrap_or_else(|e| e.into_inner());
    (hex::encode(guard.0.clone().finalize()), guard.1)
}

impl Client {
    /// Uploads `size` bytes of `path` under `key` with the fields of `form`.
    ///
    /// The order is the protocol: open the file, stream it while its MD5 is computed
    /// (`streamed_body`), read S3's answer under a cap (`read_s3_answer`), check that what
    /// went out was the whole file (`check_sent_whole`), compare the ETag.
    pub async fn upload(
        &self,
        form: &Form,
        key: &str,
        filename: &str,
        path: &Path,
        size: u64,
    ) -> Result<Uploaded, RemoteError> {
        let unreadable =
            |e: std::io::Error| RemoteError::FileUnreadable(format!("{}: {e}", path.display()));
        let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
        let boundary = random_boundary();
        let (head, tail) = envelope(&boundary, &form.fields, key, filename);
        let length = head.len() as u64 + size + tail.len() as u64;
        let (body, sent) = streamed_body(file, size, head, tail);

        let started = std::time::Instant::now();
        let response = self
            .http
            .post(&form.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, length)
            .timeout(upload_timeout(size))
            .body(body)
            .send()
            .await;
        if let Ok(url) = reqwest::Url::parse(&form.url) {
            log_request("S3", &reqwest::Method::POST, &url, &response, started);
        }
        let (md5, count) = sent_so_far(&sent);
        let response = match response {
            Ok(r) => r,
            Err(_) if count < size && file_shrank(path, size) => {
                return Err(RemoteError::FileChanged(format!(
                    "it is no longer {size} bytes"
                )));
            }
            Err(e) => return Err(RemoteError::network(e)),
        };
        let etag = read_s3_answer(response, form, key).await?;
        check_sent_whole(path, size, count)?;
        if let Some(etag) = etag
            && etag != md5
        {
            return Err(RemoteError::EtagMismatch { etag, md5 });
        }
        Ok(Uploaded { md5 })
    }
}

/// S3's answer to the upload of `key` (its body read under a cap): the ETag it gave, if any;
/// an error when it is S3's error, not one of S3's success answers (see [`check_success`]), or
/// says the bytes were stored under another key.
async fn read_s3_answer(
    response: reqwest::Response,
    form: &Form,
    key: &str,
) -> Result<Option<String>, RemoteError> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .to_string();
    let header_etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_capped(response, S3_ANSWER_CAP, "S3").await?;
    let body = String::from_utf8_lossy(&body);
    let asked = form
        .fields
        .iter()
        .find(|(name, _)| name == "success_action_status")
        .map(|(_, value)| value.as_str());
    check_success(asked, status, &content_type, &body)?;
    let etag = read_answer(status, header_etag, &body)?;
    // The key is attached in step 3 as it was sent: when S3 says it stored the bytes under
    // another one, that attachment would name a key that holds nothing.
    if let Some(stored) = element_text(&body, &["Key"])
        && stored != key
    {
        return Err(RemoteError::S3KeyMismatch {
            sent: key.to_string(),
            stored: crate::manifest::cut(&stored).into_owned(),
        });
    }
    Ok(etag)
}

/// Whether what went out is the file: `count` bytes were read of the `size` expected, the file
/// still has that size, and it reads as it (see [`crate::preflight::reads_as_its_size`]).
fn check_sent_whole(path: &Path, size: u64, count: u64) -> Result<(), RemoteError> {
    if count != size {
        return Err(RemoteError::FileChanged(format!(
            "{count} bytes read, {size} expected"
        )));
    }
    if std::fs::metadata(path).map(|m| m.len()).ok() != Some(size) {
        return Err(RemoteError::FileChanged(format!(
            "it is no longer {size} bytes"
        )));
    }
    // `size` bytes went out, but the file may hold more than its size says (one of /proc):
    // what was sent is then not the file.
    let whole = std::fs::File::open(path)
        .is_ok_and(|mut f| crate::preflight::reads_as_its_size(&mut f, size));
    if !whole {
        return Err(RemoteError::FileChanged(format!(
            "it does not read as the {size} bytes its size says"
        )));
    }
    Ok(())
}

fn file_shrank(path: &Path, size: u64) -> bool {
    std::fs::metadata(path)
        .map(|m| m.len() < size)
        .unwrap_or(true)
}

/// The text of the first element named one of `names` (S3 writes `ETag`, some servers `Etag`),
/// with entity references resolved (`&quot;abc&quot;` is `"abc"`).
fn element_text(xml: &str, names: &[&str]) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut text: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e))
                if names
                    .iter()
                    .any(|n| e.local_name().as_ref() == n.as_bytes()) =>
            {
                text = Some(String::new());
            }
            Ok(Event::Text(t)) => {
                if let (Some(text), Ok(piece)) = (text.as_mut(), t.decode()) {
                    text.push_str(&piece);
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let (Some(text), Ok(name)) = (text.as_mut(), r.decode()) {
                    let resolved =
                        quick_xml::escape::resolve_predefined_entity(&name).unwrap_or_default();
                    text.push_str(resolved);
                }
            }
            Ok(Event::End(_)) if text.is_some() => return text,
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// S3's answer to the POST: an error, or the ETag it gave (unquoted, lower case), if any.
///
/// Read leniently, as real servers differ: the ETag from the `<ETag>` or `<Etag>` of a
/// `PostResponse`, else from the `ETag` header, quoted or not; `Location` absolute or relative
/// (it is not used: the key is known). An empty 2xx body and no ETag header (204, or a 201 from
/// a server that writes no `PostResponse`) is a success whose bytes cannot be checked here; step 3
/// then checks them, since the API refuses an attachment unless the object is there with the
/// stated size.
fn read_answer(
    status: u16,
    header_etag: Option<String>,
    body: &str,
) -> Result<Option<String>, RemoteError> {
    if !(200..300).contains(&status) {
        let (code, message) = parse_error(body);
        return Err(RemoteError::S3 {
            status,
            code,
            message,
        });
    }
    Ok(parse_etag(body)
        .or(header_etag)
        .map(|etag| etag.trim().trim_matches('"').to_ascii_lowercase())
        .filter(|etag| !etag.is_empty()))
}

/// Whether a 2xx answer is one of S3's success answers: the status the form's
/// `success_action_status` asked for (200, 201 or 204), or 204 (what S3 answers when the form
/// asks for nothing else), with an empty body or a `PostResponse`. Anything else (a proxy's or a
/// web server's `200` page, say) is not taken as an upload: the object may not be there.
fn check_success(
    asked: Option<&str>,
    status: u16,
    content_type: &str,
    body: &str,
) -> Result<(), RemoteError> {
    if !(200..300).contains(&status) {
        return Ok(());
    }
    let asked = asked
        .map(str::trim)
        .filter(|a| matches!(*a, "200" | "201" | "204"));
    let expected = match asked {
        Some("201") => "201 with a PostResponse (as the form asks) or 204".to_string(),
        Some(a) if a != "204" => format!("{a} (as the form asks) or 204"),
        _ => "204".to_string(),
    };
    let status_ok = status == 204 || asked == Some(status.to_string().as_str());
    let body_ok = body.trim().is_empty() || is_post_response(body);
    if status_ok && body_ok {
        return Ok(());
    }
    let what = if body.trim().is_empty() {
        "an empty body".to_string()
    } else {
        format!("a {}-byte {content_type} body", body.len())
    };
    Err(RemoteError::Protocol {
        what: "S3",
        detail: format!(
            "status {status} with {what}, not S3's success answer ({expected}); the file is not taken as uploaded (is something other than S3 answering at the form's URL?)"
        ),
    })
}

/// Whether `body` is an XML document whose root element is a `PostResponse`.
fn is_post_response(body: &str) -> bool {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(body.trim());
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                return e.local_name().as_ref() == b"PostResponse";
            }
            Ok(Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_)) => {}
            Ok(Event::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => {}
            _ => return false,
        }
    }
}

fn parse_etag(xml: &str) -> Option<String> {
    element_text(xml, &["ETag", "Etag"]).filter(|s| !s.trim().trim_matches('"').is_empty())
}

/// S3's `<Error><Code>…</Code><Message>…</Message></Error>`; without a code, the body's start.
fn parse_error(xml: &str) -> (String, String) {
    match element_text(xml, &["Code"]) {
        Some(code) => (code, element_text(xml, &["Message"]).unwrap_or_default()),
        None => (
            "UnknownError".to_string(),
            xml.trim().chars().take(200).collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_encoded_as_browsers_do() {
        assert_eq!(quote("Report \"v2\"\r\n.pdf"), "Report %22v2%22%0D%0A.pdf");
        assert_eq!(quote("Müller.pdf"), "Müller.pdf");
        let (head, tail) = envelope(
            "B",
            &[("acl".into(), "private".into())],
            "c/1/a\".pdf",
            "a\".pdf",
        );
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with(
                "--B\r\nContent-Disposition: form-data; name=\"acl\"\r\n\r\nprivate\r\n"
            )
        );
        assert!(head.contains("name=\"key\"\r\n\r\nc/1/a\".pdf\r\n"));
        assert!(head.ends_with(
            "name=\"file\"; filename=\"a%22.pdf\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        assert_eq!(tail, b"\r\n--B--\r\n");
    }

    #[test]
    fn etags_and_errors_are_read_leniently() {
        let quoted = "<PostResponse><Location>x</Location><ETag>\"abc\"</ETag></PostResponse>";
        assert_eq!(parse_etag(quoted).unwrap().trim_matches('"'), "abc");
        let escaped = "<PostResponse><ETag>&quot;abc&quot;</ETag></PostResponse>";
        assert_eq!(parse_etag(escaped).as_deref(), Some("\"abc\""));
        let lower = "<PostResponse><Etag>abc</Etag></PostResponse>";
        assert_eq!(parse_etag(lower).as_deref(), Some("abc"));
        assert_eq!(parse_etag(""), None);
        let (code, message) = parse_error(
            "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>",
        );
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("SlowDown", "Please reduce")
        );
        let (code, message) = parse_error("<Error><Code>MalformedPOSTRequest</Code></Error>");
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("MalformedPOSTRequest", "")
        );
        let (code, message) = parse_error("Bad Gateway\n");
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("UnknownError", "Bad Gateway")
        );
    }

    #[test]
    fn only_s3_success_answers_count_as_uploads() {
        let post = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse><Location>/b/k</Location><ETag>\"abc\"</ETag></PostResponse>";
        let html = "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>";
        let ok = |asked, status, body| check_success(asked, status, "application/xml", body);
        // What the form asks for, with S3's body for it, or 204 whatever it asks.
        assert!(ok(Some("201"), 201, post).is_ok());
        assert!(
            ok(Some("201"), 201, "").is_ok(),
            "an empty 201 (some servers)"
        );
        assert!(ok(Some("201"), 204, "").is_ok());
        assert!(ok(Some("200"), 200, "").is_ok());
        assert!(ok(Some("204"), 204, "").is_ok());
        assert!(ok(None, 204, "").is_ok());
        // A status the form did not ask for, or a body that is not S3's.
        for (asked, status, body) in [
            (Some("201"), 200, html),
            (Some("201"), 200, ""),
            (Some("201"), 201, html),
            (Some("201"), 201, "OK"),
            (Some("201"), 202, ""),
            (Some("200"), 200, html),
            (None, 200, ""),
            (None, 201, post),
            (Some("204"), 204, html),
        ] {
            let err = check_success(asked, status, "text/html", body).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::failure::FailureKind::Protocol,
                "{asked:?} {status} {body}"
            );
            assert!(
                err.to_string().contains(&format!("status {status}")),
                "{err}"
            );
        }
        let err = check_success(Some("201"), 200, "text/html; charset=utf-8", html).unwrap_err();
        assert!(
            err.to_string().contains("text/html")
                && err.to_string().contains("201 with a PostResponse")
                && !err.to_string().contains("nginx"),
            "{err}"
        );
        // Errors are read by `read_answer`, not here.
        assert!(ok(Some("201"), 403, html).is_ok());
    }

    #[test]
    fn answers_of_different_servers_are_read_alike() {
        let etag = |status, header: Option<&str>, body: &str| {
            read_answer(status, header.map(str::to_string), body).unwrap()
        };
        let abc = Some("abc".to_string());
        // S3: absolute Location, quoted ETag escaped in XML, and the header too.
        let s3 = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse><Location>https://b.s3.amazonaws.com/c%2F1%2Fa.pdf</Location><Bucket>b</Bucket><Key>c/1/a.pdf</Key><ETag>&quot;ABC&quot;</ETag></PostResponse>";
        assert_eq!(etag(201, Some("\"abc\""), s3), abc);
        // s3s: relative Location.
        let s3s = "<PostResponse><Location>/b/c/1/a.pdf</Location><Bucket>b</Bucket><Key>c/1/a.pdf</Key><ETag>\"abc\"</ETag></PostResponse>";
        assert_eq!(etag(201, None, s3s), abc);
        for body in [s3, s3s] {
            assert!(check_success(Some("201"), 201, "application/xml", body).is_ok());
        }
        // `<Etag>`, unquoted.
        assert_eq!(
            etag(201, None, "<PostResponse><Etag>abc</Etag></PostResponse>"),
            abc
        );
        // An empty body: the header's ETag, quoted or not, or none at all.
        assert_eq!(etag(201, Some("\"abc\""), ""), abc);
        assert_eq!(etag(204, Some("abc"), ""), abc);
        assert_eq!(etag(201, None, ""), None);
        assert_eq!(etag(200, Some("\"\""), ""), None);
        // A failure is an error whatever the body.
        match read_answer(
            403,
            None,
            "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        ) {
            Err(e) => assert!(e.is_form_expired(), "{e}"),
            Ok(v) => panic!("{v:?}"),
        }
    }
}
