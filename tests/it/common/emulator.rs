//! Starts the real `opcrm-import emulator` on a free loopback port and talks to it with curl.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const USER_ID: &str = "5d2f4a0e1c9b8a7f6e5d4c3b";
pub const API_KEY: &str = "demo-api-key-for-the-emulator";

/// A running emulator process; killed when dropped.
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub origin: String,
    /// `http://127.0.0.1:PORT/api/v3`
    pub api: String,
    /// The S3 bucket URL step 1 hands out.
    pub s3: String,
}

impl Emulator {
    /// Starts the emulator with the sample seed and `args`, and waits for its ready line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_credentials(args, None)
    }

    /// The throttle off, and each `--fault-at` spec of `faults` (a planned lost answer, say).
    pub fn with_faults(faults: &[&str]) -> Self {
        let mut args = vec!["--rate-limit", "off"];
        for spec in faults {
            args.extend(["--fault-at", spec]);
        }
        Self::start(&args)
    }

    /// As `start`, with `ONEPAGECRM_USER_ID` and `ONEPAGECRM_API_KEY` set to `credentials`.
    pub fn start_with_credentials(args: &[&str], credentials: Option<(&str, &str)>) -> Self {
        Self::start_seeded(
            &super::samples().join("emulator-seed.json"),
            args,
            credentials,
        )
    }

    /// As `start_with_credentials`, with another seed file.
    pub fn start_seeded(
        seed: &std::path::Path,
        args: &[&str],
        credentials: Option<(&str, &str)>,
    ) -> Self {
        Self::start_full(seed, args, credentials, &[])
    }

    /// In external-S3 mode against `server`, with the sample seed, the throttle off and `args`.
    pub fn start_external(server: &super::s3s::S3sFs, args: &[&str]) -> Self {
        let mut all: Vec<&str> = vec!["--rate-limit", "off"];
        let external = server.emulator_args();
        all.extend(external.iter().map(String::as_str));
        all.extend_from_slice(args);
        let emu = Self::start_full(
            &super::samples().join("emulator-seed.json"),
            &all,
            None,
            &super::s3s::S3sFs::envs(),
        );
        assert_eq!(
            emu.s3,
            format!("{}/{}/", server.endpoint, super::s3s::BUCKET),
            "forms point at the external server"
        );
        emu
    }

    /// Starts the emulator with `seed`, `args`, `credentials` and more environment `envs`.
    fn start_full(
        seed: &std::path::Path,
        args: &[&str],
        credentials: Option<(&str, &str)>,
        envs: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
        cmd.args(["emulator", "--listen", "127.0.0.1:0", "--seed"])
            .arg(seed)
            .args(args)
            .env_remove("OPCRM_EMULATOR_S3_ACCESS_KEY")
            .env_remove("OPCRM_EMULATOR_S3_SECRET_KEY")
            .envs(envs.iter().copied());
        match credentials {
            Some((user, key)) => cmd
                .env("ONEPAGECRM_USER_ID", user)
                .env("ONEPAGECRM_API_KEY", key),
            None => cmd
                .env_remove("ONEPAGECRM_USER_ID")
                .env_remove("ONEPAGECRM_API_KEY"),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the emulator");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the emulator printed its ready line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in ready line {line:?}"))
                .to_string()
        };
        let api = field("api");
        let s3 = field("s3");
        match credentials {
            None => {
                assert_eq!(field("user_id"), USER_ID);
                assert_eq!(field("api_key"), API_KEY);
            }
            Some((user, key)) => {
                assert_eq!(field("user_id"), user);
                assert!(
                    !line.contains(key),
                    "the ready line shows a key from the environment: {line}"
                );
                assert!(line.contains("(from ONEPAGECRM_API_KEY)"), "{line}");
            }
        }
        let origin = api.trim_end_matches("/api/v3").to_string();
        Self {
            child,
            origin,
            api,
            s3,
        }
    }

    /// `GET /_emulator/state`.
    pub fn state(&self) -> Value {
        let reply = curl(&[format!("{}/_emulator/state", self.origin)], None);
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }

    /// The requests the emulator has counted so far, by `METHOD route status`.
    pub fn requests(&self) -> std::collections::BTreeMap<String, u64> {
        self.state()["requests"]
            .as_object()
            .expect("the state lists requests")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect()
    }

    /// `POST /_emulator/clock`: moves the emulator's clock `seconds` forward; its answer.
    pub fn advance_clock(&self, seconds: u64) -> Value {
        let reply = curl(
            &[
                "--data-binary".to_string(),
                format!("{{\"advance_seconds\": {seconds}}}"),
                format!("{}/_emulator/clock", self.origin),
            ],
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    /// An authenticated API GET (`path` after `/api/v3`).
    pub fn get(&self, path: &str) -> Reply {
        curl(&[format!("{}{path}", self.api)], Some((USER_ID, API_KEY)))
    }

    /// An authenticated API POST of a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        let args = [
            "-H".to_string(),
            "content-type: application/json".to_string(),
            "--data-binary".to_string(),
            body.to_string(),
            format!("{}{path}", self.api),
        ];
        curl(&args, Some((USER_ID, API_KEY)))
    }

    /// Points `cmd` (the binary, however it is run) at this emulator with its demo credentials.
    /// Its listings show every write at once (unless started with `--list-lag`), so a lost
    /// answer's record is read again for a second, not the default two minutes: the tests of a
    /// lagging listing set their window themselves.
    pub fn point<'a>(&self, cmd: &'a mut assert_cmd::Command) -> &'a mut assert_cmd::Command {
        cmd.env("ONEPAGECRM_API_URL", &self.api)
            .env("ONEPAGECRM_USER_ID", USER_ID)
            .env("ONEPAGECRM_API_KEY", API_KEY)
            .env("OPCRM_SETTLE_WINDOW", "1")
    }

    /// The binary, pointed at this emulator with its demo credentials.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = super::bin();
        self.point(&mut cmd);
        cmd
    }

    /// The command `opcrm-import run`, pointed at this emulator with its demo credentials.
    pub fn run_cmd(&self, manifest: &std::path::Path) -> assert_cmd::Command {
        let mut cmd = self.cmd();
        cmd.arg("run").arg(manifest).arg("--no-progress");
        cmd
    }

    /// A stored object's bytes, fetched from the bucket.
    pub fn object(&self, key: &str) -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-s", &format!("{}{key}", self.s3)])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// Step 1 for a contact; panics unless it succeeds.
    pub fn form(&self, contact_id: &str) -> Value {
        let reply = self.get(&format!("/attachments/s3_form?contact_id={contact_id}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl got back.
#[derive(Debug)]
pub struct Reply {
    /// 0 when no answer came.
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// curl's exit code (52: the server closed the connection without an answer).
    pub curl_exit: i32,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

const MARK: &str = "\n--curl-status--";

/// Runs curl; credentials go through its config on stdin, never its command line.
pub fn curl(args: &[String], auth: Option<(&str, &str)>) -> Reply {
    let mut all = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "60".into(),
        "-w".into(),
        format!("{MARK}%{{http_code}} %{{content_type}}"),
    ];
    all.extend_from_slice(args);
    let out = curl_output(&all, auth);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once(MARK).unwrap_or((&text, "000 "));
    let (code, content_type) = tail.split_once(' ').unwrap_or((tail, ""));
    Reply {
        status: code.trim().parse().unwrap_or(0),
        content_type: content_type.trim().to_string(),
        body: body.to_string(),
        curl_exit: out.status.code().unwrap_or(-1),
    }
}

/// Runs curl with `args` to its end; the credentials go in on stdin (`-K -`), never in argv.
pub fn curl_output(args: &[String], auth: Option<(&str, &str)>) -> std::process::Output {
    let mut child = Command::new("curl")
        .args(["-K", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let config = auth
        .map(|(u, k)| format!("user = \"{u}:{k}\"\n"))
        .unwrap_or_default();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The form fields of the tutorial's step 2, in its order (`key`, `filename` and the file follow).
pub const TUTORIAL_FIELDS: [&str; 7] = [
    "acl",
    "success_action_status",
    "policy",
    "x-amz-credential",
    "x-amz-algorithm",
    "x-amz-date",
    "x-amz-signature",
];

/// The fields of a step-1 answer in the tutorial's order, `key` filled in and `filename` added.
pub fn tutorial_fields(form: &Value, key: &str, filename: &str) -> Vec<(String, String)> {
    let fields = &form["data"]["fields"];
    let text = |name: &str| match &fields[name] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out: Vec<(String, String)> = TUTORIAL_FIELDS
        .iter()
        .map(|n| (n.to_string(), text(n)))
        .collect();
    out.push(("key".into(), key.into()));
    out.push(("filename".into(), filename.into()));
    out
}

/// Step 2 with curl: the fields in order as plain strings, then the file.
pub fn upload(
    url: &str,
    fields: &[(String, String)],
    file: &std::path::Path,
    after_file: &[(String, String)],
) -> Reply {
    let mut args = Vec::new();
    for (name, value) in fields {
        args.push("--form-string".to_string());
        args.push(format!("{name}={value}"));
    }
    args.push("--form".to_string());
    args.push(format!("file=@{}", file.display()));
    for (name, value) in after_file {
        args.push("--form-string".to_string());
        args.push(format!("{name}={value}"));
    }
    args.push(url.to_string());
    curl(&args, None)
}

/// The key of the tutorial: `<contact>/<timestamp>/<filename>`.
pub fn tutorial_key(form: &Value, contact_id: &str, filename: &str) -> String {
    let pattern = form["data"]["fields"]["x-ignore-pattern"].as_str().unwrap();
    assert_eq!(pattern, format!("{contact_id}/__timestamp__/${{filename}}"));
    pattern
        .replace("__timestamp__", &form["timestamp"].to_string())
        .replace("${filename}", filename)
}
