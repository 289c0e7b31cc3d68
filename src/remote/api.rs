//! API v3 calls: step 1 (the upload form), step 3 (attach), contacts by email, a record or a
//! contact's records of one type with their attachments (the snapshot before a first attach,
//! the check after a lost answer, `check`'s reads of the records), and notes (to create the
//! notes rows attach to, and to list a contact's notes after a lost answer).

use serde_json::Value;

use super::{
    API_ANSWER_CAP, API_TIMEOUT, Client, RECORD_ANSWER_CAP, RemoteError, log_request, read_capped,
};
use crate::manifest::cut;
use crate::onepagecrm::{LinkType, ReferenceType};

/// What is escaped of a manifest's id in a URL path: its `/`, `?`, `#` and `%` (and anything
/// else but letters, digits and `-_.~`) must not take the request to another endpoint.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Step 1's answer: where and how to upload.
#[derive(Clone, Debug)]
pub struct Form {
    /// The bucket URL to POST to.
    pub url: String,
    /// The form fields to send, in the order to send them, without `key` and `x-ignore-pattern`.
    pub fields: Vec<(String, String)>,
    /// `<contact>/__timestamp__/${filename}`
    pub key_pattern: String,
    /// The answer's top-level `timestamp` as sent, when it is a positive integer: its unit is not
    /// promised (documented as Unix seconds, seen in milliseconds), nor that the server's clock is
    /// right.
    pub timestamp: Option<i64>,
    /// The keys' timestamp part: the answer's `timestamp` (in seconds or milliseconds), or our
    /// clock's Unix seconds when the answer has none or one of another length. Fixed once per form, so that every key of one form shares it (what
    /// `checkpoint::key_shares_form` and a server that tells forms by it go by).
    pub key_stamp: i64,
    /// When the answer arrived, on our monotonic clock: the form's life is counted from here (see
    /// `pipeline::forms::reuse_window`), not from any wall clock.
    pub arrived: std::time::Instant,
    pub storage_left: u64,
}

/// The tutorial's order of the form fields; others go after these and before `key`.
const FIELD_ORDER: [&str; 7] = [
    "acl",
    "success_action_status",
    "policy",
    "x-amz-credential",
    "x-amz-algorithm",
    "x-amz-date",
    "x-amz-signature",
];

impl Form {
    /// A new object key for `filename`, in OnePageCRM's `<contact>/<timestamp>/<name>` shape. Its
    /// timestamp part is the form's `key_stamp` (10 digits of seconds or 13 of milliseconds)
    /// followed by random digits up to [`KEY_STAMP_DIGITS`] in all (9 after seconds, 6 after
    /// milliseconds): a decimal that fits a 64-bit integer, as a server that parses the
    /// documented `{timestamp}` needs, and that no two uploads share, whatever state file,
    /// process or machine they come from (two files of one name for one contact in the same
    /// second would otherwise overwrite each other in S3). Within a state file, the UNIQUE
    /// constraint on keys catches a repeat and another draw settles it.
    pub fn key(&self, filename: &str) -> String {
        let stamp = self.key_stamp.to_string();
        let random = KEY_STAMP_DIGITS.saturating_sub(stamp.len());
        let unique: u64 = rand::Rng::random_range(&mut rand::rng(), 0..10u64.pow(random as u32));
        let stamp = format!("{stamp}{unique:0random$}");
        self.key_pattern
            .replace("__timestamp__", &stamp)
            .replace("${filename}", filename)
    }
}

/// The digits of a key's timestamp part: at most 19, so that it fits a signed 64-bit integer
/// (OnePageCRM's example has 13).
pub const KEY_STAMP_DIGITS: usize = 19;

/// The form's timestamp as the keys take it: the answer's when it has 10 digits (seconds) or 13
/// (milliseconds), else our clock's seconds. So a key's timestamp part always opens with the
/// form's seconds (`checkpoint::key_shares_form` tells forms by them) and leaves room for at
/// least 6 random digits.
fn key_stamp(timestamp: Option<i64>) -> i64 {
    timestamp
        .filter(|t| matches!(t.to_string().len(), 10 | 13))
        .unwrap_or_else(|| chrono::Utc::now().timestamp())
}

/// What a delete found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Deleted by this call.
    Now,
    /// Not there (404).
    AlreadyGone,
}

/// An attachment as a record lists it.
#[derive(Clone, Debug)]
pub struct RemoteAttachment {
    pub id: String,
    pub filename: String,
    pub size: u64,
    /// Where it can be fetched: for S3-hosted files a presigned URL of the object; for a link,
    /// its URL.
    pub url: Option<String>,
    /// Where the file is (`amazon` for an uploaded file, a link type for a link), when shown.
    pub storage_provider: Option<String>,
}

impl RemoteAttachment {
    /// Whether it is a link: its `storage_provider` is a link type.
    pub fn is_link(&self) -> bool {
        self.storage_provider
            .as_deref()
            .is_some_and(|p| LinkType::parse(p).is_some())
    }

    /// Whether it may be a link of `link_type` to `url`, as far as it shows: its
    /// `storage_provider` (when shown) is that type, and its `url` (when shown) is that URL (as
    /// URLs: `https://X.example` is `https://x.example/`). `Some(true)`: it shows that URL;
    /// `Some(false)`: it shows it is not; `None`: it shows no URL to tell by.
    pub fn shows_link(&self, url: &str, link_type: LinkType) -> Option<bool> {
        if let Some(p) = &self.storage_provider
            && p != link_type.as_str()
        {
            return Some(false);
        }
        let shown = self.url.as_deref()?;
        let same = match (reqwest::Url::parse(shown), reqwest::Url::parse(url)) {
            (Ok(a), Ok(b)) => a == b,
            _ => shown == url,
        };
        Some(same)
    }

    /// The object key its `url` shows, if the URL's path ends with one of `contact_id`'s keys
    /// (`…/<contact>/<digits>/<name>`, percent-decoded; the query is ignored). An S3-hosted
    /// attachment's `url` is a presigned URL of its object, so its path ends with the key
    /// (virtual-hosted or path-style alike).
    pub fn key(&self, contact_id: &str) -> Option<String> {
        let url = reqwest::Url::parse(self.url.as_deref()?).ok()?;
        let segments: Vec<String> = url
            .path_segments()?
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|d| d.into_owned())
            })
            .collect::<Result<_, _>>()
            .ok()?;
        let [.., contact, stamp, name] = segments.as_slice() else {
            return None;
        };
        let is_key = contact == contact_id
            && !stamp.is_empty()
            && stamp.bytes().all(|b| b.is_ascii_digit())
            && !name.is_empty();
        is_key.then(|| format!("{contact}/{stamp}/{name}"))
    }
}

/// A note as the API shows it (the OpenAPI `Note`, the fields the tool reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNote {
    pub id: String,
    pub contact_id: String,
    pub text: String,
    pub date: Option<String>,
    /// RFC 3339, as the API writes it.
    pub created_at: Option<String>,
}

/// One page of `GET /notes`.
#[derive(Clone, Debug)]
pub struct NotesPage {
    pub notes: Vec<RemoteNote>,
    pub total_count: u64,
    pub page: u64,
    pub max_page: u64,
    /// The envelope's `timestamp`: the server's clock when it answered, in Unix seconds (read
    /// from seconds or milliseconds, see [`unix_seconds`]); `None` when it has none or it is
    /// neither.
    pub server_time: Option<i64>,
}

fn parse_note(note: &Value) -> Option<RemoteNote> {
    let text = |k: &str| note.get(k).and_then(Value::as_str).map(str::to_string);
    Some(RemoteNote {
        id: text("id")?,
        contact_id: text("contact_id").unwrap_or_default(),
        text: text("text").unwrap_or_default(),
        date: text("date"),
        created_at: text("created_at"),
    })
}

/// Step 3 for a link (`POST /attachments` with `link_type` and `external_url`): no key, no
/// size, no upload before it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachLink<'a> {
    pub reference_id: &'a str,
    pub reference_type: ReferenceType,
    pub contact_id: &'a str,
    pub name: &'a str,
    pub link_type: LinkType,
    pub external_url: &'a str,
}

/// Step 3's request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attach<'a> {
    pub reference_id: &'a str,
    pub reference_type: ReferenceType,
    pub contact_id: &'a str,
    pub name: &'a str,
    pub key: &'a str,
    pub size: u64,
}

impl Client {
    /// Sends an API request and returns the envelope's `data` (and the whole envelope).
    async fn api(&self, request: reqwest::RequestBuilder) -> Result<Value, RemoteError> {
        self.api_capped(request, API_ANSWER_CAP).await
    }

    /// As `api`, reading at most `cap` bytes of the answer.
    async fn api_capped(
        &self,
        request: reqwest::RequestBuilder,
        cap: usize,
    ) -> Result<Value, RemoteError> {
        let request = request
            .basic_auth(&self.credentials.user_id, Some(self.credentials.api_key()))
            .timeout(API_TIMEOUT)
            .build()
            .map_err(RemoteError::network)?;
        let (method, url) = (request.method().clone(), request.url().clone());
        let started = std::time::Instant::now();
        let response = self.http.execute(request).await;
        log_request("API", &method, &url, &response, started);
        let response = response.map_err(RemoteError::network)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        let body = read_capped(response, cap, "the API").await?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        // Any 401 stops the run, whatever its body: a proxy in front of the API answers with a
        // web page, and retrying bad credentials only knocks again with them.
        if status == 401 {
            let message = json
                .as_ref()
                .and_then(|j| j.get("message"))
                .and_then(Value::as_str)
                .map_or_else(
                    || format!("with a body that is not JSON, {} bytes", body.len()),
                    |m| cut(m).into_owned(),
                );
            return Err(RemoteError::Unauthorized { message });
        }
        if status == 429 || (status == 403 && json.is_none()) {
            return Err(RemoteError::Throttled {
                status,
                retry_after,
            });
        }
        let Some(json) = json else {
            return Err(RemoteError::Protocol {
                what: "the API",
                detail: format!(
                    "status {status} with a body that is not JSON ({} bytes)",
                    body.len()
                ),
            });
        };
        let text = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if !(200..300).contains(&status) {
            // Kept short whatever the server sends: the message goes to the log and the state
            // file with each failed row.
            let error_name = cut(&text("error_name")).into_owned();
            let mut message = text("error_message");
            if message.is_empty() {
                message = text("message");
            }
            let mut message = cut(&message).into_owned();
            let mut fields = Vec::new();
            if let Some(errors) = json
                .get("errors")
                .and_then(Value::as_object)
                .filter(|e| !e.is_empty())
            {
                let mut details: Vec<String> = errors
                    .iter()
                    .take(SHOWN_ERRORS)
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        format!("{}: {}", cut(k), cut(&v))
                    })
                    .collect();
                if errors.len() > SHOWN_ERRORS {
                    details.push(format!("and {} more", errors.len() - SHOWN_ERRORS));
                }
                message = format!("{message} ({})", details.join("; "));
                fields = errors.keys().cloned().collect();
            }
            if status == 403 && (error_name.contains("storage") || error_name.contains("quota")) {
                return Err(RemoteError::Quota { message });
            }
            return Err(RemoteError::Api {
                status,
                error_name,
                message,
                fields,
            });
        }
        Ok(json)
    }

    /// Step 1: `GET /attachments/s3_form?contact_id=`.
    pub async fn s3_form(&self, contact_id: &str) -> Result<Form, RemoteError> {
        let request = self
            .http
            .get(self.api_url("/attachments/s3_form"))
            .query(&[("contact_id", contact_id)]);
        let json = self.api(request).await?;
        let form = parse_form(&json).map_err(|detail| RemoteError::Protocol {
            what: "step 1 (s3_form)",
            detail,
        })?;
        // The tutorial's pattern, `<CONTACT_ID>/__timestamp__/${filename}`: a form whose keys
        // would land under another contact, or under none, is not used.
        let expected = format!("{contact_id}/__timestamp__/${{filename}}");
        if form.key_pattern != expected {
            return Err(RemoteError::Protocol {
                what: "step 1 (s3_form)",
                detail: format!(
                    "x-ignore-pattern {:?} is not {expected:?}",
                    crate::manifest::cut(&form.key_pattern)
                ),
            });
        }
        Ok(form)
    }

    /// Step 3: `POST /attachments`; returns the new attachment (its id, and its link, which may
    /// or may not show the key).
    pub async fn attach(&self, attach: &Attach<'_>) -> Result<RemoteAttachment, RemoteError> {
        let body = serde_json::to_vec(attach).expect("a struct of strings and numbers serializes");
        self.post_attachment(body, attach.name, attach.size).await
    }

    /// Attaches a link (`POST /attachments` with `link_type` and `external_url`).
    pub async fn attach_link(
        &self,
        link: &AttachLink<'_>,
    ) -> Result<RemoteAttachment, RemoteError> {
        let body = serde_json::to_vec(link).expect("a struct of strings serializes");
        self.post_attachment(body, link.name, 0).await
    }

    /// `POST /attachments` with `body`: the attachment made, as its answer shows it (`name` and
    /// `size` as sent).
    async fn post_attachment(
        &self,
        body: Vec<u8>,
        name: &str,
        size: u64,
    ) -> Result<RemoteAttachment, RemoteError> {
        let request = self
            .http
            .post(self.api_url("/attachments"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let json = self.api(request).await?;
        let attachment = json.pointer("/data/attachment");
        let id = attachment
            .and_then(|a| a.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| RemoteError::Protocol {
                what: "step 3 (attachments)",
                detail: "no data.attachment.id".into(),
            })?;
        let text = |field: &str| {
            attachment
                .and_then(|a| a.get(field))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(RemoteAttachment {
            id: id.to_string(),
            filename: name.to_string(),
            size,
            url: text("url"),
            storage_provider: text("storage_provider"),
        })
    }

    /// One page of `GET /contacts?email=` (100 a page, the most the API gives): the ids of the
    /// contacts on it, and the last page (`max_page`).
    pub async fn contacts_by_email(
        &self,
        email: &str,
        page: u32,
    ) -> Result<(Vec<String>, u32), RemoteError> {
        let request = self.http.get(self.api_url("/contacts")).query(&[
            ("email", email),
            ("page", &page.to_string()),
            ("per_page", &CONTACTS_PER_PAGE.to_string()),
        ]);
        let json = self.api_capped(request, RECORD_ANSWER_CAP).await?;
        parse_contacts(&json).map_err(|detail| RemoteError::Protocol {
            what: "a contact lookup (GET /contacts?email=)",
            detail,
        })
    }

    /// `POST /notes`: a note on `contact_id` with `text` (and `date`, `YYYY-MM-DD`, or the API's
    /// default, today); returns the new note.
    pub async fn create_note(
        &self,
        contact_id: &str,
        text: &str,
        date: Option<&str>,
    ) -> Result<RemoteNote, RemoteError> {
        let mut body = serde_json::json!({ "contact_id": contact_id, "text": text });
        if let Some(date) = date {
            body["date"] = Value::String(date.to_string());
        }
        let request = self
            .http
            .post(self.api_url("/notes"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let json = self.api(request).await?;
        json.pointer("/data/note")
            .and_then(parse_note)
            .ok_or_else(|| RemoteError::Protocol {
                what: "POST /notes",
                detail: "no data.note.id".into(),
            })
    }

    /// `GET /notes?contact_id=&page=&per_page=`: one page of a contact's notes.
    pub async fn list_notes(
        &self,
        contact_id: &str,
        page: u64,
        per_page: u64,
    ) -> Result<NotesPage, RemoteError> {
        let request = self.http.get(self.api_url("/notes")).query(&[
            ("contact_id", contact_id),
            ("page", &page.to_string()),
            ("per_page", &per_page.to_string()),
        ]);
        let json = self.api_capped(request, RECORD_ANSWER_CAP).await?;
        parse_notes_page(&json).map_err(|detail| RemoteError::Protocol {
            what: "GET /notes",
            detail,
        })
    }

    /// `DELETE /attachments/{id}` (OpenAPI `deleteAttachment`).
    pub async fn delete_attachment(&self, id: &str) -> Result<Deleted, RemoteError> {
        self.delete("attachments", id).await
    }

    /// `DELETE /notes/{id}` (OpenAPI `deleteNote`): the note goes with every attachment it holds.
    pub async fn delete_note(&self, id: &str) -> Result<Deleted, RemoteError> {
        self.delete("notes", id).await
    }

    /// `DELETE /{what}/{id}`: deleted now, or a 404 (nothing of that id is there: deleted
    /// before, by an earlier answer that was lost, or by someone else).
    async fn delete(&self, what: &str, id: &str) -> Result<Deleted, RemoteError> {
        let path = format!(
            "/{what}/{}",
            percent_encoding::utf8_percent_encode(id, SEGMENT)
        );
        match self.api(self.http.delete(self.api_url(&path))).await {
            Ok(_) => Ok(Deleted::Now),
            Err(RemoteError::Api { status: 404, .. }) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// `PATCH /attachments/{id}/pin` (OpenAPI `pinAttachment`): the attachment shows on its
    /// contact's profile (`GET /contacts/{id}/pinned_attachments` lists it).
    pub async fn pin_attachment(&self, id: &str) -> Result<(), RemoteError> {
        let id = percent_encoding::utf8_percent_encode(id, SEGMENT);
        let path = format!("/attachments/{id}/pin");
        self.api(self.http.patch(self.api_url(&path))).await?;
        Ok(())
    }

    /// One page of `GET /contacts/{id}/pinned_attachments?page=&per_page=` (OpenAPI
    /// `listContactPinnedAttachments`): the ids of the attachments pinned to the contact on it,
    /// and the last page.
    pub async fn pinned_attachments(
        &self,
        contact_id: &str,
        page: u64,
        per_page: u64,
    ) -> Result<PinnedPage, RemoteError> {
        let id = percent_encoding::utf8_percent_encode(contact_id, SEGMENT);
        let request = self
            .http
            .get(self.api_url(&format!("/contacts/{id}/pinned_attachments")))
            .query(&[
                ("page", page.to_string()),
                ("per_page", per_page.to_string()),
            ]);
        let json = self.api_capped(request, RECORD_ANSWER_CAP).await?;
        parse_pinned_page(&json).map_err(|detail| RemoteError::Protocol {
            what: "GET /contacts/{id}/pinned_attachments",
            detail,
        })
    }

    /// The attachments a note, deal, call or meeting lists.
    pub async fn attachments_of(
        &self,
        reference_type: ReferenceType,
        reference_id: &str,
    ) -> Result<Vec<RemoteAttachment>, RemoteError> {
        Ok(self.record(reference_type, reference_id).await?.attachments)
    }

    /// `GET /{notes|deals|calls|meetings}/{id}`: a record, its contact and its attachments.
    pub async fn record(
        &self,
        reference_type: ReferenceType,
        reference_id: &str,
    ) -> Result<RemoteRecord, RemoteError> {
        let id = percent_encoding::utf8_percent_encode(reference_id, SEGMENT);
        let path = format!("/{}s/{id}", reference_type.as_str());
        let json = self
            .api_capped(self.http.get(self.api_url(&path)), RECORD_ANSWER_CAP)
            .await?;
        json.pointer(&format!("/data/{}", reference_type.as_str()))
            .ok_or_else(|| "no record".to_string())
            .and_then(parse_record)
            .map_err(|detail| RemoteError::Protocol {
                what: "a record",
                detail,
            })
    }

    /// `GET /{notes|deals|calls|meetings}?contact_id=&page=&per_page=`: one page of a contact's
    /// records of one type, each with its attachments.
    pub async fn records_of_contact(
        &self,
        reference_type: ReferenceType,
        contact_id: &str,
        page: u64,
        per_page: u64,
    ) -> Result<RecordsPage, RemoteError> {
        let kind = reference_type.as_str();
        let request = self.http.get(self.api_url(&format!("/{kind}s"))).query(&[
            ("contact_id", contact_id),
            ("page", &page.to_string()),
            ("per_page", &per_page.to_string()),
        ]);
        let json = self.api_capped(request, RECORD_ANSWER_CAP).await?;
        parse_records_page(&json, reference_type).map_err(|detail| RemoteError::Protocol {
            what: "a list of records",
            detail,
        })
    }
}

/// A note, deal, call or meeting as the API shows it: the fields the tool reads.
#[derive(Clone, Debug)]
pub struct RemoteRecord {
    pub id: String,
    /// Empty when the answer does not say.
    pub contact_id: String,
    /// A note's (a call's, a meeting's) `text`, when the answer has one: what `verify` compares
    /// with the text of a note the tool created.
    pub text: Option<String>,
    pub attachments: Vec<RemoteAttachment>,
}

/// One page of a contact's records of one type.
#[derive(Clone, Debug)]
pub struct RecordsPage {
    pub records: Vec<RemoteRecord>,
    pub max_page: u64,
}

/// A record's `id`, `contact_id`, `text` and `attachments` (an attachment without an id, a name or a
/// size cannot be matched to a row and is left out).
fn parse_record(record: &Value) -> Result<RemoteRecord, String> {
    let id = record
        .get("id")
        .and_then(Value::as_str)
        .ok_or("a record without an id")?
        .to_string();
    let list = record
        .get("attachments")
        .and_then(Value::as_array)
        .ok_or("no attachments list")?;
    Ok(RemoteRecord {
        id,
        contact_id: record
            .get("contact_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        text: record
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string),
        attachments: list.iter().filter_map(parse_attachment).collect(),
    })
}

fn parse_attachment(a: &Value) -> Option<RemoteAttachment> {
    Some(RemoteAttachment {
        id: a.get("id")?.as_str()?.to_string(),
        filename: a.get("filename")?.as_str()?.to_string(),
        size: a.get("size")?.as_u64()?,
        url: a.get("url").and_then(Value::as_str).map(str::to_string),
        storage_provider: a
            .get("storage_provider")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// `data.{notes|deals|calls|meetings}[].{note|deal|call|meeting}` and `data.max_page`.
fn parse_records_page(json: &Value, reference_type: ReferenceType) -> Result<RecordsPage, String> {
    let kind = reference_type.as_str();
    let data = json.get("data").ok_or("no data")?;
    let records = data
        .get(format!("{kind}s"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no data.{kind}s list"))?
        .iter()
        .map(|r| {
            r.get(kind)
                .ok_or_else(|| format!("an entry without {kind}"))
                .and_then(parse_record)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordsPage {
        records,
        max_page: data.get("max_page").and_then(Value::as_u64).unwrap_or(1),
    })
}

/// One page of a contact's pinned attachments.
#[derive(Clone, Debug)]
pub struct PinnedPage {
    pub ids: Vec<String>,
    pub max_page: u64,
}

/// `data.pinned_attachments[].id`, and `max_page`: beside `data` as the OpenAPI file puts it for
/// this endpoint, or in `data` as other lists have it; 1 when neither says.
fn parse_pinned_page(json: &Value) -> Result<PinnedPage, String> {
    let ids = json
        .pointer("/data/pinned_attachments")
        .and_then(Value::as_array)
        .ok_or("no data.pinned_attachments list")?
        .iter()
        .map(|a| {
            a.get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or("a pinned attachment without an id")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_page = json
        .get("max_page")
        .or_else(|| json.pointer("/data/max_page"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    Ok(PinnedPage { ids, max_page })
}

/// The fields of an API error's `errors` its message shows (the rest are counted).
const SHOWN_ERRORS: usize = 10;

/// Contacts asked for a page of a lookup: the API's maximum.
pub const CONTACTS_PER_PAGE: u32 = 100;

/// `data.contacts[].contact.id` and `data.max_page` of a contact list (the OpenAPI shape).
fn parse_contacts(json: &Value) -> Result<(Vec<String>, u32), String> {
    let data = json.get("data").ok_or("no data")?;
    let list = data
        .get("contacts")
        .and_then(Value::as_array)
        .ok_or("no data.contacts list")?;
    let ids = list
        .iter()
        .map(|c| {
            c.pointer("/contact/id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or("an entry of data.contacts has no contact.id")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_page = match data.get("max_page") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("data.max_page is not a page number")?,
    };
    Ok((ids, max_page))
}

fn parse_notes_page(json: &Value) -> Result<NotesPage, String> {
    let data = json.get("data").ok_or("no data")?;
    let notes = data
        .get("notes")
        .and_then(Value::as_array)
        .ok_or("no data.notes list")?
        .iter()
        .map(|n| {
            n.get("note")
                .and_then(parse_note)
                .ok_or("a note without an id")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let number = |k: &str| data.get(k).and_then(Value::as_u64);
    Ok(NotesPage {
        notes,
        total_count: number("total_count").unwrap_or(0),
        page: number("page").unwrap_or(1),
        max_page: number("max_page").unwrap_or(1),
        server_time: json
            .get("timestamp")
            .and_then(Value::as_i64)
            .and_then(unix_seconds),
    })
}

/// An envelope's `timestamp` in Unix seconds, whichever unit it was sent in: up to 11 digits are
/// seconds (until the year 5138), 13 are milliseconds (2001 to 2286); 12 digits, more than 13, or
/// a timestamp not after 1970 could be either or neither, and are not read.
pub fn unix_seconds(timestamp: i64) -> Option<i64> {
    match timestamp {
        1..100_000_000_000 => Some(timestamp),
        1_000_000_000_000..10_000_000_000_000 => Some(timestamp / 1000),
        _ => None,
    }
}

fn parse_form(json: &Value) -> Result<Form, String> {
    let data = json.get("data").ok_or("no data")?;
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or("no data.url")?
        .to_string();
    let fields = data
        .get("fields")
        .and_then(Value::as_object)
        .ok_or("no data.fields")?;
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let key_pattern = fields
        .get("x-ignore-pattern")
        .and_then(Value::as_str)
        .ok_or("no x-ignore-pattern")?
        .to_string();
    if !key_pattern.contains("__timestamp__") || !key_pattern.contains("${filename}") {
        return Err(format!(
            "x-ignore-pattern {key_pattern:?} lacks __timestamp__ or ${{filename}}"
        ));
    }
    let mut ordered: Vec<(String, String)> = Vec::with_capacity(fields.len());
    for name in FIELD_ORDER {
        if let Some(v) = fields.get(name) {
            ordered.push((
                name.to_string(),
                text(v).ok_or_else(|| format!("field {name} is not a string"))?,
            ));
        }
    }
    for (name, v) in fields {
        if FIELD_ORDER.contains(&name.as_str()) || name == "key" || name == "x-ignore-pattern" {
            continue;
        }
        ordered.push((
            name.clone(),
            text(v).ok_or_else(|| format!("field {name} is not a string"))?,
        ));
    }
    // The tool relies on the answer's timestamp for nothing but the keys' timestamp part, which
    // must be digits only (so that a key can be told from the link that shows it,
    // `RemoteAttachment::key`): an answer without one, or with one that is not a positive integer,
    // is as good a form, and our clock's seconds stand in for it in the keys.
    let timestamp = json
        .get("timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0);
    let key_stamp = key_stamp(timestamp);
    let storage_left = data
        .get("storage_left")
        .and_then(Value::as_u64)
        .ok_or("no data.storage_left")?;
    Ok(Form {
        url,
        fields: ordered,
        key_pattern,
        timestamp,
        key_stamp,
        arrived: std::time::Instant::now(),
        storage_left,
    })
}

/// How long a `Retry-After` asks to wait (RFC 9110): seconds, or an HTTP date (a date already
/// past asks for no wait). The caller bounds it, whichever form it came in.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_records_text_is_read_when_it_has_one() {
        let note = json!({"id": "n1", "contact_id": "c1", "text": "Hello\nthere",
            "attachments": [{"id": "a1", "filename": "a.pdf", "size": 3, "url": "https://x/a.pdf"}]});
        let record = parse_record(&note).unwrap();
        assert_eq!(record.text.as_deref(), Some("Hello\nthere"));
        assert_eq!(
            (record.attachments.len(), record.contact_id.as_str()),
            (1, "c1")
        );
        let deal = json!({"id": "d1", "name": "A deal", "attachments": []});
        assert_eq!(parse_record(&deal).unwrap().text, None);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        use std::time::{Duration, SystemTime};
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's own example.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let secs = |v: &str| retry_after(v, now).map(|d| d.as_secs());
        assert_eq!(secs(" 120 "), Some(120));
        assert_eq!(secs("Sun, 06 Nov 1994 08:51:37 GMT"), Some(120));
        assert_eq!(secs("Sunday, 06-Nov-94 08:51:37 GMT"), Some(120));
        assert_eq!(secs("Sun Nov  6 08:51:37 1994"), Some(120));
        assert_eq!(
            secs("Sun, 06 Nov 1994 08:00:00 GMT"),
            Some(0),
            "a date past"
        );
        assert_eq!(secs("soon"), None);
    }

    #[test]
    fn form_fields_keep_the_tutorial_order_and_unknown_fields_go_before_key() {
        let answer = json!({
            "status": 0, "timestamp": 1697212380,
            "data": {"storage_left": 5, "url": "https://b.example/", "fields": {
                "x-amz-security-token": "tok", "key": "", "x-ignore-pattern": "c/__timestamp__/${filename}",
                "x-amz-signature": "sig", "policy": "pol", "acl": "private", "success_action_status": 201,
                "x-amz-credential": "cred", "x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-date": "d"
            }}
        });
        let form = parse_form(&answer).unwrap();
        let names: Vec<&str> = form.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "acl",
                "success_action_status",
                "policy",
                "x-amz-credential",
                "x-amz-algorithm",
                "x-amz-date",
                "x-amz-signature",
                "x-amz-security-token"
            ]
        );
        assert_eq!(form.fields[1].1, "201");
        let key = form.key("a b.pdf");
        let random = key
            .strip_prefix("c/1697212380")
            .and_then(|k| k.strip_suffix("/a b.pdf"))
            .unwrap_or_else(|| panic!("{key}"));
        assert!(
            random.len() == 9 && random.bytes().all(|b| b.is_ascii_digit()),
            "{key}"
        );
    }

    #[test]
    fn a_step_1_answer_without_a_timestamp_is_a_form_whose_keys_take_our_clock() {
        let answer = |timestamp: Option<Value>| {
            let mut answer = json!({
                "status": 0, "message": "OK",
                "data": {"storage_left": 5, "url": "https://b.example/", "fields": {
                    "policy": "pol", "x-amz-date": "20231013T155300Z", "key": "",
                    "x-ignore-pattern": "c/__timestamp__/${filename}"
                }}
            });
            if let Some(t) = timestamp {
                answer["timestamp"] = t;
            }
            answer
        };
        let before = chrono::Utc::now().timestamp();
        for odd in [
            None,
            Some(json!(null)),
            Some(json!(-5)),
            Some(json!("soon")),
        ] {
            let form = parse_form(&answer(odd.clone())).unwrap_or_else(|e| panic!("{odd:?}: {e}"));
            assert_eq!(form.timestamp, None, "{odd:?}");
            let stamp: i64 = form.key("a.pdf")["c/".len()..]
                .split('/')
                .next()
                .and_then(|s| s.get(..10))
                .and_then(|s| s.parse().ok())
                .unwrap();
            assert!(
                (before..=chrono::Utc::now().timestamp()).contains(&stamp),
                "{odd:?}: our clock's seconds, {stamp}"
            );
        }
        // Milliseconds are kept as sent: the keys take them (the key format is another issue's).
        let ms = parse_form(&answer(Some(json!(1_697_212_380_123_i64)))).unwrap();
        assert_eq!(ms.timestamp, Some(1_697_212_380_123));
        assert!(ms.key("a.pdf").starts_with("c/1697212380123"));
    }

    #[test]
    fn an_envelope_timestamp_is_read_in_seconds_from_either_unit() {
        assert_eq!(unix_seconds(1_697_212_380), Some(1_697_212_380));
        assert_eq!(unix_seconds(1_697_212_380_999), Some(1_697_212_380));
        assert_eq!(unix_seconds(99_999_999_999), Some(99_999_999_999));
        for unreadable in [0, -1_697_212_380, 169_721_238_012, 16_972_123_801_234] {
            assert_eq!(unix_seconds(unreadable), None, "{unreadable}");
        }
        let page = |timestamp: Value| {
            let mut answer = json!({"status": 0, "data": {"notes": [], "max_page": 1}});
            if !timestamp.is_null() {
                answer["timestamp"] = timestamp;
            }
            parse_notes_page(&answer).unwrap().server_time
        };
        assert_eq!(page(json!(1_697_212_380)), Some(1_697_212_380));
        assert_eq!(page(json!(1_697_212_380_123_i64)), Some(1_697_212_380));
        assert_eq!(page(Value::Null), None);
    }

    #[test]
    fn a_contact_list_gives_its_ids_and_last_page() {
        let answer = json!({"status": 0, "message": "OK", "timestamp": 1, "data": {
            "contacts": [{"contact": {"id": "a1", "email": "x@y.example"}}, {"contact": {"id": "b2"}}],
            "total_count": 102, "page": 1, "per_page": 100, "max_page": 2}});
        assert_eq!(
            parse_contacts(&answer).unwrap(),
            (vec!["a1".to_string(), "b2".to_string()], 2)
        );
        let none = json!({"data": {"contacts": [], "total_count": 0, "page": 1, "per_page": 100, "max_page": 1}});
        assert_eq!(parse_contacts(&none).unwrap(), (vec![], 1));
        // The flat shape of another API version is not taken for an empty list.
        assert!(parse_contacts(&json!({"data": [{"id": "a1"}]})).is_err());
        assert!(parse_contacts(&json!({"data": {"contacts": [{"id": "a1"}]}})).is_err());
    }

    #[test]
    fn a_notes_page_is_read_from_the_openapi_envelope() {
        let answer = json!({"status": 0, "message": "OK", "timestamp": 1, "data": {
            "notes": [{"note": {"id": "n1", "contact_id": "c", "text": "a\r\nb", "date": "2024-03-15",
                                "created_at": "2024-03-15T10:00:00Z", "author": "Jane D."}}],
            "total_count": 101, "page": 1, "per_page": 100, "max_page": 2
        }});
        let page = parse_notes_page(&answer).unwrap();
        assert_eq!((page.total_count, page.page, page.max_page), (101, 1, 2));
        assert_eq!(
            page.notes,
            [RemoteNote {
                id: "n1".into(),
                contact_id: "c".into(),
                text: "a\r\nb".into(),
                date: Some("2024-03-15".into()),
                created_at: Some("2024-03-15T10:00:00Z".into()),
            }]
        );
        assert!(parse_notes_page(&json!({"data": {"notes": [{"note": {}}]}})).is_err());
        assert!(parse_notes_page(&json!({"data": {}})).is_err());
    }

    #[test]
    fn keys_from_one_form_for_one_name_do_not_repeat() {
        let form = Form {
            url: String::new(),
            fields: Vec::new(),
            key_pattern: "c/__timestamp__/${filename}".into(),
            timestamp: Some(1_697_212_380),
            key_stamp: 1_697_212_380,
            arrived: std::time::Instant::now(),
            storage_left: 0,
        };
        // 100 draws from 10^9: a repeat by chance is about one in two hundred thousand.
        let keys: std::collections::HashSet<String> =
            (0..100).map(|_| form.key("same.pdf")).collect();
        assert_eq!(keys.len(), 100);
    }

    #[test]
    fn a_keys_timestamp_part_fits_a_64_bit_integer_and_opens_with_the_forms_timestamp() {
        let answer = |timestamp: i64| {
            json!({
                "status": 0, "message": "OK", "timestamp": timestamp,
                "data": {"storage_left": 5, "url": "https://b.example/", "fields": {
                    "policy": "pol", "x-amz-date": "20231013T155300Z", "key": "",
                    "x-ignore-pattern": "c/__timestamp__/${filename}"
                }}
            })
        };
        let before = chrono::Utc::now().timestamp().to_string();
        for (timestamp, opens) in [
            (1_697_212_380, "1697212380".to_string()),
            (1_697_212_380_123, "1697212380123".to_string()),
            // Neither seconds nor milliseconds: our clock's seconds.
            (42, before[..8].to_string()),
            (16_972_123_801_234_567, before[..8].to_string()),
        ] {
            let form = parse_form(&answer(timestamp)).unwrap();
            let key = form.key("a.pdf");
            let stamp = key.split('/').nth(1).unwrap();
            assert_eq!(stamp.len(), KEY_STAMP_DIGITS, "{key}");
            assert!(stamp.parse::<i64>().is_ok(), "{key}");
            assert!(stamp.starts_with(&opens), "{timestamp}: {key}");
        }
    }

    #[test]
    fn a_link_attachment_shows_its_link_where_it_shows_a_type_or_a_url() {
        let url = "https://www.dropbox.com/s/x/Q3%20report.pdf?dl=0";
        let at = |provider: Option<&str>, shown: Option<&str>| RemoteAttachment {
            id: "a".into(),
            filename: "Q3 report.pdf".into(),
            size: 0,
            url: shown.map(str::to_string),
            storage_provider: provider.map(str::to_string),
        };
        let dropbox = LinkType::Dropbox;
        assert_eq!(
            at(Some("dropbox"), Some(url)).shows_link(url, dropbox),
            Some(true)
        );
        // As URLs: the scheme's and host's letter case do not count.
        let upper = "HTTPS://WWW.DROPBOX.COM/s/x/Q3%20report.pdf?dl=0";
        assert_eq!(at(None, Some(upper)).shows_link(url, dropbox), Some(true));
        let other = "https://www.dropbox.com/s/x/Q3%20report.pdf?dl=1";
        assert_eq!(
            at(Some("dropbox"), Some(other)).shows_link(url, dropbox),
            Some(false)
        );
        assert_eq!(
            at(Some("amazon"), Some(url)).shows_link(url, dropbox),
            Some(false)
        );
        assert_eq!(
            at(Some("evernote"), None).shows_link(url, dropbox),
            Some(false)
        );
        assert_eq!(at(Some("dropbox"), None).shows_link(url, dropbox), None);
        assert_eq!(at(None, None).shows_link(url, dropbox), None);
        assert!(at(Some("google_drive"), None).is_link());
        assert!(!at(Some("amazon"), None).is_link() && !at(None, None).is_link());
    }

    #[test]
    fn an_attachment_url_shows_its_key() {
        let at = |url: &str| RemoteAttachment {
            id: "a".into(),
            filename: "a b.pdf".into(),
            size: 1,
            url: Some(url.into()),
            storage_provider: None,
        };
        let contact = "5d2f4a0e1c9b8a7f6e5d4c3b";
        // Virtual-hosted and path-style presigned URLs, encoded names.
        assert_eq!(
            at("https://b.s3.amazonaws.com/5d2f4a0e1c9b8a7f6e5d4c3b/1697212380123/a%20b.pdf?X-Amz-Signature=x")
                .key(contact)
                .as_deref(),
            Some("5d2f4a0e1c9b8a7f6e5d4c3b/1697212380123/a b.pdf")
        );
        assert_eq!(
            at("http://127.0.0.1:1/bucket/5d2f4a0e1c9b8a7f6e5d4c3b/17/M%C3%BCller%2B.pdf")
                .key(contact)
                .as_deref(),
            Some("5d2f4a0e1c9b8a7f6e5d4c3b/17/Müller+.pdf")
        );
        for opaque in [
            "https://app.example/files/64f0c1",
            // The OpenAPI file's example, and the emulator's `--opaque-links`: only the name.
            "https://foo.bar/mario.jpg",
            "http://127.0.0.1:8787/_emulator/files/65f0c1a2000000000000002a/a%20b.pdf",
            // A name that spells one of the contact's keys is one segment, not a key.
            "http://127.0.0.1:8787/_emulator/files/65f0c1a2000000000000002a/5d2f4a0e1c9b8a7f6e5d4c3b%2F17%2Fa.pdf",
            "http://127.0.0.1:8787/_emulator/files/1697212380123/5d2f4a0e1c9b8a7f6e5d4c3b%2F17%2Fa.pdf",
            "https://b.s3.amazonaws.com/othercontact/17/a.pdf",
            "https://b.s3.amazonaws.com/5d2f4a0e1c9b8a7f6e5d4c3b/x17/a.pdf",
            "not a url",
        ] {
            assert_eq!(at(opaque).key(contact), None, "{opaque}");
        }
        let no_url = RemoteAttachment {
            url: None,
            ..at("x")
        };
        assert_eq!(no_url.key(contact), None);
    }
}
