//! The emulator's S3 bucket: browser-style POST uploads checked against their signed policy as
//! S3 checks them, S3's XML answers, and GET of a stored object.
//!
//! The body is read as a stream: the fields before `file` are checked before a byte of the file
//! is stored, the file is hashed and counted as it arrives and refused as soon as it outgrows the
//! policy, and whatever follows `file` is never read, as S3 ignores it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

use super::App;
use super::policy::{Limits, Refusal, check_form};
use super::state::{Body as ObjectBody, Object};

/// Text content as S3 writes it: `<`, `>` and `&` escaped, quotes left as they are.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::partial_escape(s)
}

/// S3's `<Error>` document with its status, and `Connection: close` as S3 sends with a refusal:
/// the upload's body may be left unread, so the connection cannot carry another request (a
/// client that pooled it would meet a broken pipe on its next request).
pub fn error_response(refusal: &Refusal, resource: &str) -> Response {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>EMULATOR</RequestId><HostId>opcrm-import-emulator</HostId></Error>",
        refusal.code,
        escape(&refusal.message),
        escape(resource)
    );
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/xml"),
            (header::CONNECTION, "close"),
        ],
        xml,
    )
        .into_response()
}

fn malformed() -> Refusal {
    Refusal::new(
        "MalformedPOSTRequest",
        400,
        "The body of your POST request is not well-formed multipart/form-data.",
    )
}

fn no_such_bucket(bucket: &str) -> Response {
    error_response(
        &Refusal::new("NoSuchBucket", 404, "The specified bucket does not exist"),
        bucket,
    )
}

/// `POST /{bucket}/`: one browser-style upload.
pub async fn upload(
    AxState(app): AxState<Arc<App>>,
    Path(bucket): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    if bucket != app.signer.bucket {
        return no_such_bucket(&bucket);
    }
    let Ok(multipart) = multipart else {
        return error_response(&malformed(), &bucket);
    };
    match receive(&app, &bucket, multipart).await {
        Ok(response) => response,
        Err(refusal) => error_response(&refusal, &bucket),
    }
}

/// Where the file's bytes go while they arrive.
enum Sink {
    Memory(Vec<u8>),
    File(tokio::fs::File, std::path::PathBuf),
}

/// S3's answer when the emulator cannot keep an object (the `--data-dir` refused it).
fn cannot_store(e: std::io::Error) -> Refusal {
    Refusal::new(
        "InternalError",
        500,
        format!("cannot store the object: {e}"),
    )
}

impl Sink {
    /// Memory, or, with `--data-dir`, a `.part` file named after `key` that becomes the object's
    /// file once the whole file has arrived.
    async fn open(app: &App, key: &str) -> Result<Self, Refusal> {
        match &app.config.data_dir {
            None => Ok(Sink::Memory(Vec::new())),
            Some(dir) => {
                let path = dir
                    .join("objects")
                    .join(format!("{}.part", object_file_name(key)));
                let file = tokio::fs::File::create(&path).await.map_err(cannot_store)?;
                Ok(Sink::File(file, path))
            }
        }
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        match self {
            Sink::Memory(bytes) => {
                bytes.extend_from_slice(chunk);
                Ok(())
            }
            Sink::File(file, _) => file.write_all(chunk).await.map_err(cannot_store),
        }
    }

    /// Drops what arrived of a refused file.
    fn discard(&self) {
        if let Sink::File(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The object's body, once the whole file has arrived: the `.part` file is renamed to the
    /// object's own name only now, so that a stored name always holds a whole file.
    async fn finish(self) -> Result<ObjectBody, Refusal> {
        match self {
            Sink::Memory(bytes) => Ok(ObjectBody::Memory(Arc::new(bytes))),
            Sink::File(mut file, part) => {
                let stored = async {
                    file.flush().await?;
                    drop(file);
                    let path = part.with_extension("");
                    tokio::fs::rename(&part, &path).await?;
                    Ok::<_, std::io::Error>(path)
                };
                Ok(ObjectBody::File(stored.await.map_err(cannot_store)?))
            }
        }
    }
}

/// Reads a browser POST as S3 does: the fields before the file are checked against the policy,
/// the file is streamed ([`receive_file`]), and what follows it is ignored.
async fn receive(app: &App, bucket: &str, mut multipart: Multipart) -> Result<Response, Refusal> {
    let mut fields: Vec<(String, String)> = Vec::new();
    loop {
        let Some(field) = multipart.next_field().await.map_err(|_| malformed())? else {
            return Err(Refusal::new(
                "InvalidArgument",
                400,
                "POST requires exactly one file upload per request.",
            ));
        };
        let name = field.name().unwrap_or_default().to_ascii_lowercase();
        if name != "file" {
            let value = field.text().await.map_err(|_| malformed())?;
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(Refusal::new(
                    "InvalidArgument",
                    400,
                    format!("The field {name} appears more than once."),
                ));
            }
            fields.push((name, value));
            continue;
        }

        // The file: everything before it must already satisfy the policy.
        let limits = check_form(&app.signer, &fields, bucket, app.clock.now())?;
        let key = object_key(&fields, field.file_name().unwrap_or_default())?;
        let object = receive_file(app, field, key, limits).await?;
        let (key, etag) = (object.key.clone(), object.md5.clone());
        app.state().objects.insert(key.clone(), object);
        // S3 ignores whatever follows the file: it is not read.
        return Ok(success(app, bucket, &key, &etag, &fields));
    }
}

/// The key the object is stored under: the form's `key` field with `${filename}` replaced by
/// the file part's name; refused when it comes out empty.
fn object_key(fields: &[(String, String)], filename: &str) -> Result<String, Refusal> {
    let key = fields
        .iter()
        .find(|(n, _)| n == "key")
        .map(|(_, v)| v.replace("${filename}", filename));
    let key = key.unwrap_or_default();
    if key.is_empty() {
        return Err(Refusal::new(
            "InvalidArgument",
            400,
            "The key field must not be empty.",
        ));
    }
    Ok(key)
}

/// The file part, stored under `key` as it arrives, hashed and counted: refused as soon as it
/// outgrows the policy's `limits` (what arrived is dropped), or at its end if it is smaller.
async fn receive_file(
    app: &App,
    mut field: axum::extract::multipart::Field<'_>,
    key: String,
    limits: Limits,
) -> Result<Object, Refusal> {
    let mut sink = Sink::open(app, &key).await?;
    let mut md5 = Md5::new();
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|_| malformed())? {
        size += chunk.len() as u64;
        if size > limits.max_size {
            sink.discard();
            return Err(Refusal::new(
                "EntityTooLarge",
                400,
                "Your proposed upload exceeds the maximum allowed size",
            ));
        }
        md5.update(&chunk);
        sink.write(&chunk).await?;
    }
    if size < limits.min_size {
        return Err(Refusal::new(
            "EntityTooSmall",
            400,
            "Your proposed upload is smaller than the minimum allowed size",
        ));
    }
    let body = sink.finish().await?;
    Ok(Object {
        key,
        size,
        md5: hex::encode(md5.finalize()),
        body,
    })
}

/// A stored object's file name under `--data-dir`: the key's SHA-256, so any key is a safe name.
fn object_file_name(key: &str) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The answer `success_action_status` asks for: 201 with a PostResponse, 200 empty, else 204.
fn success(
    app: &App,
    bucket: &str,
    key: &str,
    etag: &str,
    fields: &[(String, String)],
) -> Response {
    let status = fields
        .iter()
        .find(|(n, _)| n == "success_action_status")
        .map(|(_, v)| v.as_str());
    let location = format!("{}{}", app.s3_url(), encode_key(key));
    let quoted = format!("\"{etag}\"");
    let headers = [
        (header::ETAG, quoted.clone()),
        (header::LOCATION, location.clone()),
    ];
    match status {
        Some("201") => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse><Location>{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></PostResponse>",
                escape(&location),
                escape(bucket),
                escape(key),
                escape(&quoted)
            );
            let mut response = (StatusCode::CREATED, headers, xml).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/xml"),
            );
            response
        }
        Some("200") => (StatusCode::OK, headers).into_response(),
        _ => (StatusCode::NO_CONTENT, headers).into_response(),
    }
}

/// A key as it appears in a URL path: each segment percent-encoded, the slashes kept.
pub fn encode_key(key: &str) -> String {
    key.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// One path segment percent-encoded: every byte but the unreserved ones, `/` too.
pub fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /{bucket}/{key}`: a stored object's bytes. With a presigned query (an attachment's
/// `url`) the signature and expiry are checked as S3 does; without one the object is served
/// as it is, so a test can compare it with the file.
pub async fn download(
    AxState(app): AxState<Arc<App>>,
    Path((bucket, key)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    if bucket != app.signer.bucket {
        return no_such_bucket(&bucket);
    }
    if let Some(query) = uri.query().filter(|q| q.contains("X-Amz-Signature")) {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if let Err(refusal) =
            app.signer
                .check_presigned_get(uri.path(), host, &pairs, app.clock.now())
        {
            return error_response(&refusal, &key);
        }
    }
    object_response(&app, &key).await
}

/// A stored object's bytes with its ETag, or S3's `NoSuchKey`.
pub async fn object_response(app: &App, key: &str) -> Response {
    let found = app
        .state()
        .objects
        .get(key)
        .map(|o| (o.body.clone(), o.md5.clone()));
    let Some((body, md5)) = found else {
        return error_response(
            &Refusal::new("NoSuchKey", 404, "The specified key does not exist."),
            key,
        );
    };
    let bytes = match body {
        ObjectBody::Memory(bytes) => bytes.as_ref().clone(),
        ObjectBody::File(path) => match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                return error_response(&Refusal::new("InternalError", 500, e.to_string()), key);
            }
        },
    };
    (
        StatusCode::OK,
        [(header::ETAG, format!("\"{md5}\""))],
        Body::from(bytes),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_per_segment() {
        assert_eq!(encode_key("c1/123/a b+%#.pdf"), "c1/123/a%20b%2B%25%23.pdf");
        assert_eq!(encode_key("c/1/Müller.pdf"), "c/1/M%C3%BCller.pdf");
        assert_eq!(encode_segment("c1/123/a b.pdf"), "c1%2F123%2Fa%20b.pdf");
    }
}
