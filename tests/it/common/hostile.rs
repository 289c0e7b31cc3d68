//! A hostile HTTP server in the test process, on a free loopback port: it answers as a test's
//! rule says (an endless body, a throttle that never lifts, an HTML page from "S3") and passes
//! every other request on to a real emulator. It records the requests it sees and counts the
//! answer-body bytes it hands out, so a test can tell whether the client stopped reading.
//!
//! Step 1's answers are passed on with their `url` pointed at this server's `/s3/`, so that
//! uploads come here too (and go on to the emulator's bucket unless the rule answers them).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;

use super::emulator::Emulator;

/// One request as the server saw it (`Debug` does not show its credentials).
#[derive(Clone)]
pub struct Seen {
    pub method: String,
    /// The path and query, as sent (`/api/v3/attachments/s3_form?contact_id=…`, `/s3/`).
    pub path: String,
    pub authorization: Option<String>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = self.authorization.as_ref().map(|_| "<hidden>");
        f.debug_struct("Seen")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("authorization", &auth)
            .finish()
    }
}

impl Seen {
    /// An upload (a POST to this server's `/s3/`).
    pub fn is_s3(&self) -> bool {
        self.path.starts_with("/s3/")
    }
}

/// What the rule is told of a request: the requests seen before it, and the request itself.
pub struct Call<'a> {
    /// How many requests came before this one (0 for the first).
    pub n: usize,
    pub seen: &'a Seen,
}

/// How to answer a request.
pub enum Answer {
    /// Pass it on to the emulator (a 502 when there is none).
    Pass,
    /// This status, headers and body.
    Plain {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// This status and `total` bytes of body, made as they are sent (no Content-Length).
    Endless {
        status: u16,
        content_type: &'static str,
        total: u64,
    },
    /// A `200` whose body breaks off after a few bytes: the connection is cut, as when the
    /// network fails mid-answer.
    Cut,
}

impl Answer {
    /// A `status` with a `content_type` body and no other header.
    pub fn plain(status: u16, content_type: &str, body: &str) -> Self {
        Self::Plain {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: body.to_string(),
        }
    }
}

type Rule = dyn Fn(&Call) -> Answer + Send + Sync;

struct Shared {
    origin: String,
    upstream: Option<(String, String)>,
    rule: Box<Rule>,
    requests: Mutex<Vec<Seen>>,
    body_bytes: AtomicU64,
    http: reqwest::Client,
}

/// A running hostile server; stops when dropped.
pub struct Hostile {
    /// `http://127.0.0.1:PORT`
    pub origin: String,
    /// `http://127.0.0.1:PORT/api/v3`
    pub api: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Hostile {
    /// Starts the server in front of `upstream` (or of nothing), answering as `rule` says.
    pub fn start(
        upstream: Option<&Emulator>,
        rule: impl Fn(&Call) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the hostile server");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a free loopback port");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let origin = format!("http://{addr}");
        let shared = Arc::new(Shared {
            origin: origin.clone(),
            upstream: upstream.map(|e| (e.origin.clone(), e.s3.clone())),
            rule: Box::new(rule),
            requests: Mutex::new(Vec::new()),
            body_bytes: AtomicU64::new(0),
            http: reqwest::Client::new(),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            api: format!("{origin}/api/v3"),
            origin,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The bytes of `Endless` answer bodies handed to the connection so far.
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }

    /// The binary, pointed at this server with the emulator's demo credentials.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = super::bin();
        cmd.env("ONEPAGECRM_API_URL", &self.api)
            .env("ONEPAGECRM_USER_ID", super::emulator::USER_ID)
            .env("ONEPAGECRM_API_KEY", super::emulator::API_KEY)
            // A lost answer's record is read again for a second, not two minutes (see
            // `Emulator::point`): the rules that make a listing lag say so in their test.
            .env("OPCRM_SETTLE_WINDOW", "1")
            // No test may hang: whatever the server does, the run is killed after two minutes.
            .timeout(std::time::Duration::from_secs(120));
        cmd
    }

    /// `opcrm-import run MANIFEST --no-progress` against this server.
    pub fn run_cmd(&self, manifest: &std::path::Path) -> assert_cmd::Command {
        let mut cmd = self.cmd();
        cmd.arg("run").arg(manifest).arg("--no-progress");
        cmd
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
        authorization: parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    // The request is read whole first, as a server would, so that the client is not cut off
    // while it sends.
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let n = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(seen.clone());
        requests.len() - 1
    };
    match (shared.rule)(&Call { n, seen: &seen }) {
        Answer::Pass => pass(&shared, &seen, &parts.headers, body).await,
        Answer::Plain {
            status,
            headers,
            body,
        } => {
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).unwrap()
        }
        Answer::Cut => {
            let stream = futures_util::stream::iter([
                Ok(Bytes::from_static(b"{\"status\": 0, ")),
                Err(std::io::Error::other("the network failed")),
            ]);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Answer::Endless {
            status,
            content_type,
            total,
        } => {
            const CHUNK: usize = 64 * 1024;
            let chunk = Bytes::from(vec![b' '; CHUNK]);
            let shared = shared.clone();
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let (chunk, shared) = (chunk.clone(), shared.clone());
                async move {
                    if sent >= total {
                        return None;
                    }
                    shared.body_bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(chunk), sent + CHUNK as u64))
                }
            });
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// Passes a request on to the emulator and its answer back; step 1's `url` is pointed here.
async fn pass(
    shared: &Shared,
    seen: &Seen,
    headers: &axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some((origin, s3)) = &shared.upstream else {
        return Response::builder()
            .status(502)
            .body(Body::from("no upstream"))
            .unwrap();
    };
    let target = match seen.path.strip_prefix("/s3/") {
        Some(rest) => format!("{s3}{rest}"),
        None => format!("{origin}{}", seen.path),
    };
    let method = reqwest::Method::from_bytes(seen.method.as_bytes()).unwrap();
    let mut request = shared.http.request(method, target).body(body);
    for name in ["authorization", "content-type"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    let Ok(answer) = request.send().await else {
        return Response::builder()
            .status(502)
            .body(Body::from("upstream unreachable"))
            .unwrap();
    };
    let status = answer.status().as_u16();
    let mut response = Response::builder().status(status);
    for name in ["content-type", "etag", "location", "retry-after"] {
        if let Some(value) = answer.headers().get(name) {
            response = response.header(name, value.as_bytes());
        }
    }
    let mut bytes = answer.bytes().await.unwrap_or_default();
    if seen.path.contains("/attachments/s3_form")
        && let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && json["data"]["url"].is_string()
    {
        json["data"]["url"] = format!("{}/s3/", shared.origin).into();
        bytes = Bytes::from(json.to_string());
    }
    response.body(Body::from(bytes)).unwrap()
}
