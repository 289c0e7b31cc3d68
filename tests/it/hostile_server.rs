//! Hostile servers and inputs: answers without end, throttles that never lift, an "S3" that
//! answers with a web page, and credentials or queries where they do not belong. Each server is
//! an in-process `common::hostile::Hostile` on loopback, in front of a real emulator or of
//! nothing; the real binary runs against it.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::Scratch;
use crate::common::emulator::{API_KEY, Emulator, USER_ID};
use crate::common::hostile::{Answer, Hostile};

/// A note of the sample seed's first contact.
const CONTACT: &str = "ca929443ed449d7679121de5";
const NOTE: &str = "064132394d9b497f536b2bb7";

/// A manifest of `n` small files, each on the same note of the seed's first contact.
fn small_manifest(s: &Scratch, n: usize) -> PathBuf {
    let mut text = String::from("file,contact_id,reference_type,reference_id,name\n");
    for i in 0..n {
        s.file(&format!("files/f{i}.txt"), format!("file number {i}\n"));
        text.push_str(&format!("files/f{i}.txt,{CONTACT},note,{NOTE},\n"));
    }
    s.manifest(text)
}

/// A server that must never be reached: it answers 404 and records what came.
fn must_not_be_reached() -> Hostile {
    Hostile::start(None, |call| {
        let why = format!("request {} ({}) was not expected", call.n, call.seen.path);
        Answer::plain(404, "text/plain", &why)
    })
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn user_info_in_the_api_url_is_refused_without_showing_it_or_sending_it() {
    let server = must_not_be_reached();
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let port = server.origin.rsplit(':').next().unwrap().to_string();
    for url in [
        format!("http://admin:hunter2-pass@127.0.0.1:{port}/api/v3"),
        "http://admin:hunter2-pass@10.0.0.5/api/v3".to_string(),
    ] {
        let output = server
            .run_cmd(&manifest)
            .env("ONEPAGECRM_API_URL", &url)
            .output()
            .unwrap();
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(3), "{url}: {stderr}");
        assert!(stderr.contains("user name or password"), "{stderr}");
        assert!(
            !stderr.contains("hunter2-pass") && !stderr.contains("admin"),
            "the refusal shows the user info: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&output.stdout).contains("hunter2-pass"));
    }
    assert!(
        server.requests().is_empty(),
        "sent: {:?}",
        server.requests()
    );
}

#[test]
fn a_query_or_fragment_in_the_api_url_is_refused() {
    let server = must_not_be_reached();
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    for tail in ["?account=1", "#top"] {
        let url = format!("{}{tail}", server.api);
        let output = server
            .run_cmd(&manifest)
            .env("ONEPAGECRM_API_URL", &url)
            .output()
            .unwrap();
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(3), "{url}: {stderr}");
        assert!(
            stderr.contains("has a query (`?`) or a fragment (`#`)"),
            "{stderr}"
        );
    }
    assert!(
        server.requests().is_empty(),
        "sent: {:?}",
        server.requests()
    );
}

#[test]
fn an_api_key_file_of_several_lines_is_refused_without_showing_it() {
    let server = must_not_be_reached();
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let key_file = s.file("key.txt", format!("{API_KEY}\nsecond-line-secret\n"));
    let output = server
        .run_cmd(&manifest)
        .env_remove("ONEPAGECRM_API_KEY")
        .arg("--api-key-file")
        .arg(&key_file)
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("holds 2 lines"), "{stderr}");
    assert!(stderr.contains("on one line"), "{stderr}");
    assert!(
        !stderr.contains("second-line-secret") && !stderr.contains(API_KEY),
        "the refusal shows the file: {stderr}"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn an_api_key_of_several_lines_in_the_environment_is_refused_without_showing_it() {
    let server = must_not_be_reached();
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let output = server
        .run_cmd(&manifest)
        .env(
            "ONEPAGECRM_API_KEY",
            format!("{API_KEY}\nsecond-line-secret"),
        )
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("ONEPAGECRM_API_KEY holds more than one line"),
        "{stderr}"
    );
    assert!(!stderr.contains("second-line-secret") && !stderr.contains(API_KEY));
    assert!(server.requests().is_empty());
}

#[test]
fn an_api_key_file_of_one_crlf_line_is_accepted() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(Some(&emu), |_| Answer::Pass);
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let key_file = s.file("key.txt", format!("{API_KEY}\r\n"));
    server
        .run_cmd(&manifest)
        .env_remove("ONEPAGECRM_API_KEY")
        .arg("--api-key-file")
        .arg(&key_file)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let expected = format!(
        "Basic {}",
        base64_of(&format!("{USER_ID}:{API_KEY}")).as_str()
    );
    let api: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| !r.is_s3())
        .collect();
    assert!(!api.is_empty());
    for r in api {
        // Compared, never printed: a failure shows the request, not its credentials.
        assert!(
            r.authorization.as_deref() == Some(expected.as_str()),
            "{r:?} did not carry the configured credentials"
        );
    }
    let state: Value = emu.state();
    assert_eq!(state["attachments"].as_array().unwrap().len(), 1);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The body a hostile server offers: far more than any cap, made as it is sent.
const ENDLESS: u64 = 256 << 20;
/// What a client that stops at its cap may have let through: the cap, plus what the socket
/// buffers held when it stopped, far less than `ENDLESS`.
const READ_AT_MOST: u64 = 64 << 20;

/// The JSON summary a `run --json` printed.
fn summary(output: &std::process::Output) -> Value {
    crate::common::json_stdout(output)
}

#[test]
fn an_endless_api_answer_fails_the_call_at_its_cap() {
    let server = Hostile::start(None, |_| Answer::Endless {
        status: 200,
        content_type: "application/json",
        total: ENDLESS,
    });
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let output = server
        .run_cmd(&manifest)
        .args(["--retries", "0"])
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("over the 4 MiB cap"), "{stderr}");
    assert!(stderr.contains("run again later"), "{stderr}");
    assert_eq!(server.requests().len(), 1, "one step-1 call, not retried");
    let sent = server.body_bytes();
    assert!(
        sent < READ_AT_MOST,
        "the client let the server send {sent} bytes of one answer"
    );
}

#[test]
fn an_endless_s3_answer_fails_the_upload_at_its_cap() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(Some(&emu), |call| match call.seen.is_s3() {
        true => Answer::Endless {
            status: 201,
            content_type: "application/xml",
            total: ENDLESS,
        },
        false => Answer::Pass,
    });
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let output = server
        .run_cmd(&manifest)
        .args(["--retries", "0", "--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = summary(&output);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    let failure = &doc["failures"][0];
    assert_eq!(failure["kind"], "protocol", "{doc}");
    assert_eq!(failure["retryable"], true, "{doc}");
    let message = failure["message"].as_str().unwrap();
    assert!(
        message.contains("S3") && message.contains("over the 1 MiB cap"),
        "{message}"
    );
    let sent = server.body_bytes();
    assert!(
        sent < READ_AT_MOST,
        "the client let S3 send {sent} bytes of one answer"
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/api/v3/attachments") && r.method == "POST"),
        "an upload S3 never confirmed was attached: {:?}",
        server.requests()
    );
    assert!(emu.state()["attachments"].as_array().unwrap().is_empty());
}

#[test]
fn a_web_page_from_s3_fails_the_row_and_nothing_is_attached() {
    const PAGE: &str = "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>";
    let emu = Emulator::start(&["--rate-limit", "off"]);
    for status in [200, 201] {
        let server = Hostile::start(Some(&emu), move |call| match call.seen.is_s3() {
            true => Answer::plain(status, "text/html", PAGE),
            false => Answer::Pass,
        });
        let s = Scratch::new();
        let manifest = small_manifest(&s, 1);
        let output = server
            .run_cmd(&manifest)
            .args(["--retries", "0", "--rate", "off", "--json"])
            .output()
            .unwrap();
        let doc = summary(&output);
        assert_eq!(output.status.code(), Some(4), "{status}: {doc}");
        let failure = &doc["failures"][0];
        assert_eq!(failure["kind"], "protocol", "{doc}");
        let message = failure["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("S3: status {status} with a"))
                && message.contains("text/html"),
            "{message}"
        );
        assert!(
            server.requests().iter().any(|r| r.is_s3()),
            "the upload went to the hostile S3"
        );
        assert!(
            !server
                .requests()
                .iter()
                .any(|r| r.path.starts_with("/api/v3/attachments") && r.method == "POST"),
            "{status}: a web page was taken as an upload and attached: {:?}",
            server.requests()
        );
    }
    assert!(emu.state()["attachments"].as_array().unwrap().is_empty());
}

/// The readable run's stdout and stderr, and its exit code.
fn run_output(cmd: &mut assert_cmd::Command) -> (Option<i32>, String, String) {
    let output = cmd.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr_of(&output),
    )
}

/// `status --json` of a manifest's state file.
fn status_of(manifest: &std::path::Path) -> Value {
    let output = crate::common::bin()
        .arg("status")
        .arg(manifest)
        .arg("--json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A rule that passes everything on until the first upload has reached S3, then answers every
/// API call with `answer()`. The stall clock starts at that upload (the last success), when the
/// first row is under way by construction, whatever the machine's speed: the row is then cut
/// short by the stall, and no other row starts (with `--concurrency 1`).
fn after_the_first_upload(
    answer: impl Fn() -> Answer + Send + Sync + 'static,
) -> impl Fn(&crate::common::hostile::Call) -> Answer + Send + Sync + 'static {
    let uploaded = std::sync::atomic::AtomicBool::new(false);
    move |call| {
        use std::sync::atomic::Ordering;
        if call.seen.is_s3() {
            uploaded.store(true, Ordering::SeqCst);
            Answer::Pass
        } else if uploaded.load(Ordering::SeqCst) {
            answer()
        } else {
            Answer::Pass
        }
    }
}

#[test]
fn a_server_that_throttles_forever_stops_the_run_at_the_stall_timeout() {
    let server = Hostile::start(None, |_| {
        Answer::plain(403, "text/plain", "Rate Limit Exceeded")
    });
    let s = Scratch::new();
    let manifest = small_manifest(&s, 3);
    let (code, _, stderr) = run_output(server.run_cmd(&manifest).args(["--stall-timeout", "2s"]));
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(
            "no API call has succeeded for 2 s (since then the calls got 403 (throttled) "
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("nothing was uploaded, rerun later"),
        "{stderr}"
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.path.contains("/attachments/s3_form")),
        "only the quota check was tried: {:?}",
        server.requests()
    );
    // The state is saved: every row is recorded, none started.
    let status = status_of(&manifest);
    assert_eq!(status["rows"], 3, "{status}");
    assert_eq!(status["by_state"]["pending"], 3, "{status}");
}

#[test]
fn a_server_failing_with_5xx_forever_stops_the_run_at_the_stall_timeout() {
    const ERROR: &str = r#"{"status":500,"message":"Internal Server Error","error_name":"internal_error","error_message":"boom","errors":{}}"#;
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(
        Some(&emu),
        after_the_first_upload(|| Answer::plain(500, "application/json", ERROR)),
    );
    let s = Scratch::new();
    let manifest = small_manifest(&s, 3);
    let output = server
        .run_cmd(&manifest)
        .args([
            "--stall-timeout",
            "2s",
            "--retries",
            "100",
            "--concurrency",
            "1",
        ])
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = summary(&output);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(4), "{doc}\n{stderr}");
    assert_eq!(doc["stopped"], "stalled", "{doc}");
    assert_eq!(doc["exit_code"], 4, "{doc}");
    assert_eq!(doc["failed_retryable"], 1, "the row under way ended: {doc}");
    assert_eq!(doc["not_started"], 2, "no new row started: {doc}");
    assert_eq!(doc["failures"][0]["kind"], "server_error", "{doc}");
    assert!(
        doc["retries"].as_u64().unwrap() < 100,
        "the backoff was cut short: {doc}"
    );
    assert!(
        stderr.contains(
            "no API call has succeeded for 2 s (since then the calls got 500 (server_error) "
        ),
        "{stderr}"
    );
    assert!(emu.state()["attachments"].as_array().unwrap().is_empty());
    let status = status_of(&manifest);
    assert_eq!(status["by_state"]["failed"], 1, "{status}");
    assert_eq!(status["by_state"]["pending"], 2, "{status}");
}

#[test]
fn a_giant_retry_after_is_capped_announced_and_cut_short_at_the_stall_timeout() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(
        Some(&emu),
        after_the_first_upload(|| Answer::Plain {
            status: 429,
            headers: vec![
                ("content-type", "text/plain".into()),
                ("retry-after", "999999999".into()),
            ],
            body: "slow down".into(),
        }),
    );
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let (code, stdout, stderr) =
        run_output(
            server
                .run_cmd(&manifest)
                .args(["--stall-timeout", "2s", "--rate", "off"]),
        );
    assert_eq!(code, Some(4), "{stdout}\n{stderr}");
    // The wait is announced, and capped.
    assert!(
        stderr.contains("the API throttles (429) and asks to wait 999999999 s (Retry-After; waited 1 min at most)"),
        "{stderr}"
    );
    assert!(stderr.contains("429 (throttled) 1 time)"), "{stderr}");
    assert!(
        stdout.contains("Result: stopped: no API call has succeeded for 2 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "rerun later to resume (when the API answers again): {} run",
            env!("CARGO_BIN_EXE_opcrm-import")
        )),
        "{stdout}"
    );
    assert!(stdout.contains("failed, retryable:  1"), "{stdout}");
    // The throttle pause (a minute) was cut short when the run stalled: the run took about the
    // stall timeout, far less than the pause (a bound that holds on the slowest machine).
    let elapsed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("elapsed:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        elapsed.ends_with(" s") && !elapsed.contains("min"),
        "elapsed {elapsed}"
    );
}

#[test]
fn a_network_that_keeps_failing_stops_the_run_at_the_stall_timeout() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(Some(&emu), after_the_first_upload(|| Answer::Cut));
    let s = Scratch::new();
    let manifest = small_manifest(&s, 2);
    let output = server
        .run_cmd(&manifest)
        .args([
            "--stall-timeout",
            "2s",
            "--retries",
            "100",
            "--concurrency",
            "1",
        ])
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = summary(&output);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(4), "{doc}\n{stderr}");
    assert_eq!(doc["stopped"], "stalled", "{doc}");
    assert_eq!(doc["failures"][0]["kind"], "network", "{doc}");
    assert_eq!(doc["not_started"], 1, "{doc}");
    assert!(
        stderr.contains("no API call has succeeded for 2 s (since then the calls got network "),
        "{stderr}"
    );
}

// Issue 19, item 5: a 401 stops the run at once, even when its body is a proxy's web page.
#[test]
fn a_401_with_a_web_page_stops_the_run_with_exit_3_at_once() {
    const PAGE: &str = "<html><body><h1>401 Authorization Required</h1></body></html>";
    let server = Hostile::start(None, |_| Answer::plain(401, "text/html", PAGE));
    let s = Scratch::new();
    let manifest = small_manifest(&s, 2);
    let (code, _, stderr) = run_output(server.run_cmd(&manifest).args(["--retries", "5"]));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the API refused the credentials (401 with a body that is not JSON"),
        "{stderr}"
    );
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
}

// Issue 19, item 6: a `Retry-After` given as an HTTP date is honoured, bounded as the seconds
// form is.
#[test]
fn a_retry_after_given_as_an_http_date_is_honoured_and_capped() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(
        Some(&emu),
        after_the_first_upload(|| Answer::Plain {
            status: 429,
            headers: vec![
                ("content-type", "text/plain".into()),
                ("retry-after", "Fri, 31 Dec 2100 23:59:59 GMT".into()),
            ],
            body: "slow down".into(),
        }),
    );
    let s = Scratch::new();
    let manifest = small_manifest(&s, 1);
    let (code, stdout, stderr) =
        run_output(
            server
                .run_cmd(&manifest)
                .args(["--stall-timeout", "2s", "--rate", "off"]),
        );
    assert_eq!(code, Some(4), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the API throttles (429) and asks to wait ")
            && stderr.contains(" s (Retry-After; waited 1 min at most)"),
        "{stderr}"
    );
}

// Issue 19, item 1: an S3 that answers it stored the upload under another key than the one sent:
// the row is not attached (the attachment would name a key holding nothing), and fails with its
// own kind, saying what S3 answered.
#[test]
fn an_s3_answer_naming_another_key_fails_the_row_and_nothing_is_attached() {
    const OTHER: &str = "ca929443ed449d7679121de5/1/elsewhere.txt";
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(Some(&emu), |call| match call.seen.is_s3() {
        true => Answer::plain(
            201,
            "application/xml",
            &format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse><Location>/b/{OTHER}</Location><Bucket>b</Bucket><Key>{OTHER}</Key></PostResponse>"
            ),
        ),
        false => Answer::Pass,
    });
    let s = Scratch::new();
    let manifest = small_manifest(&s, 2);
    let output = server
        .run_cmd(&manifest)
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = summary(&output);
    assert_eq!(output.status.code(), Some(1), "{doc}");
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{doc}");
    for failure in failures {
        assert_eq!(failure["kind"], "s3_key_mismatch", "{doc}");
        let message = failure["message"].as_str().unwrap();
        assert!(message.contains(OTHER), "{message}");
    }
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/api/v3/attachments") && r.method == "POST"),
        "an upload S3 stored elsewhere was attached: {:?}",
        server.requests()
    );
    assert!(emu.state()["attachments"].as_array().unwrap().is_empty());
    let status = status_of(&manifest);
    assert_eq!(status["by_state"]["failed"], 2, "{status}");
}
