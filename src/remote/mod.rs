//! The client side of OnePageCRM and its S3 bucket: one reqwest client, the three steps, and
//! what each kind of failure means (retry, renew the form, give up on the row, stop the run).
//!
//! Nothing here retries or waits: the pipeline owns the rate limit, the throttle gate and the
//! retry policy; this module only says what happened, in words a person can act on.

pub mod api;
pub mod s3;

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::failure::FailureKind;
use crate::onepagecrm::is_loopback;

/// OnePageCRM's API, unless `ONEPAGECRM_API_URL` says otherwise.
pub const DEFAULT_API_URL: &str = "https://app.onepagecrm.com/api/v3";

/// Who the client is, and where it talks to. The key is never shown by `Debug`.
#[derive(Clone)]
pub struct Credentials {
    pub user_id: String,
    api_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("api_key", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    pub fn new(user_id: String, api_key: String) -> Self {
        Self { user_id, api_key }
    }

    /// From `ONEPAGECRM_USER_ID` and `ONEPAGECRM_API_KEY`, or the key from `key_file`.
    pub fn from_env(key_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let user_id = std::env::var("ONEPAGECRM_USER_ID")
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let Some(user_id) = user_id else {
            anyhow::bail!(
                "no credentials: set ONEPAGECRM_USER_ID and ONEPAGECRM_API_KEY (or --api-key-file)"
            );
        };
        let api_key = match key_file {
            Some(path) => read_key_file(path)?,
            None => {
                let key = std::env::var("ONEPAGECRM_API_KEY").unwrap_or_default();
                let key = key.trim();
                anyhow::ensure!(
                    !key.contains(['\n', '\r']),
                    "ONEPAGECRM_API_KEY holds more than one line; set it to the API key alone"
                );
                key.to_string()
            }
        };
        anyhow::ensure!(
            !api_key.is_empty(),
            "no API key: set ONEPAGECRM_API_KEY or pass --api-key-file (the key is never taken on the command line)"
        );
        Ok(Self { user_id, api_key })
    }

    pub(crate) fn api_key(&self) -> &str {
        &self.api_key
    }
}

/// The API base URL from `ONEPAGECRM_API_URL`, checked: `https`, or `http` to loopback only.
pub fn api_url_from_env() -> anyhow::Result<reqwest::Url> {
    let raw = std::env::var("ONEPAGECRM_API_URL")
        .ok()
        .filter(|v| !v.trim().is_empty());
    check_url(
        raw.as_deref().unwrap_or(DEFAULT_API_URL),
        "ONEPAGECRM_API_URL",
    )
}

/// The longest API key file read: a key is a few dozen characters, so anything longer is not one.
const MAX_KEY_FILE: u64 = 4096;

/// The API key from `path`: exactly one line (its line end trimmed). The file's content is never
/// shown in an error, since it is, or holds, a secret.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let cannot = || format!("cannot read the API key file {}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .with_context(cannot)?
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(cannot)?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_KEY_FILE,
        "the API key file {} is over {MAX_KEY_FILE} bytes; it must hold the API key alone, on one line",
        path.display()
    );
    let Ok(text) = String::from_utf8(bytes) else {
        anyhow::bail!(
            "the API key file {} is not UTF-8 text; it must hold the API key alone, on one line",
            path.display()
        );
    };
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if line.contains(['\n', '\r']) {
        let lines = line.replace("\r\n", "\n").split(['\n', '\r']).count();
        anyhow::bail!(
            "the API key file {} holds {lines} lines; it must hold the API key alone, on one line (nothing of it was sent)",
            path.display()
        );
    }
    Ok(line.trim().to_string())
}

/// `raw` as it may be shown: any user info (`user:password@`) cut out, even when `raw` is not
/// a URL at all.
fn without_user_info(raw: &str) -> String {
    let raw = raw.trim();
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => raw.to_string(),
    }
}

/// Parses a URL the tool may send to: `https`, or plain `http` to a loopback address only; no
/// user info (credentials come from the environment only) and no query or fragment (paths are
/// appended to it). Errors never show user info.
pub fn check_url(raw: &str, what: &str) -> anyhow::Result<reqwest::Url> {
    let shown = without_user_info(raw);
    let Ok(url) = reqwest::Url::parse(raw.trim()) else {
        anyhow::bail!("{what} {shown:?} is not a URL; give one such as {DEFAULT_API_URL}");
    };
    if !url.username().is_empty() || url.password().is_some() {
        anyhow::bail!(
            "{what} {shown:?} holds a user name or password before the host; remove it (the credentials come only from ONEPAGECRM_USER_ID and ONEPAGECRM_API_KEY or --api-key-file)"
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!(
            "{what} {shown:?} has a query (`?`) or a fragment (`#`); give the base URL alone, such as {DEFAULT_API_URL}"
        );
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => anyhow::bail!(
            "{what} {shown:?} uses plain http to a host that is not loopback; use https (plain http is allowed only for a local emulator)"
        ),
        // Not the scheme itself: in `user:password@host` it would be the user name.
        _ => anyhow::bail!("{what} {shown:?} does not start with https://; use https"),
    }
}

/// What went wrong with one request, and so what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("throttled by the API (it answered {status} with a plain-text body)")]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error(
        "the API refused the credentials (401 {message}); check ONEPAGECRM_USER_ID and ONEPAGECRM_API_KEY"
    )]
    Unauthorized { message: String },
    #[error("the account's storage is full: {message}")]
    Quota { message: String },
    #[error("the API answered {status} {error_name}: {message}")]
    Api {
        status: u16,
        error_name: String,
        message: String,
        /// The request's fields the answer's `errors` names (`key`, `contact_id`, ...).
        fields: Vec<String>,
    },
    #[error("S3 answered {status} {code}: {message}")]
    S3 {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Network(NetworkError),
    #[error("the upload was damaged on the way: S3's ETag is {etag} but the file's MD5 is {md5}")]
    EtagMismatch { etag: String, md5: String },
    #[error(
        "S3 answered that it stored the upload under the key {stored:?}, not {sent:?} as sent; the row is not attached (the attachment would name a key that holds nothing): check the S3 endpoint or the proxy in front of it"
    )]
    S3KeyMismatch { sent: String, stored: String },
    #[error("the file changed during the upload ({0}); check it and run again")]
    FileChanged(String),
    #[error("cannot read the file: {0}")]
    FileUnreadable(String),
    #[error("unexpected answer from {what}: {detail}")]
    Protocol { what: &'static str, detail: String },
    /// Step 3's answer was lost and the record did not tell yet whether it took effect (its
    /// listing may lag behind the write): a rerun reads it again.
    #[error("{0}")]
    Unsettled(String),
    /// The row's record does not exist, or belongs to another contact (`kind` says which).
    #[error("{message}")]
    Record { kind: FailureKind, message: String },
    /// Not sent: the run stopped (it stalled) while this call waited for its turn.
    #[error("not sent, the run stopped: {0}; rerun later")]
    Stopped(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct NetworkError {
    pub detail: String,
    pub timeout: bool,
    /// False only when the request certainly never reached the server (the connection failed).
    pub maybe_delivered: bool,
}

impl RemoteError {
    /// The `error_kind` recorded in the state file.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Throttled { .. } => FailureKind::Throttled,
            Self::Unauthorized { .. } => FailureKind::Credentials,
            Self::Quota { .. } => FailureKind::Quota,
            Self::Api { status, .. } if *status >= 500 => FailureKind::ServerError,
            Self::Api { .. } => FailureKind::ApiRejected,
            Self::S3 { code, .. } if self.is_form_expired() || code == "SlowDown" => {
                FailureKind::S3Busy
            }
            Self::S3 { status, .. } if *status >= 500 => FailureKind::S3Busy,
            Self::S3 { .. } => FailureKind::S3Rejected,
            Self::Network(n) if n.timeout => FailureKind::Timeout,
            Self::Network(_) => FailureKind::Network,
            Self::EtagMismatch { .. } => FailureKind::EtagMismatch,
            Self::S3KeyMismatch { .. } => FailureKind::S3KeyMismatch,
            Self::FileChanged(_) => FailureKind::FileChanged,
            Self::FileUnreadable(_) => FailureKind::FileUnreadable,
            Self::Protocol { .. } => FailureKind::Protocol,
            Self::Unsettled(_) => FailureKind::AttachUnsettled,
            Self::Record { kind, .. } => *kind,
            Self::Stopped(_) => FailureKind::Stalled,
        }
    }

    /// Worth another attempt in this run (after a pause).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Throttled { .. }
            | Self::Network(_)
            | Self::EtagMismatch { .. }
            | Self::Protocol { .. } => true,
            Self::Api { status, .. } => *status >= 500,
            Self::S3 { status, code, .. } => {
                *status >= 500
                    || matches!(code.as_str(), "SlowDown" | "RequestTimeout")
                    || self.is_form_expired()
            }
            // A server that files uploads under keys of its own does so again on a retry.
            Self::Unauthorized { .. }
            | Self::S3KeyMismatch { .. }
            | Self::Quota { .. }
            | Self::FileChanged(_)
            | Self::FileUnreadable(_)
            | Self::Unsettled(_)
            | Self::Record { .. }
            | Self::Stopped(_) => false,
        }
    }

    /// A rerun may succeed where this run could not (everything but a refusal of the input).
    pub fn is_retryable_later(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                Self::Quota { .. }
                    | Self::FileChanged(_)
                    | Self::Unauthorized { .. }
                    | Self::Unsettled(_)
                    | Self::Stopped(_)
            )
    }

    /// S3 refused the form because its policy expired: get a new one.
    pub fn is_form_expired(&self) -> bool {
        matches!(self, Self::S3 { code, message, .. } if code == "AccessDenied" && message.to_ascii_lowercase().contains("expired"))
    }

    fn network(e: reqwest::Error) -> Self {
        // The chain's sources say what happened (the top line only names the URL).
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        Self::Network(NetworkError {
            detail,
            timeout: e.is_timeout(),
            maybe_delivered: !e.is_connect(),
        })
    }
}

/// The HTTP client every request goes through.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    credentials: Credentials,
}

/// How long an API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    pub fn new(base: reqwest::Url, credentials: Credentials) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("opcrm-import/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self {
            http,
            base,
            credentials,
        })
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }
}

/// Logs one request at debug level, when its answer's head arrives or it fails: which service,
/// the method, the URL's path (never its query, headers or form fields: the key, policy and
/// signature travel there), the status, and the milliseconds it took. The only place requests
/// are logged, so that rule holds for all of them.
fn log_request(
    service: &str,
    method: &reqwest::Method,
    url: &reqwest::Url,
    answer: &Result<reqwest::Response, reqwest::Error>,
    started: Instant,
) {
    let ms = started.elapsed().as_millis();
    let path = url.path();
    match answer {
        Ok(response) => tracing::debug!(
            "{service} {method} {path} -> {} in {ms} ms",
            response.status().as_u16()
        ),
        // Not the error's text: it shows the whole URL.
        Err(e) => tracing::debug!(
            "{service} {method} {path} -> no answer ({}) in {ms} ms",
            match () {
                _ if e.is_timeout() => "timed out",
                _ if e.is_connect() => "cannot connect",
                _ => "network error",
            }
        ),
    }
}

/// The largest answer body read from step 1 or step 3 (or any API error). Real ones are a few
/// KiB; a server that sends more is broken or hostile, and the call fails instead of the tool
/// growing without end.
pub const API_ANSWER_CAP: usize = 4 << 20;
/// The largest answer body read from a record (`GET /notes/{id}`, ...): it lists every
/// attachment of the record (a few hundred bytes each), so it may be far larger than one object.
pub const RECORD_ANSWER_CAP: usize = 32 << 20;
/// The largest answer body read from S3 (a `PostResponse` or an XML `Error`, under 2 KiB).
pub const S3_ANSWER_CAP: usize = 1 << 20;

/// Reads `response`'s body chunk by chunk, never holding more than `cap` bytes: a body that is
/// (or says it is) larger fails the call as a protocol error naming the cap, and the rest is
/// never read (the connection is dropped with the response).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
    what: &'static str,
) -> Result<Vec<u8>, RemoteError> {
    let status = response.status().as_u16();
    let too_large = || RemoteError::Protocol {
        what,
        detail: format!(
            "status {status} with a body over the {} MiB cap on its answers (no real answer is that large); the rest was not read",
            cap >> 20
        ),
    };
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(response.content_length().map_or(8 << 10, |n| n as usize));
    while let Some(chunk) = response.chunk().await.map_err(RemoteError::network)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long an S3 upload of `size` bytes may take: a minute, plus time at a slow 100 KiB/s.
pub fn upload_timeout(size: u64) -> Duration {
    Duration::from_secs(60 + size / (100 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("https://app.onepagecrm.com/api/v3", "x").is_ok());
        assert!(check_url("http://127.0.0.1:8787/api/v3", "x").is_ok());
        assert!(check_url("http://[::1]:8787/api/v3", "x").is_ok());
        assert!(check_url("http://localhost:8787/api/v3", "x").is_ok());
        let err = check_url("http://10.0.0.5/api/v3", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not loopback"), "{err}");
        assert!(check_url("ftp://127.0.0.1/", "x").is_err());
    }

    #[test]
    fn user_info_query_and_fragment_are_refused_without_showing_the_password() {
        for raw in [
            "http://admin:hunter2@127.0.0.1:8787/api/v3",
            "https://admin:hunter2@app.onepagecrm.com/api/v3",
            "http://admin:hunter2@10.0.0.5/api/v3",
            "http://admin@127.0.0.1/api/v3",
            "http://:hunter2@127.0.0.1/api/v3",
            "http://admin:hunter2@[::1/api/v3",
            "admin:hunter2@127.0.0.1/api/v3",
        ] {
            let err = format!("{:#}", check_url(raw, "ONEPAGECRM_API_URL").unwrap_err());
            assert!(
                !err.contains("hunter2") && !err.contains("admin"),
                "{raw}: {err}"
            );
        }
        let err = check_url("http://admin:hunter2@127.0.0.1:8787/api/v3", "U")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"http://127.0.0.1:8787/api/v3\""), "{err}");
        assert!(err.contains("user name or password"), "{err}");
        for raw in [
            "http://127.0.0.1:8787/api/v3?x=1",
            "http://127.0.0.1:8787/api/v3?",
            "https://app.onepagecrm.com/api/v3#top",
        ] {
            let err = check_url(raw, "U").unwrap_err().to_string();
            assert!(err.contains("query"), "{raw}: {err}");
        }
    }

    #[test]
    fn the_key_file_holds_exactly_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        for (name, text) in [
            ("lf", &b"the-key\n"[..]),
            ("crlf", b"the-key\r\n"),
            ("bare", b"the-key"),
            ("spaces", b"  the-key \n"),
        ] {
            assert_eq!(
                read_key_file(&file(name, text)).unwrap(),
                "the-key",
                "{name}"
            );
        }
        for (name, text) in [
            ("two", &b"the-key\nsecond-secret\n"[..]),
            ("blank", b"the-key\n\n"),
            ("cr", b"the-key\rsecond-secret"),
        ] {
            let err = read_key_file(&file(name, text)).unwrap_err().to_string();
            assert!(
                err.contains("holds 2 lines") && err.contains("one line"),
                "{name}: {err}"
            );
            assert!(
                !err.contains("the-key") && !err.contains("second-secret"),
                "{err}"
            );
        }
        let big = file("big", &vec![b'k'; 10_000]);
        let err = read_key_file(&big).unwrap_err().to_string();
        assert!(
            err.contains("over 4096 bytes") && !err.contains("kkk"),
            "{err}"
        );
    }

    fn answer(body: Vec<u8>) -> reqwest::Response {
        reqwest::Response::from(
            axum::http::Response::builder()
                .status(200)
                .body(body)
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_their_cap_and_no_further() {
        let body = read_capped(answer(vec![b'x'; 1 << 20]), 1 << 20, "the API").await;
        assert_eq!(body.unwrap().len(), 1 << 20);
        let err = read_capped(answer(vec![b'x'; (1 << 20) + 1]), 1 << 20, "the API")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::failure::FailureKind::Protocol);
        assert!(err.is_retryable());
        assert!(err.to_string().contains("over the 1 MiB cap"), "{err}");
    }

    #[test]
    fn credentials_debug_hides_the_key() {
        let c = Credentials::new("u".into(), "very-secret".into());
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn failure_classes() {
        let s3 = |status, code: &str, message: &str| RemoteError::S3 {
            status,
            code: code.into(),
            message: message.into(),
        };
        assert!(
            s3(
                403,
                "AccessDenied",
                "Invalid according to Policy: Policy expired."
            )
            .is_form_expired()
        );
        assert!(
            s3(
                403,
                "AccessDenied",
                "Invalid according to Policy: Policy expired."
            )
            .is_retryable()
        );
        assert!(!s3(403, "AccessDenied", "Policy Condition failed").is_retryable());
        assert!(s3(503, "SlowDown", "").is_retryable());
        assert!(!s3(400, "EntityTooLarge", "").is_retryable());
        let api = |status| RemoteError::Api {
            fields: Vec::new(),
            status,
            error_name: String::new(),
            message: String::new(),
        };
        assert!(api(500).is_retryable() && api(503).is_retryable());
        for status in [400, 404, 409, 422] {
            assert!(!api(status).is_retryable(), "{status}");
        }
        assert!(
            !RemoteError::Quota {
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            RemoteError::Quota {
                message: String::new()
            }
            .is_retryable_later()
        );
    }
}
