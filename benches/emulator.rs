//! `cargo bench --bench emulator`: how fast the emulator answers, so that it is never what limits
//! another benchmark.
//!
//! In one process: the emulator (throttle off) and, as the baseline measured in the same run, a
//! bare axum server on the same machine whose handlers do nothing but answer (a fixed JSON body
//! for GET, a body drained and counted for POST). The same load generator (keep-alive
//! connections, a fixed number of concurrent workers, `EMULATOR_BENCH_SECONDS` each, 3 by
//! default) drives both; the ratio says what the emulator's own work costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use opcrm_import::emulator::{self, Config, DEMO_API_KEY, DEMO_USER_ID};
use serde_json::Value;

const API_TARGET_RPS: f64 = 5_000.0;

fn main() {
    let seconds: f64 = std::env::var("EMULATOR_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(Duration::from_secs_f64(seconds)));
}

async fn bench(duration: Duration) {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    config.rate_limit = None;
    config.user_id = DEMO_USER_ID.into();
    config.api_key = DEMO_API_KEY.into();
    config.seed = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/emulator-seed.json").into());
    let emu = emulator::start(config).await.expect("start the emulator");
    let base = start_baseline().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    let seed: Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/samples/emulator-seed.json"
    )))
    .unwrap();
    let contact = seed["contacts"][0]["id"].as_str().unwrap().to_string();
    let note = seed["contacts"][0]["notes"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let api = emu.app.api_base();

    println!(
        "emulator bench: {} s per figure, load generator in the same process, on {} cores",
        duration.as_secs_f64(),
        cores()
    );
    println!(
        "{:<52} {:>10} {:>10} {:>7}",
        "what", "emulator", "baseline", "ratio"
    );

    let workers = 16;
    let form_url = format!("{api}/attachments/s3_form?contact_id={contact}");
    let note_url = format!("{api}/notes/{note}");
    let hello = format!("http://{base}/hello");
    let mut api_rates = Vec::new();
    for (what, url) in [
        ("API GET s3_form (signs a policy), requests/s", &form_url),
        ("API GET note, requests/s", &note_url),
    ] {
        let emu_rps = load(workers, duration, get_request(&client, url, true)).await;
        let base_rps = load(workers, duration, get_request(&client, &hello, false)).await;
        println!(
            "{what:<52} {:>10.0} {:>10.0} {:>7.2}",
            emu_rps.0,
            base_rps.0,
            emu_rps.0 / base_rps.0
        );
        api_rates.push(emu_rps.0);
    }

    // S3: 1 MiB files, each worker overwriting its own key, so memory stays flat.
    let form: Value = client
        .get(&form_url)
        .basic_auth(DEMO_USER_ID, Some(DEMO_API_KEY))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    let file: Arc<Vec<u8>> = Arc::new(
        (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    );
    let s3_url = form["data"]["url"].as_str().unwrap().to_string();
    let sink = format!("http://{base}/sink");
    let s3_workers = 4;
    let emu_s3 = load(
        s3_workers,
        duration,
        upload_request(&client, &s3_url, &form, &contact, &file),
    )
    .await;
    let base_s3 = load(
        s3_workers,
        duration,
        upload_request(&client, &sink, &form, &contact, &file),
    )
    .await;
    let mb = |(_, bytes): (f64, f64)| bytes / (1 << 20) as f64;
    println!(
        "{:<52} {:>10.0} {:>10.0} {:>7.2}",
        "S3 POST of 1 MiB files (policy, MD5, stored), MB/s",
        mb(emu_s3),
        mb(base_s3),
        mb(emu_s3) / mb(base_s3)
    );
    let slowest = api_rates.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "target: at least {API_TARGET_RPS:.0} small API requests/s -> {} (slowest endpoint {slowest:.0}/s)",
        if slowest >= API_TARGET_RPS {
            "met"
        } else {
            "MISSED"
        }
    );
    emu.stop().await;
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A GET that must succeed; with the emulator's credentials when `auth`.
fn get_request(
    client: &reqwest::Client,
    url: &str,
    auth: bool,
) -> impl Fn(usize) -> Request + Send + Sync + 'static {
    let (client, url) = (client.clone(), url.to_string());
    move |_| {
        let mut request = client.get(&url);
        if auth {
            request = request.basic_auth(DEMO_USER_ID, Some(DEMO_API_KEY));
        }
        Box::pin(async move {
            let r = request.send().await.expect("request sent");
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.expect("body read");
            0
        })
    }
}

/// An S3 POST of `file` with every field of the form, the key of the worker, the file last.
fn upload_request(
    client: &reqwest::Client,
    url: &str,
    form: &Value,
    contact: &str,
    file: &Arc<Vec<u8>>,
) -> impl Fn(usize) -> Request + Send + Sync + 'static {
    let (client, url, file) = (client.clone(), url.to_string(), file.clone());
    let fields = form["data"]["fields"].as_object().unwrap().clone();
    let contact = contact.to_string();
    move |worker| {
        let mut multipart = reqwest::multipart::Form::new();
        for (name, value) in fields
            .iter()
            .filter(|(n, _)| *n != "x-ignore-pattern" && *n != "key")
        {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            multipart = multipart.text(name.clone(), text);
        }
        multipart = multipart
            .text("key", format!("{contact}/bench/worker-{worker}.bin"))
            .text("filename", "worker.bin");
        let part = reqwest::multipart::Part::bytes(file.as_ref().clone()).file_name("worker.bin");
        let request = client.post(&url).multipart(multipart.part("file", part));
        let len = file.len() as u64;
        Box::pin(async move {
            let r = request.send().await.expect("request sent");
            let status = r.status();
            let body = r.text().await.expect("body read");
            assert!(status.is_success(), "{status}: {body}");
            len
        })
    }
}

type Request = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// Runs `workers` tasks that each send `request` after request for `duration`; returns
/// (requests/s, payload bytes/s). A failed request panics: a figure made of errors means nothing.
async fn load(
    workers: usize,
    duration: Duration,
    request: impl Fn(usize) -> Request + Send + Sync + 'static,
) -> (f64, f64) {
    let request = Arc::new(request);
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let request = request.clone();
        set.spawn(async move {
            let (mut n, mut bytes) = (0u64, 0u64);
            while Instant::now() < deadline {
                bytes += request(worker).await;
                n += 1;
            }
            (n, bytes)
        });
    }
    let (mut n, mut bytes) = (0, 0);
    while let Some(done) = set.join_next().await {
        let (a, b) = done.expect("worker finished");
        n += a;
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs, bytes as f64 / secs)
}

/// The baseline: handlers that do nothing but answer.
async fn start_baseline() -> SocketAddr {
    let body = r#"{"status":0,"message":"OK","timestamp":0,"data":{"note":{"id":"064132394d9b497f536b2bb7","contact_id":"ca929443ed449d7679121de5","attachments":[],"text":"hello"}}}"#;
    let app = Router::new()
        .route(
            "/hello",
            get(move || async move { ([("content-type", "application/json")], body) }),
        )
        .route(
            "/sink",
            post(|b: Bytes| async move { (axum::http::StatusCode::CREATED, b.len().to_string()) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
