//! What a person sees: help, completions, the demo, JSON documents of the documented shape,
//! and logs that never hold a secret.

use predicates::str::contains;
use serde_json::Value;

use crate::common::bin;
use crate::common::emulator::Emulator;
use crate::run::sample_copy;

/// The JSON type of each documented key (docs/); a document must have exactly these keys.
fn assert_shape(doc: &Value, shape: &[(&str, &str)], what: &str) {
    let object = doc
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {doc}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut documented: Vec<&str> = shape.iter().map(|(k, _)| *k).collect();
    keys.sort();
    documented.sort();
    assert_eq!(keys, documented, "{what}: keys differ from the docs");
    for (key, kind) in shape {
        let v = &object[*key];
        let ok = match *kind {
            "string" => v.is_string(),
            "string|null" => v.is_string() || v.is_null(),
            "integer" => v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            "object|null" => v.is_object() || v.is_null(),
            other => panic!("unknown kind {other}"),
        };
        assert!(ok, "{what}: {key} should be {kind}, is {v}");
    }
}

#[test]
fn json_documents_have_the_documented_shape() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();

    let out = bin()
        .args(["check", "--json", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_shape(
        &check,
        &[
            ("manifest", "string"),
            ("valid", "boolean"),
            ("lookups", "object"),
            ("records", "object"),
            ("quota", "object"),
            ("summary", "object"),
            ("problems", "array"),
        ],
        "check",
    );
    assert_shape(
        &check["summary"],
        &[
            ("rows", "integer"),
            ("valid", "integer"),
            ("invalid", "integer"),
            ("errors", "integer"),
            ("warnings", "integer"),
            ("files_to_upload", "integer"),
            ("bytes_to_upload", "integer"),
            ("largest_file", "object|null"),
            ("links_to_attach", "integer"),
        ],
        "check.summary",
    );

    let out = emu
        .run_cmd(&manifest)
        .args(["--json", "--dry-run"])
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_shape(
        &plan,
        &[
            ("manifest", "string"),
            ("state", "string"),
            ("dry_run", "boolean"),
            ("to_upload", "integer"),
            ("to_attach", "integer"),
            ("links_to_attach", "integer"),
            ("to_verify", "integer"),
            ("to_pin", "integer"),
            ("already_done", "integer"),
            ("failed_permanent", "integer"),
            ("rejected", "integer"),
            ("contacts_to_look_up", "integer"),
            ("bytes_to_upload", "integer"),
            ("notes_to_create", "integer"),
            ("api_calls", "integer"),
            ("estimated_seconds", "number"),
            ("error", "string|null"),
            ("exit_code", "integer"),
        ],
        "run --dry-run",
    );

    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_shape(
        &run,
        &[
            ("manifest", "string"),
            ("state", "string"),
            ("rows", "integer"),
            ("done_before", "integer"),
            ("done_now", "integer"),
            ("links_attached", "integer"),
            ("failed_permanent", "integer"),
            ("failed_retryable", "integer"),
            ("rejected", "integer"),
            ("not_started", "integer"),
            ("removed", "integer"),
            ("changed_since_upload", "array"),
            ("failures", "array"),
            ("contacts_by_email", "integer"),
            ("contacts_resolved", "integer"),
            ("contacts_known", "integer"),
            ("contacts_not_found", "integer"),
            ("contacts_ambiguous", "integer"),
            ("bytes_uploaded", "integer"),
            ("elapsed_seconds", "number"),
            ("api_calls", "integer"),
            ("retries", "integer"),
            ("throttles", "integer"),
            ("notes_created", "integer"),
            ("notes_adopted", "integer"),
            ("pinned", "integer"),
            ("forms_fetched", "integer"),
            ("uploads_on_reused_forms", "integer"),
            ("form_reuse", "string"),
            ("form_reuse_turned_off", "string|null"),
            ("stopped", "string|null"),
            ("exit_code", "integer"),
        ],
        "run",
    );
    assert_eq!(run["done_now"], 20);

    let out = bin()
        .args(["status", "--json"])
        .arg(&manifest)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_shape(
        &status,
        &[
            ("state", "string"),
            ("manifest", "string|null"),
            ("rows", "integer"),
            ("by_state", "object"),
            ("bytes_done", "integer"),
            ("bytes_to_do", "integer"),
            ("rows_by_email", "integer"),
            ("contacts_resolved", "integer"),
            ("notes", "object"),
            ("failures", "array"),
            ("runs", "array"),
        ],
        "status",
    );
    assert_shape(
        &status["runs"][0],
        &[
            ("id", "integer"),
            ("started_at", "string"),
            ("finished_at", "string|null"),
            ("exit_code", "integer"),
            ("rows_done", "integer"),
            ("rows_failed", "integer"),
            ("api_calls", "integer"),
            ("retries", "integer"),
            ("throttles", "integer"),
        ],
        "status.runs[]",
    );
}

#[test]
fn logs_never_hold_the_key_a_policy_or_a_signature() {
    let (user, key) = (
        "0123456789abcdef01234567",
        "log-test-key-91b2c3d4-never-logged",
    );
    let emu = Emulator::start_with_credentials(
        &[
            "--rate-limit",
            "off",
            "--fault-rate",
            "0.15",
            "--fault-seed",
            "2",
        ],
        Some((user, key)),
    );
    let mut logs = String::new();
    for format in ["text", "json"] {
        // A fresh copy each time, so each run does the whole job.
        let (s, manifest) = sample_copy();
        let log = s.path("run.log");
        let out = emu
            .run_cmd(&manifest)
            .env("ONEPAGECRM_USER_ID", user)
            .env("ONEPAGECRM_API_KEY", key)
            .args([
                "--rate",
                "off",
                "-vv",
                "--retries",
                "10",
                "--log-format",
                format,
                "--log-file",
            ])
            .arg(&log)
            .output()
            .unwrap();
        logs.push_str(&String::from_utf8_lossy(&out.stderr));
        logs.push_str(&String::from_utf8_lossy(&out.stdout));
        logs.push_str(&std::fs::read_to_string(&log).unwrap());
    }
    assert!(logs.contains("retry"), "the log shows the retries: {logs}");
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("\"level\"")),
        "JSON lines were written"
    );

    // A clean run at -vv (no fault, no retry) logs what --help promises, to stderr: every
    // request (service, method, path, status, milliseconds) and every row's state changes.
    let clean = Emulator::start_with_credentials(&["--rate-limit", "off"], Some((user, key)));
    let (_s, manifest) = sample_copy();
    let out = clean
        .run_cmd(&manifest)
        .env("ONEPAGECRM_USER_ID", user)
        .env("ONEPAGECRM_API_KEY", key)
        .args(["--rate", "off", "-vv"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let count = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
    let rows = 20;
    // One step 1 per contact (the sample's 20 rows name 4): the quota check's form is the first
    // contact's, and each contact's form carries its files.
    assert_eq!(
        count("API GET /api/v3/attachments/s3_form -> 200 in "),
        4,
        "{stderr}"
    );
    assert_eq!(count("S3 POST /"), rows, "{stderr}");
    assert_eq!(
        count("API POST /api/v3/attachments -> 201 in "),
        rows,
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .filter(|l| l.contains(" -> "))
            .all(|l| l.contains(" ms") && !l.contains('?')),
        "request lines carry milliseconds and no query: {stderr}"
    );
    for state in [
        "started (upload)",
        "now uploading",
        // The upload's ETag is recorded with `attaching`, in one write.
        "now attaching",
        "now done",
        "finished: done",
    ] {
        assert_eq!(count(state), rows, "{state}: {stderr}");
    }
    assert!(
        stderr.contains("row{line=21}: API POST /api/v3/attachments -> 201"),
        "requests name their row: {stderr}"
    );
    logs.push_str(&stderr);
    logs.push_str(&String::from_utf8_lossy(&out.stdout));
    assert!(!logs.contains(key), "the API key is in the logs");
    // A policy is base64 JSON starting with {"expiration": ...
    assert!(
        !logs.contains("eyJleHBpcmF0aW9u"),
        "a policy is in the logs"
    );
    assert!(
        !logs.to_ascii_lowercase().contains("x-amz-signature"),
        "a signature field is in the logs"
    );
    let hex64 = logs
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|w| w.len() == 64);
    assert!(!hex64, "something like a signature is in the logs");
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    use clap::CommandFactory;
    let cli = opcrm_import::cli::Cli::command();
    let subs: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(subs.len() >= 10, "{subs:?}");
    for sub in &subs {
        // Each says what its exit codes mean, and the commands that call the API which variables
        // they read.
        let help = bin().args([sub.as_str(), "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("Exit codes: 0 "), "{sub}: {help}");
        if ["check", "run", "undo", "verify"].contains(&sub.as_str()) {
            for var in [
                "ONEPAGECRM_USER_ID",
                "ONEPAGECRM_API_KEY",
                "ONEPAGECRM_API_URL",
            ] {
                assert!(help.contains(var), "{sub}: {var}: {help}");
            }
        }
        assert!(
            !help.contains("[`"),
            "{sub}: a rustdoc link in the help: {help}"
        );
        bin()
            .args([sub, "--help"])
            .assert()
            .code(0)
            .stdout(contains("Example: opcrm-import"));
    }
}

#[test]
fn completions_for_each_shell() {
    bin()
        .args(["completions", "bash"])
        .assert()
        .code(0)
        .stdout(contains("_opcrm__import()"));
    bin()
        .args(["completions", "zsh"])
        .assert()
        .code(0)
        .stdout(contains("#compdef opcrm-import"));
    bin()
        .args(["completions", "fish"])
        .assert()
        .code(0)
        .stdout(contains("complete -c opcrm-import"));
}

#[test]
fn demo_runs_twice_and_the_second_run_sends_nothing() {
    let out = bin()
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .timeout(std::time::Duration::from_secs(180))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // The sample by id, then the export from another CRM (contacts by email), each run twice.
    assert!(stdout.contains("done in this run:   20"), "{stdout}");
    let from_crm = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/from-another-crm.csv"),
    )
    .unwrap();
    // CSV records, not lines: a note text may hold a newline.
    let rows = csv::Reader::from_reader(from_crm.as_bytes())
        .records()
        .count();
    assert!(
        stdout.contains(&format!("done in this run:   {rows}")),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches(
                "in the first run (its API calls, and one S3 upload a file) and 0 in the second"
            )
            .count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{n} attachments, {n} stored objects",
            n = 20 + rows
        )),
        "{stdout}"
    );
}

#[test]
fn man_prints_the_page_of_every_command_or_writes_one_each() {
    use clap::CommandFactory;
    let out = bin().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") && page.contains(".TH opcrm-import 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    bin()
        .args(["man", "--dir"])
        .arg(dir.path().join("man1"))
        .assert()
        .code(0);
    for sub in opcrm_import::cli::Cli::command().get_subcommands() {
        let page = dir
            .path()
            .join(format!("man1/opcrm-import-{}.1", sub.get_name()));
        let text = std::fs::read_to_string(&page).unwrap_or_default();
        assert!(
            text.contains("Example: opcrm"),
            "{}: {text}",
            page.display()
        );
    }
}
