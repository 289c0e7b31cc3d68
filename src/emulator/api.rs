//! The emulator's API v3: steps 1 and 3 of an upload, the records files attach to (one, and a
//! contact's listing), contacts by email, notes created and listed, Basic authentication, and
//! the envelopes and error envelopes of the OpenAPI description, with nothing more in them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::App;
use super::clock::iso;
use super::state::{Attachment, Link, Record, State};
use crate::onepagecrm::{
    MAX_FILE_SIZE, MAX_NOTE_TEXT_CHARS, ReferenceType, normalize_line_ends, parse_note_date,
};

/// `{status: 0, message: "OK", timestamp, data}`, stamped by the emulator's clock.
fn ok(app: &App, status: StatusCode, data: Value) -> Response {
    ok_at(status, data, stamp(app, app.clock.now()))
}

/// The envelope's `timestamp` for `moment`: Unix seconds as documented, milliseconds with
/// `--timestamp-ms`, none with `--no-timestamp`.
fn stamp(app: &App, moment: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    match (app.config.no_timestamp, app.config.timestamp_ms) {
        (true, _) => None,
        (false, true) => Some(moment.timestamp_millis()),
        (false, false) => Some(moment.timestamp()),
    }
}

/// As `ok`, with the envelope's `timestamp` given (or none).
fn ok_at(status: StatusCode, data: Value, timestamp: Option<i64>) -> Response {
    let mut body = Map::new();
    body.insert("status".into(), 0.into());
    body.insert("message".into(), "OK".into());
    if let Some(timestamp) = timestamp {
        body.insert("timestamp".into(), timestamp.into());
    }
    body.insert("data".into(), data);
    (status, axum::Json(Value::Object(body))).into_response()
}

/// `{status, message, error_name, error_message, errors}`.
pub fn error(
    status: StatusCode,
    message: &str,
    error_name: &str,
    error_message: &str,
    errors: Value,
) -> Response {
    let body = json!({
        "status": status.as_u16(),
        "message": message,
        "error_name": error_name,
        "error_message": error_message,
        "errors": errors,
    });
    (status, axum::Json(body)).into_response()
}

fn invalid(field: &str, reason: &str) -> Response {
    let mut errors = Map::new();
    errors.insert(field.to_string(), Value::String(reason.to_string()));
    error(
        StatusCode::BAD_REQUEST,
        "Invalid request data",
        "invalid_request_data",
        &format!("{field} {reason}"),
        Value::Object(errors),
    )
}

fn not_found_envelope(what: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Resource not found",
        "resource_not_found",
        &format!("{what} not found"),
        json!({}),
    )
}

pub fn internal_error() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "internal_server_error",
        "Something went wrong on our side. Retry later.",
        json!({}),
    )
}

pub async fn not_found() -> Response {
    not_found_envelope("Endpoint")
}

/// The Basic-auth user of a request, if it sent one.
pub fn basic_user(req: &Request) -> Option<String> {
    basic_credentials(req).map(|(user, _)| user)
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (user, key) = decoded.split_once(':')?;
    Some((user.to_string(), key.to_string()))
}

/// HTTP Basic auth: user = user_id, password = api_key; a 401 envelope otherwise.
pub async fn authenticate(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    match basic_credentials(&req) {
        None => error(
            StatusCode::UNAUTHORIZED,
            "Authorization data not found",
            "authorization_data_not_found",
            "Cannot find suitable authorization data or data provided is not complete.",
            json!({}),
        ),
        Some((user, key))
            if user == app.config.user_id && constant_time_eq(&key, &app.config.api_key) =>
        {
            next.run(req).await
        }
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "Invalid authorization data",
            "invalid_auth_data",
            "The user_id and api_key pair is not valid.",
            json!({}),
        ),
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Step 1: a presigned S3 POST form for one contact.
pub async fn s3_form(
    AxState(app): AxState<Arc<App>>,
    expired: Option<axum::Extension<super::ExpiredForm>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(contact_id) = q.get("contact_id").filter(|c| !c.is_empty()) else {
        return invalid("contact_id", "is missing");
    };
    let (quota, storage_left) = {
        let state = app.state();
        if !state.contacts.contains_key(contact_id) {
            return not_found_envelope("Contact");
        }
        (state.quota, state.storage_left)
    };
    let now = app.clock.now();
    let ttl = chrono::Duration::from_std(app.config.form_ttl).unwrap_or(chrono::Duration::hours(1));
    let expiration = match expired {
        Some(_) => now - chrono::Duration::seconds(1),
        None => now + ttl,
    };
    let form = app
        .signer
        .form(now, expiration, &format!("{contact_id}/"), MAX_FILE_SIZE);
    let data = json!({
        "quota": quota,
        "storage_left": storage_left,
        "display_quota": display_bytes(quota),
        "url": app.s3_url(),
        "fields": {
            "acl": "private",
            "success_action_status": 201,
            "policy": form.policy,
            "x-amz-credential": form.credential,
            "x-amz-algorithm": super::policy::ALGORITHM,
            "x-amz-date": form.date,
            "x-amz-signature": form.signature,
            "key": "",
            "x-ignore-pattern": format!("{contact_id}/__timestamp__/${{filename}}"),
        }
    });
    let stamped = app
        .config
        .form_timestamp
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .unwrap_or(now);
    let timestamp = stamp(&app, stamped);
    if app.config.single_use_forms {
        // Without a timestamp a client makes its keys from its own clock: those of a client
        // whose clock agrees with the emulator's are told by the emulator's seconds.
        let told = timestamp.unwrap_or(stamped.timestamp());
        app.state().forms.handed_out(contact_id, told);
    }
    ok_at(StatusCode::OK, data, timestamp)
}

/// `200 GB`, `1024MB`: the way OnePageCRM shows a quota.
fn display_bytes(n: u64) -> String {
    const GB: u64 = 1 << 30;
    if n >= GB && n.is_multiple_of(GB) {
        format!("{} GB", n / GB)
    } else {
        format!("{}MB", n >> 20)
    }
}

/// The error envelope a check of step 3 answers with (boxed: a `Response` is large).
type Refused = Box<Response>;

/// Step 3's request body, as the API reads it.
struct AttachRequest {
    kind: ReferenceType,
    key: String,
    reference_id: String,
    /// The size the client says it uploaded.
    size: u64,
    /// `contact_id`, when given: it must be the record's contact.
    contact_id: Option<String>,
    /// `name`, when given; else the attachment is named after the key's last part.
    name: Option<String>,
}

/// Step 3: attach an uploaded object to a note, deal, call or meeting.
///
/// The API's checks come in the order it answers them, each with its own error envelope: the
/// body (`attach_request`), the record and the key's owner (`record_owner`), the object and
/// its size (`uploaded_object`), then, under the state's lock, the form and the storage left,
/// and the one change (`attach`).
pub async fn create_attachment(AxState(app): AxState<Arc<App>>, body: Bytes) -> Response {
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body)
        && ["link_type", "external_url"]
            .iter()
            .any(|f| fields.get(*f).is_some_and(|v| !v.is_null()))
    {
        return attach_link(&app, &fields);
    }
    let request = match attach_request(&body) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let (contact_id, built_in_object) = match record_owner(&app, &request) {
        Ok(owner) => owner,
        Err(refused) => return *refused,
    };
    let md5 = match uploaded_object(&app, &request, built_in_object).await {
        Ok(md5) => md5,
        Err(refused) => return *refused,
    };
    attach(&app, request, contact_id, md5)
}

/// The body of a step-3 request, or the envelope of the first thing wrong with it: not a JSON
/// object, or no valid `reference_type`, `key`, `reference_id` or `size`, in that order.
fn attach_request(body: &[u8]) -> Result<AttachRequest, Refused> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "Invalid request data",
            "invalid_json",
            "The request body is not a JSON object.",
            json!({}),
        )
        .into());
    };
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    };
    let Some(kind) = text("reference_type")
        .as_deref()
        .and_then(ReferenceType::parse)
    else {
        return Err(invalid("reference_type", "must be one of deal, note, call, meeting").into());
    };
    let Some(key) = text("key") else {
        return Err(invalid("key", "is missing").into());
    };
    let Some(reference_id) = text("reference_id") else {
        return Err(invalid("reference_id", "is missing").into());
    };
    let Some(size) = body.get("size").and_then(Value::as_u64) else {
        return Err(invalid("size", "must be the size of the uploaded file in bytes").into());
    };
    Ok(AttachRequest {
        kind,
        key,
        reference_id,
        size,
        contact_id: text("contact_id"),
        name: text("name"),
    })
}

/// The contact of the record the request names, and the built-in store's size and MD5 of its
/// key (read under the same lock); refused when the record does not exist, when the request
/// gives another contact, or when the key is not under the contact's folder.
fn record_owner(
    app: &App,
    request: &AttachRequest,
) -> Result<(String, Option<(u64, String)>), Refused> {
    let AttachRequest {
        kind,
        key,
        reference_id,
        ..
    } = request;
    let (contact_id, built_in_object) = {
        let state = app.state();
        let Some(record) = state.records.get(&(*kind, reference_id.clone())) else {
            return Err(
                not_found_envelope(&format!("{} {reference_id}", capitalized(*kind))).into(),
            );
        };
        let object = state.objects.get(key).map(|o| (o.size, o.md5.clone()));
        (record.contact_id.clone(), object)
    };
    if let Some(given) = &request.contact_id
        && *given != contact_id
    {
        return Err(invalid(
            "contact_id",
            &format!("does not match the contact of {kind} {reference_id}"),
        )
        .into());
    }
    if !key.starts_with(&format!("{contact_id}/")) {
        return Err(invalid(
            "key",
            &format!("must start with the contact id {contact_id}/"),
        )
        .into());
    }
    Ok((contact_id, built_in_object))
}

/// The MD5 of the object the request's key names, once it is known to hold the request's
/// `size`; refused when no object has the key or its size is another.
async fn uploaded_object(
    app: &App,
    request: &AttachRequest,
    built_in_object: Option<(u64, String)>,
) -> Result<String, Refused> {
    let (key, size) = (&request.key, request.size);
    // The object's size and MD5: from the built-in store, or, in external-S3 mode, from a
    // `HEAD` to that server (its ETag is the MD5 of a single-part upload).
    let stored = match &app.config.external_s3 {
        Some(external) => external
            .head_object(key)
            .await
            .map(|head| head.map(|h| (h.size, h.etag))),
        None => Ok(built_in_object),
    };
    let (stored_size, md5) = match stored {
        Ok(Some(object)) => object,
        Ok(None) => return Err(invalid("key", "does not name an uploaded file").into()),
        Err(e) => {
            tracing::warn!("emulator: step 3 cannot check {key:?}: {e}");
            return Err(internal_error().into());
        }
    };
    if stored_size != size {
        return Err(invalid(
            "size",
            &format!("is {size}, but the uploaded file has {stored_size} bytes"),
        )
        .into());
    }
    Ok(md5)
}

/// Under the state's lock: refused when single-use forms are on and the key's form already
/// carried another upload, or when the storage left is smaller than the file; else the
/// attachment is made, the storage taken, and the answer is 201 with the attachment.
fn attach(app: &App, request: AttachRequest, contact_id: String, md5: String) -> Response {
    let AttachRequest {
        kind,
        key,
        reference_id,
        size,
        name,
        ..
    } = request;
    let mut guard = app.state();
    let state: &mut State = &mut guard;
    if app.config.single_use_forms
        && let Err(timestamp) = state.forms.check(&contact_id, &key)
    {
        return invalid(
            "key",
            &format!(
                "was made from the form of timestamp {timestamp}, which already carried another upload (one form, one upload)"
            ),
        );
    }
    if size > state.storage_left {
        return error(
            StatusCode::FORBIDDEN,
            "Storage limit reached",
            "storage_limit_reached",
            &format!(
                "The file needs {size} bytes and the account has {} left.",
                state.storage_left
            ),
            json!({}),
        );
    }
    let filename = name.unwrap_or_else(|| key.rsplit('/').next().unwrap_or_default().to_string());
    let id = state.new_id();
    let attachment = Attachment {
        id: id.clone(),
        reference_type: kind,
        reference_id: reference_id.clone(),
        contact_id,
        filename,
        size,
        key,
        md5,
        created_at: iso(app.clock.now()),
        pinned_at: None,
        link: None,
        deleted_at: None,
    };
    let shown = state.attachment_json(
        &attachment,
        app.attachment_url(&attachment),
        app.clock.now(),
    );
    if app.config.single_use_forms {
        state
            .forms
            .attached(&attachment.contact_id, &attachment.key);
    }
    state.storage_left -= size;
    state
        .records
        .get_mut(&(kind, reference_id))
        .expect("looked up above")
        .attachments
        .push(id.clone());
    state.attachments.insert(id, attachment);
    drop(guard);
    ok(app, StatusCode::CREATED, json!({ "attachment": shown }))
}

/// The link types `POST /attachments` takes, each its attachment's `storage_provider`.
pub const LINK_TYPES: [&str; 3] = ["dropbox", "google_drive", "evernote"];

/// `POST /attachments` with `link_type` and `external_url`: a link to a file in cloud storage,
/// attached with no upload, no key and nothing taken from the storage; `name` defaults to the
/// URL's last path segment. Refused (`400`, naming the field) without a known `link_type`, an
/// `http(s)` `external_url`, or with a `key`; `404` for an unknown record.
fn attach_link(app: &App, body: &Map<String, Value>) -> Response {
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    };
    let Some(kind) = text("reference_type")
        .as_deref()
        .and_then(ReferenceType::parse)
    else {
        return invalid("reference_type", "must be one of deal, note, call, meeting");
    };
    let Some(link_type) = text("link_type").filter(|t| LINK_TYPES.contains(&t.as_str())) else {
        return invalid(
            "link_type",
            "must be one of dropbox, google_drive, evernote",
        );
    };
    let Some(url) = text("external_url").filter(|u| {
        let rest = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"));
        rest.is_some_and(|r| {
            !r.is_empty() && !r.starts_with('/') && !u.contains(char::is_whitespace)
        })
    }) else {
        return invalid("external_url", "must be an http or https URL");
    };
    if body.get("key").is_some_and(|k| !k.is_null() && k != "") {
        return invalid("key", "must be absent for a link (link_type)");
    }
    let Some(reference_id) = text("reference_id") else {
        return invalid("reference_id", "is missing");
    };
    let size = match body.get("size") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64() {
            Some(n) => n,
            None => return invalid("size", "must be a whole number of bytes"),
        },
    };
    let filename = text("name").unwrap_or_else(|| link_name(&url));
    let now = app.clock.now();
    let mut state = app.state();
    let Some(record) = state.records.get(&(kind, reference_id.clone())) else {
        return not_found_envelope(&format!("{} {reference_id}", capitalized(kind)));
    };
    let contact_id = record.contact_id.clone();
    if let Some(given) = text("contact_id")
        && given != contact_id
    {
        return invalid(
            "contact_id",
            &format!("does not match the contact of {kind} {reference_id}"),
        );
    }
    let id = state.new_id();
    let attachment = Attachment {
        id: id.clone(),
        reference_type: kind,
        reference_id: reference_id.clone(),
        contact_id,
        filename,
        size,
        key: String::new(),
        md5: String::new(),
        created_at: iso(now),
        pinned_at: None,
        link: Some(Link {
            storage_provider: link_type,
            external_url: url,
        }),
        deleted_at: None,
    };
    let shown = state.attachment_json(&attachment, app.attachment_url(&attachment), now);
    state
        .records
        .get_mut(&(kind, reference_id))
        .expect("looked up above")
        .attachments
        .push(id.clone());
    state.attachments.insert(id, attachment);
    drop(state);
    ok(app, StatusCode::CREATED, json!({ "attachment": shown }))
}

/// A link's default name: its URL's last non-empty path segment (without query or fragment),
/// or its host.
fn link_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    rest.split('/')
        .rev()
        .find(|s| !s.is_empty())
        .unwrap_or(rest)
        .to_string()
}

/// `DELETE /attachments/{id}`: `200` with an empty `data`; the attachment leaves its record and
/// every listing (its bytes still count until `--purge-after`). `404` for an unknown id.
pub async fn delete_attachment(
    AxState(app): AxState<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    let now = app.clock.now();
    if !app.state().delete_attachment(&id, now) {
        return not_found_envelope(&format!("Attachment {id}"));
    }
    ok(&app, StatusCode::OK, json!({}))
}

/// `DELETE /notes/{id}`: `200` with an empty `data`; the note is gone and its attachments are
/// deleted with it (as the OpenAPI file says). `404` for an unknown id.
pub async fn delete_note(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    let now = app.clock.now();
    let mut state = app.state();
    let Some(record) = state.records.get(&(ReferenceType::Note, id.clone())) else {
        return not_found_envelope(&format!("Note {id}"));
    };
    for a in record.attachments.clone() {
        state.delete_attachment(&a, now);
    }
    state.records.remove(&(ReferenceType::Note, id));
    drop(state);
    ok(&app, StatusCode::OK, json!({}))
}

/// `PATCH /attachments/{id}/pin` (`pinned`) and `/unpin`: `200` with the attachment as `data`
/// (the OpenAPI shape); pinning a pinned one keeps its `pinned_at`. `404` for an unknown id.
fn set_pinned(app: &App, id: &str, pinned: bool) -> Response {
    let now = app.clock.now();
    let mut state = app.state();
    let Some(a) = state.attachments.get_mut(id) else {
        return not_found_envelope(&format!("Attachment {id}"));
    };
    match (pinned, &a.pinned_at) {
        (true, None) => a.pinned_at = Some(iso(now)),
        (false, _) => a.pinned_at = None,
        (true, Some(_)) => {}
    }
    let a = a.clone();
    let shown = state.attachment_json(&a, app.attachment_url(&a), now);
    drop(state);
    ok(app, StatusCode::OK, shown)
}

pub async fn pin_attachment(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    set_pinned(&app, &id, true)
}

pub async fn unpin_attachment(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    set_pinned(&app, &id, false)
}

/// `GET /contacts/{id}/pinned_attachments?page=&per_page=`: the contact's pinned attachments,
/// most recently pinned first, as `data.pinned_attachments[]` with `total_count`, `page`,
/// `per_page` and `max_page` beside `data`, the OpenAPI shape. `404` for an unknown contact.
pub async fn list_pinned_attachments(
    AxState(app): AxState<Arc<App>>,
    Path(contact_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let paging = match Paging::from_query(&q) {
        Ok(p) => p,
        Err((field, reason)) => return invalid(field, &reason),
    };
    let now = app.clock.now();
    let state = app.state();
    if !state.contacts.contains_key(&contact_id) {
        return not_found_envelope("Contact");
    }
    let mut pinned: Vec<&Attachment> = state
        .attachments
        .values()
        .filter(|a| a.contact_id == contact_id && a.pinned_at.is_some())
        .filter(|a| listed(&a.created_at, now, app.config.list_lag))
        .collect();
    pinned.sort_by(|a, b| (&b.pinned_at, &b.id).cmp(&(&a.pinned_at, &a.id)));
    let total = pinned.len();
    let shown: Vec<Value> = pinned[paging.window(total)]
        .iter()
        .map(|a| state.attachment_json(a, app.attachment_url(a), now))
        .collect();
    drop(state);
    let mut body = Map::new();
    body.insert("status".into(), 0.into());
    body.insert("message".into(), "OK".into());
    if let Some(t) = stamp(&app, now) {
        body.insert("timestamp".into(), t.into());
    }
    body.insert("data".into(), json!({ "pinned_attachments": shown }));
    body.insert("total_count".into(), json!(total));
    body.insert("page".into(), json!(paging.page));
    body.insert("per_page".into(), json!(paging.per_page));
    body.insert("max_page".into(), json!(paging.max_page(total)));
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

fn capitalized(kind: ReferenceType) -> String {
    let s = kind.as_str();
    s[..1].to_ascii_uppercase() + &s[1..]
}

/// Whether a listing shows, at `now`, what was made at `created_at`: with `--list-lag`, only
/// once it is `lag` old (by `created_at`'s whole seconds), as a server whose lists are read
/// from a replica or an index that lags behind its writes.
fn listed(created_at: &str, now: DateTime<Utc>, lag: std::time::Duration) -> bool {
    if lag.is_zero() {
        return true;
    }
    let Ok(made) = DateTime::parse_from_rfc3339(created_at) else {
        return true;
    };
    let lag = chrono::Duration::from_std(lag).unwrap_or(chrono::Duration::MAX);
    made.with_timezone(&Utc)
        .checked_add_signed(lag)
        .is_some_and(|shown_from| shown_from <= now)
}

/// A record as the API shows it under `data.note`, `data.deal`, `data.call` or `data.meeting`,
/// its attachments as a listing shows them (`--list-lag` hides young ones).
fn record_json(state: &State, record: &Record, app: &App) -> Value {
    let now = app.clock.now();
    let attachments: Vec<Value> = record
        .attachments
        .iter()
        .filter_map(|id| state.attachments.get(id))
        .filter(|a| listed(&a.created_at, now, app.config.list_lag))
        .map(|a| state.attachment_json(a, app.attachment_url(a), now))
        .collect();
    let mut v = json!({
        "id": record.id,
        "contact_id": record.contact_id,
        "attachments": attachments,
        "created_at": record.created_at,
        "modified_at": record.created_at,
    });
    let extra = match record.kind {
        ReferenceType::Deal => json!({"name": record.text, "status": "pending"}),
        ReferenceType::Note => json!({
            "text": record.text,
            "date": record.date.as_deref().unwrap_or(&record.created_at[..10]),
        }),
        ReferenceType::Call | ReferenceType::Meeting => json!({"text": record.text}),
    };
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

fn get_record(app: &App, kind: ReferenceType, id: &str) -> Response {
    let state = app.state();
    match state.records.get(&(kind, id.to_string())) {
        Some(record) => {
            let mut data = Map::new();
            data.insert(kind.as_str().to_string(), record_json(&state, record, app));
            ok(app, StatusCode::OK, Value::Object(data))
        }
        None => not_found_envelope(&format!("{} {id}", capitalized(kind))),
    }
}

pub async fn get_note(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    get_record(&app, ReferenceType::Note, &id)
}

pub async fn get_deal(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    get_record(&app, ReferenceType::Deal, &id)
}

pub async fn get_call(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    get_record(&app, ReferenceType::Call, &id)
}

pub async fn get_meeting(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Response {
    get_record(&app, ReferenceType::Meeting, &id)
}

/// `POST /notes`: a new note on a contact, `{contact_id, text, date}`.
///
/// `text`: at most `MAX_NOTE_TEXT_CHARS` characters as sent, stored with its line ends made
/// `\n`. `date`: `YYYY-MM-DD`, today (UTC, by the emulator's clock) when absent or null.
/// `created_at`: now, by the emulator's clock.
pub async fn create_note(AxState(app): AxState<Arc<App>>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("body", "is not a JSON object");
    };
    let contact_id = match body.get("contact_id") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return invalid("contact_id", "is missing");
        }
        Some(_) => return invalid("contact_id", "must be a string"),
    };
    let text = match body.get("text") {
        Some(Value::String(t)) => t,
        None | Some(Value::Null) => return invalid("text", "is missing"),
        Some(_) => return invalid("text", "must be a string"),
    };
    if text.trim().is_empty() {
        return invalid("text", "can't be blank");
    }
    let chars = text.chars().count();
    if chars > MAX_NOTE_TEXT_CHARS {
        return invalid(
            "text",
            &format!("is too long ({chars} characters; the maximum is {MAX_NOTE_TEXT_CHARS})"),
        );
    }
    let now = app.clock.now();
    let date = match body.get("date") {
        None | Some(Value::Null) => now.format("%Y-%m-%d").to_string(),
        Some(Value::String(d)) if parse_note_date(d).is_some() => d.clone(),
        Some(_) => return invalid("date", "must be a date as YYYY-MM-DD"),
    };
    let mut state = app.state();
    if !state.contacts.contains_key(&contact_id) {
        return not_found_envelope("Contact");
    }
    let id = state.new_id();
    let record = Record {
        id: id.clone(),
        kind: ReferenceType::Note,
        contact_id,
        text: normalize_line_ends(text),
        date: Some(date),
        created_at: iso(now),
        seq: state.next_seq(),
        attachments: Vec::new(),
    };
    let shown = record_json(&state, &record, &app);
    state.records.insert((ReferenceType::Note, id), record);
    drop(state);
    ok(&app, StatusCode::CREATED, json!({ "note": shown }))
}

/// `GET /{notes,deals,calls,meetings}?contact_id=&page=&per_page=`: a contact's records of one
/// type (every one without `contact_id`), oldest first, a page at a time, as
/// `data.<type>s[].<type>` (`data.deals[].deal`), the OpenAPI list shape. With `--list-lag`,
/// young notes are not listed (nor counted).
fn list_records(app: &App, kind: ReferenceType, q: &HashMap<String, String>) -> Response {
    let paging = match Paging::from_query(q) {
        Ok(p) => p,
        Err((field, reason)) => return invalid(field, &reason),
    };
    let contact_id = match q.get("contact_id").map(String::as_str) {
        Some("") => return invalid("contact_id", "is blank"),
        other => other,
    };
    let state = app.state();
    if let Some(c) = contact_id
        && !state.contacts.contains_key(c)
    {
        return not_found_envelope("Contact");
    }
    let now = app.clock.now();
    let mut records = state.records_of(kind, contact_id);
    if kind == ReferenceType::Note {
        records.retain(|r| listed(&r.created_at, now, app.config.list_lag));
    }
    let total = records.len();
    let shown: Vec<Value> = records[paging.window(total)]
        .iter()
        .map(|r| {
            let mut item = Map::new();
            item.insert(kind.as_str().to_string(), record_json(&state, r, app));
            Value::Object(item)
        })
        .collect();
    drop(state);
    let key = format!("{}s", kind.as_str());
    ok(app, StatusCode::OK, paging.envelope(&key, shown, total))
}

pub async fn list_notes(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_records(&app, ReferenceType::Note, &q)
}

pub async fn list_deals(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_records(&app, ReferenceType::Deal, &q)
}

pub async fn list_calls(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_records(&app, ReferenceType::Call, &q)
}

pub async fn list_meetings(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_records(&app, ReferenceType::Meeting, &q)
}

/// `GET /contacts?email=`: contacts, sorted by name, filtered by email (any case), a page at a
/// time. Several contacts may have one email.
pub async fn list_contacts(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let paging = match Paging::from_query(&q) {
        Ok(p) => p,
        Err((field, reason)) => return invalid(field, &reason),
    };
    let email = match q.get("email").map(String::as_str) {
        Some("") => return invalid("email", "is blank"),
        other => other.map(str::to_lowercase),
    };
    let state = app.state();
    let mut matching: Vec<_> = state
        .contacts
        .values()
        .filter(|c| email.as_ref().is_none_or(|e| c.email.to_lowercase() == *e))
        .collect();
    matching.sort_by_cached_key(|c| {
        (
            format!("{} {}", c.first_name, c.last_name).to_lowercase(),
            c.id.clone(),
        )
    });
    let total = matching.len();
    let contacts: Vec<Value> = matching[paging.window(total)]
        .iter()
        .map(|c| {
            json!({"contact": {
                "id": c.id,
                "first_name": c.first_name,
                "last_name": c.last_name,
                "company_name": c.company_name,
                "emails": [{"type": "work", "value": c.email}],
            }})
        })
        .collect();
    drop(state);
    ok(
        &app,
        StatusCode::OK,
        paging.envelope("contacts", contacts, total),
    )
}

/// The records per page when a list request names none, and the most it may ask for (OpenAPI
/// `per_page`).
pub const DEFAULT_PER_PAGE: usize = 10;
pub const MAX_PER_PAGE: usize = 100;

/// A list request's `page` (from 1) and `per_page` (1 to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    pub page: usize,
    pub per_page: usize,
}

impl Paging {
    /// Reads `page` and `per_page` of a query (1 and 10 when absent).
    fn from_query(q: &HashMap<String, String>) -> Result<Self, (&'static str, String)> {
        Self::parse(
            q.get("page").map(String::as_str),
            q.get("per_page").map(String::as_str),
        )
    }

    /// Anything but a whole number in range is refused, naming the field (a 400).
    pub fn parse(
        page: Option<&str>,
        per_page: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let number = |v: &str| {
            Some(v)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
        };
        let page = match page {
            None => 1,
            Some(p) => number(p)
                .filter(|p| *p >= 1)
                .ok_or(("page", "must be a whole number from 1".to_string()))?,
        };
        let per_page = match per_page {
            None => DEFAULT_PER_PAGE,
            Some(p) => number(p)
                .filter(|p| (1..=MAX_PER_PAGE).contains(p))
                .ok_or((
                    "per_page",
                    format!("must be a whole number from 1 to {MAX_PER_PAGE}"),
                ))?,
        };
        Ok(Self { page, per_page })
    }

    /// Which of `total` items this page holds (none past the last page).
    pub fn window(self, total: usize) -> std::ops::Range<usize> {
        let start = (self.page - 1).saturating_mul(self.per_page).min(total);
        start..start.saturating_add(self.per_page).min(total)
    }

    /// The last page's number: at least 1, even with no items.
    pub fn max_page(self, total: usize) -> usize {
        total.div_ceil(self.per_page).max(1)
    }

    /// `{<key>: items, total_count, page, per_page, max_page}`, the OpenAPI list `data`.
    fn envelope(self, key: &str, items: Vec<Value>, total: usize) -> Value {
        let mut data = Map::new();
        data.insert(key.to_string(), Value::Array(items));
        data.insert("total_count".into(), json!(total));
        data.insert("page".into(), json!(self.page));
        data.insert("per_page".into(), json!(self.per_page));
        data.insert("max_page".into(), json!(self.max_page(total)));
        Value::Object(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paging(page: usize, per_page: usize) -> Paging {
        Paging { page, per_page }
    }

    #[test]
    fn paging_defaults_to_page_1_of_10() {
        assert_eq!(Paging::parse(None, None), Ok(paging(1, 10)));
        assert_eq!(Paging::parse(Some("3"), Some("100")), Ok(paging(3, 100)));
        assert_eq!(Paging::parse(Some("1"), Some("1")), Ok(paging(1, 1)));
    }

    #[test]
    fn paging_refuses_anything_but_whole_numbers_in_range() {
        for bad in [
            "0",
            "-1",
            "+1",
            "1.5",
            "",
            " 1",
            "x",
            "99999999999999999999999",
        ] {
            assert_eq!(
                Paging::parse(Some(bad), None).unwrap_err().0,
                "page",
                "{bad}"
            );
        }
        for bad in ["0", "101", "-5", "", "ten", "1e2"] {
            assert_eq!(
                Paging::parse(None, Some(bad)).unwrap_err().0,
                "per_page",
                "{bad}"
            );
        }
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        for total in [0, 1, 9, 10, 11, 100, 101, 250] {
            for per_page in [1, 3, 10, 100] {
                let max = paging(1, per_page).max_page(total);
                let seen: Vec<usize> = (1..=max + 1)
                    .flat_map(|page| paging(page, per_page).window(total))
                    .collect();
                assert_eq!(
                    seen,
                    (0..total).collect::<Vec<_>>(),
                    "{total} by {per_page}"
                );
                assert!(
                    paging(max + 1, per_page).window(total).is_empty(),
                    "past the last page"
                );
            }
        }
    }

    #[test]
    fn a_listing_lags_by_whole_seconds_of_created_at_and_no_lag_hides_nothing() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let lag = std::time::Duration::from_secs(30);
        let made = "2026-01-31T09:30:00Z";
        assert!(!listed(made, at("2026-01-31T09:30:00Z"), lag));
        assert!(!listed(made, at("2026-01-31T09:30:29.999Z"), lag));
        assert!(listed(made, at("2026-01-31T09:30:30Z"), lag));
        assert!(listed(made, at("2027-01-01T00:00:00Z"), lag));
        let zero = std::time::Duration::ZERO;
        assert!(
            listed(made, at("2020-01-01T00:00:00Z"), zero),
            "even from the future"
        );
        assert!(!listed(
            made,
            at("2026-01-31T09:30:30Z"),
            std::time::Duration::MAX
        ));
    }

    #[test]
    fn a_link_is_named_after_its_last_path_segment() {
        assert_eq!(
            link_name("https://www.dropbox.com/s/abc/Q3%20report.pdf?dl=0"),
            "Q3%20report.pdf"
        );
        assert_eq!(link_name("https://drive.google.com/file/d/xyz/"), "xyz");
        assert_eq!(link_name("https://example.com#top"), "example.com");
    }

    #[test]
    fn max_page_is_the_last_page_and_at_least_1() {
        assert_eq!(paging(1, 10).max_page(0), 1);
        assert_eq!(paging(1, 10).max_page(1), 1);
        assert_eq!(paging(1, 10).max_page(10), 1);
        assert_eq!(paging(1, 10).max_page(11), 2);
        assert_eq!(paging(1, 100).max_page(250), 3);
        assert_eq!(paging(3, 100).window(250), 200..250);
        assert_eq!(paging(usize::MAX, 100).window(250), 250..250);
    }
}
