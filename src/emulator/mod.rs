//! The OnePageCRM emulator: the parts of API v3 the tool uses and an S3 POST endpoint, served on
//! loopback, as strict as the real services where they are strict, with a throttle and injected
//! faults. Every test runs against it, and a person rehearses a migration with it.

pub mod api;
pub mod clock;
pub mod external;
pub mod faults;
pub mod policy;
pub mod s3;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State as AxState};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

use clock::Clock;
use faults::{FaultConfig, Faults, RateLimit, Throttle, ThrottleModel};
use policy::Signer;
use state::State;

/// The user id and API key the emulator accepts when the environment names none.
pub const DEMO_USER_ID: &str = "5d2f4a0e1c9b8a7f6e5d4c3b";
pub const DEMO_API_KEY: &str = "demo-api-key-for-the-emulator";
/// The S3 account the emulator signs forms with (its own; never a real AWS key).
pub const BUCKET: &str = "onepagecrm-emulator";
const ACCESS_KEY: &str = "AKIAEMULATOR00000000";
const REGION: &str = "eu-central-1";

/// Everything `opcrm-import emulator` is told.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub seed: Option<PathBuf>,
    pub rate_limit: Option<RateLimit>,
    /// How `rate_limit` is read: `rack` (as OnePageCRM), `gcra` or `window`.
    pub throttle_model: ThrottleModel,
    /// Step 3 refuses a second key made from one step-1 answer's timestamp (one form, one upload).
    pub single_use_forms: bool,
    /// Every envelope's `timestamp` in Unix milliseconds (`--form-timestamp`'s too).
    pub timestamp_ms: bool,
    /// Envelopes carry no `timestamp`.
    pub no_timestamp: bool,
    pub faults: FaultConfig,
    pub form_ttl: Duration,
    pub data_dir: Option<PathBuf>,
    pub user_id: String,
    pub api_key: String,
    /// Where the key came from, for the ready line (which never prints a key from the environment).
    pub api_key_source: KeySource,
    /// Another S3 server to sign forms for and to ask about uploads, instead of the built-in one.
    pub external_s3: Option<external::ExternalS3>,
    pub attachment_urls: AttachmentUrls,
    /// The `timestamp` of every step-1 answer, instead of the clock's.
    pub form_timestamp: Option<i64>,
    /// Seconds the emulator's clock starts ahead of the wall clock (behind when negative): a
    /// server whose clock is wrong, as a client meets them.
    pub clock_offset: i64,
    /// Listings hide notes and attachments younger than this by the emulator's clock: a server
    /// whose lists lag behind its writes. Zero hides nothing.
    pub list_lag: Duration,
    /// A deleted attachment's bytes count against the storage until this long after its
    /// deletion, by the emulator's clock (OnePageCRM keeps deleted files a while); never when none.
    pub purge_after: Option<Duration>,
}

/// How long an attachment's presigned `url` is valid, as OnePageCRM's links: an hour.
pub const ATTACHMENT_URL_SECONDS: u64 = 3600;

/// How an attachment's `url` is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachmentUrls {
    /// A SigV4 presigned GET of the object, valid for an hour: its path ends with the key.
    Presigned,
    /// A link that names only the file, as the OpenAPI example (`https://{foo.bar}/mario.jpg`):
    /// `/_emulator/files/<id>/<name>`, no object key in it.
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Demo,
    Environment,
}

impl Config {
    /// Defaults, with the credentials of the environment when it names them.
    pub fn new(listen: SocketAddr) -> Self {
        let user_id = std::env::var("ONEPAGECRM_USER_ID")
            .ok()
            .filter(|v| !v.is_empty());
        let api_key = std::env::var("ONEPAGECRM_API_KEY")
            .ok()
            .filter(|v| !v.is_empty());
        let (api_key, api_key_source) = match api_key {
            Some(key) => (key, KeySource::Environment),
            None => (DEMO_API_KEY.to_string(), KeySource::Demo),
        };
        Self {
            listen,
            seed: None,
            rate_limit: Some(RateLimit::ONEPAGECRM),
            throttle_model: ThrottleModel::default(),
            single_use_forms: false,
            timestamp_ms: false,
            no_timestamp: false,
            faults: FaultConfig::default(),
            form_ttl: Duration::from_secs(3600),
            data_dir: None,
            user_id: user_id.unwrap_or_else(|| DEMO_USER_ID.to_string()),
            api_key,
            api_key_source,
            external_s3: None,
            attachment_urls: AttachmentUrls::Presigned,
            form_timestamp: None,
            clock_offset: 0,
            list_lag: Duration::ZERO,
            purge_after: None,
        }
    }
}

/// What every handler shares.
pub struct App {
    pub config: Config,
    pub signer: Signer,
    /// Every moment the emulator stamps or judges; tests move it with `POST /_emulator/clock`.
    pub clock: Clock,
    state: Mutex<State>,
    throttle: Option<Throttle>,
    faults: Faults,
    /// `http://127.0.0.1:PORT`
    pub origin: String,
}

impl App {
    /// The emulator's state; a handler that panicked while holding it leaves it usable.
    /// Deleted attachments due a purge (`--purge-after`) give their storage back first.
    pub fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.config.purge_after.is_some() {
            state.purge(self.clock.now(), self.config.purge_after);
        }
        state
    }

    pub fn api_base(&self) -> String {
        format!("{}/api/v3", self.origin)
    }

    /// An attachment's `url`: a presigned GET of its object (the key shows in the path, as in
    /// OnePageCRM's S3-hosted links), or with `--opaque-links` a link that ends with the file's
    /// name and hides the key (the name is one encoded segment, so even a name that spells a key
    /// cannot be read as one).
    pub fn attachment_url(&self, a: &state::Attachment) -> String {
        match self.config.attachment_urls {
            AttachmentUrls::Opaque => format!(
                "{}/_emulator/files/{}/{}",
                self.origin,
                a.id,
                s3::encode_segment(&a.filename)
            ),
            AttachmentUrls::Presigned => {
                let signer = match &self.config.external_s3 {
                    Some(external) => external.signer(),
                    None => self.signer.clone(),
                };
                let object = format!("{}{}", self.s3_url(), s3::encode_key(&a.key));
                signer.presign_get(&object, self.clock.now(), ATTACHMENT_URL_SECONDS)
            }
        }
    }

    /// The bucket URL forms upload to: the built-in endpoint's, or the external server's.
    pub fn s3_url(&self) -> String {
        match &self.config.external_s3 {
            Some(external) => external.bucket_url(),
            None => format!("{}/{}/", self.origin, self.signer.bucket),
        }
    }
}

/// A running emulator; dropping it (or calling `stop`) shuts it down.
pub struct Emulator {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds, loads the seed and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Emulator> {
    anyhow::ensure!(
        config.listen.ip().is_loopback(),
        "the emulator listens on loopback only; {} is not a loopback address (use 127.0.0.1 or [::1])",
        config.listen.ip()
    );
    anyhow::ensure!(
        config.external_s3.is_none() || config.clock_offset == 0,
        "--clock-offset cannot be used in external-S3 mode: the S3 server judges forms by its own clock, so forms stamped by an offset clock would be refused or live longer there"
    );
    let clock = Clock::with_offset(config.clock_offset);
    anyhow::ensure!(
        config.external_s3.is_none()
            || !config
                .faults
                .planned
                .iter()
                .any(|p| p.fault == faults::Fault::Late),
        "a `late` fault moves the emulator's clock, which cannot move in external-S3 mode (the S3 server judges forms by its own clock); use `{}:N:expired`",
        faults::STEP_1_ROUTE
    );
    let state = match &config.seed {
        Some(path) => State::from_seed_file(path, clock.now())?,
        None => State::empty(clock.now()),
    };
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir.join("objects"))
            .with_context(|| format!("cannot create data folder {}", dir.display()))?;
    }
    if let Some(external) = &config.external_s3 {
        external.check_bucket().await?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let signer = match &config.external_s3 {
        Some(external) => external.signer(),
        None => Signer {
            access_key: ACCESS_KEY.to_string(),
            secret: emulator_secret(),
            region: REGION.to_string(),
            bucket: BUCKET.to_string(),
        },
    };
    let app = Arc::new(App {
        signer,
        clock,
        state: Mutex::new(state),
        throttle: config
            .rate_limit
            .map(|limit| Throttle::new(config.throttle_model, limit)),
        faults: Faults::new(config.faults.clone()),
        origin: format!("http://{addr}"),
        config,
    });
    let router = router(app.clone());
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, router, rx));
    Ok(Emulator {
        addr,
        app,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A secret of this process alone: forms signed by one emulator run mean nothing to another.
fn emulator_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 20] = rand::rng().random();
    hex::encode(bytes)
}

/// The routes: API v3 behind the throttle, faults and Basic auth; S3 behind faults only.
fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v3/attachments/s3_form", get(api::s3_form))
        .route("/api/v3/attachments", post(api::create_attachment))
        .route(
            "/api/v3/attachments/{id}",
            axum::routing::delete(api::delete_attachment),
        )
        .route(
            "/api/v3/attachments/{id}/pin",
            axum::routing::patch(api::pin_attachment),
        )
        .route(
            "/api/v3/attachments/{id}/unpin",
            axum::routing::patch(api::unpin_attachment),
        )
        .route(
            "/api/v3/contacts/{id}/pinned_attachments",
            get(api::list_pinned_attachments),
        )
        .route("/api/v3/notes", get(api::list_notes).post(api::create_note))
        .route(
            "/api/v3/notes/{id}",
            get(api::get_note).delete(api::delete_note),
        )
        .route("/api/v3/deals", get(api::list_deals))
        .route("/api/v3/deals/{id}", get(api::get_deal))
        .route("/api/v3/calls", get(api::list_calls))
        .route("/api/v3/calls/{id}", get(api::get_call))
        .route("/api/v3/meetings", get(api::list_meetings))
        .route("/api/v3/meetings/{id}", get(api::get_meeting))
        .route("/api/v3/contacts", get(api::list_contacts))
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            api::authenticate,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), api_faults))
        .layer(middleware::from_fn_with_state(app.clone(), throttle));
    let s3 = Router::new()
        .route("/{bucket}", post(s3::upload))
        .route("/{bucket}/", post(s3::upload))
        .route("/{bucket}/{*key}", get(s3::download))
        .layer(DefaultBodyLimit::max(64 << 20))
        .layer(middleware::from_fn_with_state(app.clone(), s3_faults));
    Router::new()
        .route("/_emulator/state", get(emulator_state))
        .route("/_emulator/clock", get(clock_now).post(advance_clock))
        .route("/_emulator/files/{id}/{name}", get(opaque_file))
        .merge(api)
        .merge(s3)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

async fn emulator_state(AxState(app): AxState<Arc<App>>) -> Response {
    axum::Json(app.state().snapshot()).into_response()
}

/// `GET /_emulator/files/<id>/<name>`: the file an opaque link names, so that the link works
/// as a link (no expiry, no credentials: the id is the secret, as in many file links).
async fn opaque_file(
    AxState(app): AxState<Arc<App>>,
    axum::extract::Path((id, name)): axum::extract::Path<(String, String)>,
) -> Response {
    let key = {
        let state = app.state();
        state
            .attachments
            .get(&id)
            .filter(|a| a.filename == name)
            .map(|a| a.key.clone())
    };
    match key {
        Some(key) => s3::object_response(&app, &key).await,
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": "no attachment has this id and name" })),
        )
            .into_response(),
    }
}

/// `GET /_emulator/clock`: the emulator's time, and how far ahead of the wall clock it is
/// (negative: behind).
async fn clock_now(AxState(app): AxState<Arc<App>>) -> Response {
    clock_json(&app.clock, app.clock.now())
}

/// `POST /_emulator/clock` with `{"advance_seconds": N}`: moves the clock forward, so that a test
/// makes forms and links expire without waiting. Refused in external-S3 mode, where another
/// server judges the forms by its own clock.
async fn advance_clock(AxState(app): AxState<Arc<App>>, body: axum::body::Bytes) -> Response {
    let refuse = |status: axum::http::StatusCode, error: String| {
        (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
    };
    if app.config.external_s3.is_some() {
        return refuse(
            axum::http::StatusCode::CONFLICT,
            "the clock cannot move in external-S3 mode: the S3 server judges forms by its own clock"
                .into(),
        );
    }
    let seconds = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("advance_seconds")?.as_u64())
        .filter(|s| *s <= clock::MAX_AHEAD.as_secs());
    let Some(seconds) = seconds else {
        return refuse(
            axum::http::StatusCode::BAD_REQUEST,
            format!(
                "give {{\"advance_seconds\": N}}, N a whole number of seconds from 0 to {}",
                clock::MAX_AHEAD.as_secs()
            ),
        );
    };
    let now = app.clock.advance(Duration::from_secs(seconds));
    clock_json(&app.clock, now)
}

fn clock_json(clock: &Clock, now: chrono::DateTime<chrono::Utc>) -> Response {
    axum::Json(serde_json::json!({
        "now": clock::iso(now),
        "unix": now.timestamp(),
        "ahead_seconds": clock.ahead().num_seconds(),
    }))
    .into_response()
}

/// Set on each request: closes its connection without an answer.
#[derive(Clone)]
struct Hangup(Arc<Notify>);

/// Set on each request: who is asking.
#[derive(Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves each connection by hand (not `axum::serve`) so that a fault can close one mid-request.
async fn accept_loop(listener: TcpListener, router: Router, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        tokio::spawn(async move {
            let hangup = Arc::new(Notify::new());
            let on_hangup = hangup.clone();
            let service =
                tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Hangup(hangup.clone()));
                    req.extensions_mut().insert(Peer(peer));
                    router.clone().oneshot(req.map(Body::new))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::select! {
                _ = conn => {}
                _ = on_hangup.notified() => {} // dropping the connection closes the socket
            }
        });
    }
}

fn route_of(req: &Request) -> String {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(req.uri().path(), MatchedPath::as_str);
    format!("{} {path}", req.method())
}

/// Counts every request by method, route and status (the emulator's own routes excepted).
async fn count(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let route = route_of(&req);
    let response = next.run(req).await;
    app.state()
        .count(format!("{route} {}", response.status().as_u16()));
    response
}

/// The API's throttle: past the limit a 403 with a plain-text body, as OnePageCRM answers.
async fn throttle(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(throttle) = &app.throttle {
        let client = api::basic_user(&req)
            .or_else(|| req.extensions().get::<Peer>().map(|p| p.0.ip().to_string()))
            .unwrap_or_default();
        if !throttle.admit(&client) {
            app.state().throttled += 1;
            return (
                axum::http::StatusCode::FORBIDDEN,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                "Rate limit exceeded. Please slow down your requests.\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn api_faults(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    inject(&app, req, next, api::internal_error).await
}

async fn s3_faults(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    inject(&app, req, next, || {
        s3::error_response(
            &policy::Refusal::new("SlowDown", 503, "Please reduce your request rate."),
            "",
        )
    })
    .await
}

/// Set on a step-1 request by an `expired` fault: hand out a form that has already expired.
#[derive(Clone, Copy)]
pub struct ExpiredForm;

/// Holds, fails or hangs up on a request as the fault generator draws.
async fn inject(
    app: &App,
    mut req: Request,
    next: Next,
    error: impl FnOnce() -> Response,
) -> Response {
    let route = route_of(&req);
    let (fault, delay) = app.faults.draw(&route);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let hangup = req.extensions().get::<Hangup>().cloned();
    match fault {
        faults::Fault::None => next.run(req).await,
        faults::Fault::Error => error(),
        faults::Fault::Late => {
            app.clock
                .advance(app.config.form_ttl + Duration::from_secs(1));
            next.run(req).await
        }
        faults::Fault::Expired => {
            req.extensions_mut().insert(ExpiredForm);
            next.run(req).await
        }
        faults::Fault::DropBefore | faults::Fault::DropAfter => {
            if fault == faults::Fault::DropAfter {
                drop(next.run(req).await);
            }
            app.state().count(format!("{route} dropped"));
            if let Some(Hangup(notify)) = hangup {
                notify.notify_one();
            }
            std::future::pending().await
        }
    }
}

/// `opcrm-import emulator`: serves until Ctrl-C or SIGTERM.
pub fn serve_forever(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let emulator = start(config).await?;
        let app = &emulator.app;
        let key = match app.config.api_key_source {
            KeySource::Demo => app.config.api_key.clone(),
            KeySource::Environment => "(from ONEPAGECRM_API_KEY)".to_string(),
        };
        println!(
            "opcrm-import emulator ready: api={} s3={} user_id={} api_key={key}",
            app.api_base(),
            app.s3_url(),
            app.config.user_id
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        shutdown_signal().await;
        eprintln!("emulator: stopping");
        emulator.stop().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
