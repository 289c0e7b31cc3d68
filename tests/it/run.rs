//! `opcrm-import run` against the emulator: exactly once, resume from every state, faults,
//! throttling, quota, credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use opcrm_import::checkpoint::{self, StateFile, Transition};
use opcrm_import::manifest::ReadOptions;
use predicates::str::contains;
use serde_json::{Value, json};

use crate::common::emulator::{API_KEY, Emulator, USER_ID, tutorial_fields, tutorial_key, upload};
use crate::common::{Scratch, samples};

/// A copy of `samples/manifest.csv` and its files in a scratch folder (the state file goes there).
pub fn sample_copy() -> (Scratch, PathBuf) {
    let s = Scratch::new();
    for entry in std::fs::read_dir(samples().join("files")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        std::fs::create_dir_all(s.path("files")).unwrap();
        std::fs::copy(entry.path(), s.path("files").join(name)).unwrap();
    }
    let manifest = s.path("manifest.csv");
    std::fs::copy(samples().join("manifest.csv"), &manifest).unwrap();
    (s, manifest)
}

/// A manifest row as the library reads it, with its file's path.
pub struct MRow {
    row: opcrm_import::manifest::Row,
    pub path: PathBuf,
}

impl std::ops::Deref for MRow {
    type Target = opcrm_import::manifest::Row;
    fn deref(&self) -> &Self::Target {
        &self.row
    }
}

pub fn manifest_rows(manifest: &Path) -> Vec<MRow> {
    let m = opcrm_import::manifest::read(manifest, ReadOptions::default());
    m.rows
        .iter()
        .map(|row| MRow {
            path: m.path_of(row),
            row: row.clone(),
        })
        .collect()
}

pub fn md5_hex(path: &Path) -> String {
    hex::encode(Md5::digest(std::fs::read(path).unwrap()))
}

/// Every manifest row has exactly one attachment, on its record, with its name, size and MD5;
/// no attachment lacks a row.
pub fn assert_exactly_once(state: &Value, manifest: &Path) {
    let attachments = state["attachments"].as_array().unwrap();
    let rows = manifest_rows(manifest);
    let mut used = vec![false; attachments.len()];
    for row in &rows {
        let matching: Vec<usize> = attachments
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a["reference_id"] == row.reference_id.as_str()
                    && a["reference_type"] == row.reference_type.unwrap().as_str()
                    && a["contact_id"] == row.contact_id.as_str()
                    && a["filename"] == row.name.as_str()
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "line {}: {} attachments for {}",
            row.line,
            matching.len(),
            row.file
        );
        let a = &attachments[matching[0]];
        assert_eq!(
            a["size"],
            std::fs::metadata(&row.path).unwrap().len(),
            "line {}",
            row.line
        );
        assert_eq!(a["md5"], md5_hex(&row.path).as_str(), "line {}", row.line);
        used[matching[0]] = true;
    }
    assert!(
        used.iter().all(|u| *u),
        "attachments without a manifest row: {}",
        attachments.len() - rows.len()
    );
}

fn requests(state: &Value) -> HashMap<String, u64> {
    state["requests"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

#[test]
fn sample_manifest_end_to_end_exactly_once_and_rerun_sends_nothing() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0)
        .stdout(contains("done in this run:   20"));
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    assert!(
        s.path("manifest.opcrm.sqlite").exists(),
        "the state file sits beside the manifest"
    );
    // Every key is unique and of the documented shape.
    let keys: std::collections::HashSet<&str> = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 20);

    let before = requests(&state);
    emu.run_cmd(&manifest)
        .assert()
        .code(0)
        .stdout(contains("done before:        20"));
    assert_eq!(
        requests(&emu.state()),
        before,
        "a rerun of a done manifest makes no request"
    );
}

/// Records the manifest's rows in a fresh state file, as a run does before its first upload.
fn record(manifest: &Path) -> PathBuf {
    let checked = opcrm_import::preflight::check(manifest, ReadOptions::default());
    let rows = opcrm_import::run::manifest_rows(&checked);
    let state = opcrm_import::run::default_state_path(manifest);
    let file = StateFile::open(&state).unwrap();
    file.record_rows(rows).wait().unwrap();
    state
}

fn set(state: &Path, line: u64, transitions: &[Transition]) {
    let file = StateFile::open(state).unwrap();
    let row = file
        .load_rows()
        .wait()
        .unwrap()
        .into_iter()
        .find(|r| r.line == line)
        .unwrap();
    for t in transitions {
        file.transition(&row, t.clone()).wait().unwrap();
    }
}

/// Steps 1 and 2 for a manifest row, by hand; returns the key.
fn stage_row(emu: &Emulator, row: &MRow) -> String {
    let form = emu.form(&row.contact_id);
    let key = tutorial_key(&form, &row.contact_id, &row.name);
    let reply = upload(
        &emu.s3,
        &tutorial_fields(&form, &key, &row.name),
        &row.path,
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    key
}

fn attach_row(emu: &Emulator, row: &MRow, key: &str) {
    let body = json!({
        "reference_id": row.reference_id, "reference_type": row.reference_type.unwrap().as_str(),
        "contact_id": row.contact_id, "name": row.name, "key": key,
        "size": std::fs::metadata(&row.path).unwrap().len(),
    });
    assert_eq!(emu.post("/attachments", &body).status, 201);
}

#[test]
fn resume_from_every_state_attaches_each_row_once() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();
    let rows = manifest_rows(&manifest);
    let state = record(&manifest);

    // Line 2: killed during step 2 (a key recorded, nothing stored).
    set(
        &state,
        2,
        &[Transition::Uploading {
            s3_key: format!("{}/1/never-sent.pdf", rows[0].contact_id),
        }],
    );
    // Line 3: uploaded, not attached.
    let key3 = stage_row(&emu, &rows[1]);
    set(
        &state,
        3,
        &[
            Transition::Uploading {
                s3_key: key3.clone(),
            },
            Transition::Uploaded { etag: "x".into() },
        ],
    );
    // Line 4: killed during step 3, before the API acted.
    let key4 = stage_row(&emu, &rows[2]);
    set(
        &state,
        4,
        &[
            Transition::Uploading {
                s3_key: key4.clone(),
            },
            Transition::Attaching {
                etag: None,
                snapshot_gen: None,
            },
        ],
    );
    // Line 5: killed during step 3, after the API acted (its answer lost).
    let key5 = stage_row(&emu, &rows[3]);
    attach_row(&emu, &rows[3], &key5);
    set(
        &state,
        5,
        &[
            Transition::Uploading {
                s3_key: key5.clone(),
            },
            Transition::Attaching {
                etag: None,
                snapshot_gen: None,
            },
        ],
    );

    let before = requests(&emu.state());
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--json"])
        .assert()
        .code(0);
    let after = emu.state();
    assert_exactly_once(&after, &manifest);
    let key_of = |line: usize| {
        let row = &rows[line - 2];
        after["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["reference_id"] == row.reference_id.as_str() && a["filename"] == row.name.as_str()
            })
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(
        key_of(2),
        format!("{}/1/never-sent.pdf", rows[0].contact_id),
        "line 2 started over"
    );
    assert_eq!(key_of(3), key3, "line 3 attached the stored key");
    assert_eq!(
        key_of(4),
        key4,
        "line 4 attached the stored key after checking"
    );
    assert_eq!(
        key_of(5),
        key5,
        "line 5 was found attached and not attached again"
    );
    let delta = |k: &str| {
        requests(&after).get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
    };
    // 20 rows: 17 from step 1, lines 3-5 skip steps 1-2, line 5 skips step 3. One form for each
    // contact of the 17 (the quota check's is the first one's; each contact's form carries its
    // files).
    assert_eq!(delta("POST /{bucket}/ 201"), 17);
    assert_eq!(delta("POST /api/v3/attachments 201"), 19);
    let contacts: std::collections::HashSet<&str> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !(1..=3).contains(i))
        .map(|(_, r)| r.contact_id.as_str())
        .collect();
    assert_eq!(
        delta("GET /api/v3/attachments/s3_form 200"),
        contacts.len() as u64
    );

    // The state file says done for all, with line 5's attachment id adopted.
    let file = StateFile::open(&state).unwrap();
    let stored = file.load_rows().wait().unwrap();
    assert!(stored.iter().all(|r| r.state == checkpoint::RowState::Done));
    assert!(stored.iter().all(|r| r.attachment_id.is_some()));
}

#[test]
fn faults_and_dropped_connections_end_with_every_row_once() {
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--fault-rate",
        "0.2",
        "--drop-rate",
        "0.1",
        "--fault-seed",
        "11",
    ]);
    let (_s, manifest) = sample_copy();
    let mut codes = Vec::new();
    for _ in 0..8 {
        let out = emu
            .run_cmd(&manifest)
            .args(["--rate", "off", "--json"])
            .output()
            .unwrap();
        let code = out.status.code().unwrap();
        codes.push(code);
        assert!(
            matches!(code, 0 | 4),
            "exit {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if code == 0 {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&0), "runs ended {codes:?}");
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    let dropped: u64 = requests(&state)
        .iter()
        .filter(|(k, _)| k.ends_with("dropped"))
        .map(|(_, v)| v)
        .sum();
    let failed: u64 = requests(&state)
        .iter()
        .filter(|(k, _)| k.ends_with(" 500") || k.ends_with(" 503"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        dropped > 0 && failed > 0,
        "the faults happened: {dropped} dropped, {failed} failed"
    );
}

#[test]
fn default_client_settings_draw_no_throttle_over_100_rows() {
    let s = Scratch::new();
    let seed = s.file("seed.json", r#"{"generate": {"contacts": 4, "notes": 25}}"#);
    let mut manifest = String::from("file,contact_id,reference_type,reference_id\n");
    for i in 0..100u64 {
        s.file(&format!("files/{i}.txt"), format!("file {i}\n"));
        let (k, j) = (i % 4, i / 4);
        manifest.push_str(&format!(
            "files/{i}.txt,cc{k:022x},note,a0{k:010x}{j:012x}\n"
        ));
    }
    let manifest = s.manifest(manifest);
    let emu = Emulator::start_seeded(&seed, &[], None);
    emu.run_cmd(&manifest)
        .assert()
        .code(0)
        .stdout(contains("done in this run:   100"));
    let state = emu.state();
    assert_eq!(state["throttled"], 0, "{:?}", state["requests"]);
    assert_eq!(state["attachments"].as_array().unwrap().len(), 100);
}

#[test]
fn too_little_storage_stops_before_anything_is_uploaded() {
    let s = Scratch::new();
    let mut seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    seed["storage_left"] = json!(1_000_000);
    let seed_path = s.file("seed.json", seed.to_string());
    let emu = Emulator::start_seeded(&seed_path, &["--rate-limit", "off"], None);
    let (_d, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .assert()
        .code(3)
        .stderr(contains(
            "need 2.2 MiB (2355532 bytes) but the account has 976.6 KiB (1000000 bytes)",
        ))
        .stderr(contains("nothing was uploaded"));
    let state = emu.state();
    assert_eq!(state["objects"].as_array().unwrap().len(), 0);
    assert_eq!(
        requests(&state).get("GET /api/v3/attachments/s3_form 200"),
        Some(&1)
    );
}

#[test]
fn check_asks_the_api_for_the_storage_left() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();
    let check = || {
        let mut cmd = emu.cmd();
        cmd.arg("check").arg(&manifest);
        cmd
    };
    check()
        .assert()
        .code(0)
        .stdout(contains("Quota:     enough: 199.9 GiB of storage left"));
    let out = check().arg("--json").output().unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["quota"]["status"], "checked");
    assert_eq!(doc["quota"]["bytes_to_upload"], 2355532);
    assert_eq!(doc["quota"]["enough"], true);
    assert_eq!(
        requests(&emu.state()).get("GET /api/v3/attachments/s3_form 200"),
        Some(&2)
    );
    check()
        .arg("--offline")
        .assert()
        .code(0)
        .stdout(contains("not checked (--offline)"));
    assert_eq!(
        requests(&emu.state()).get("GET /api/v3/attachments/s3_form 200"),
        Some(&2)
    );

    let s = Scratch::new();
    let mut seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    seed["storage_left"] = json!(2_000_000);
    let small = Emulator::start_seeded(&s.file("seed.json", seed.to_string()), &[], None);
    small
        .cmd()
        .arg("check")
        .arg(&manifest)
        .assert()
        .code(3)
        .stdout(contains("NOT ENOUGH: the files need 2.2 MiB (2355532 bytes) and the account has 1.9 MiB (2000000 bytes) left"));
}

#[test]
fn wrong_api_key_stops_the_run_and_never_shows_the_key() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    let secret = "wrong-key-7f3a9c1e-do-not-print";
    let out = emu
        .run_cmd(&manifest)
        .env("ONEPAGECRM_API_KEY", secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(!stdout.contains(secret) && !stderr.contains(secret));
    assert_eq!(emu.state()["objects"].as_array().unwrap().len(), 0);
    let state_file = std::fs::read(s.path("manifest.opcrm.sqlite")).unwrap();
    assert!(
        !state_file
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );
}

#[test]
fn api_key_never_reaches_output_or_state_file_on_success() {
    let (user, key) = (
        "0123456789abcdef01234567",
        "the-real-key-4c2e8b7a-keep-hidden",
    );
    let emu = Emulator::start_with_credentials(&["--rate-limit", "off"], Some((user, key)));
    let (s, manifest) = sample_copy();
    let out = emu
        .run_cmd(&manifest)
        .env("ONEPAGECRM_USER_ID", user)
        .env("ONEPAGECRM_API_KEY", key)
        .env("OPCRM_LOG", "debug")
        .args(["--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (what, bytes) in [("stdout", out.stdout), ("stderr", out.stderr)] {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(key),
            "the key is in {what}"
        );
    }
    for file in ["manifest.opcrm.sqlite", "manifest.opcrm.sqlite-wal"] {
        if let Ok(bytes) = std::fs::read(s.path(file)) {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "the key is in {file}"
            );
        }
    }
}

#[test]
fn two_files_with_one_name_for_one_contact_get_two_keys() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    let c = &seed["contacts"][0];
    let (contact, note) = (
        c["id"].as_str().unwrap(),
        c["notes"][0]["id"].as_str().unwrap(),
    );
    let s = Scratch::new();
    s.file("a/report.pdf", "first report");
    s.file("b/report.pdf", "second report, longer");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_id\na/report.pdf,{contact},{note}\nb/report.pdf,{contact},{note}\n"
    ));
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2);
    assert_ne!(attachments[0]["key"], attachments[1]["key"]);
    let mut sizes: Vec<u64> = attachments
        .iter()
        .map(|a| a["size"].as_u64().unwrap())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [12, 21]);
    assert_eq!(
        state["objects"].as_array().unwrap().len(),
        2,
        "neither upload overwrote the other"
    );
}

#[test]
fn an_expired_form_is_renewed() {
    // The first three uploads arrive late: each moves the emulator's clock past a form's life
    // before S3 judges it, so their forms (and any other handed out before) have expired.
    let emu = Emulator::with_faults(&["POST /{bucket}/:1-3:late"]);
    let (_s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "8", "--retries", "20"])
        .assert()
        .code(0);
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    assert!(
        requests(&state)
            .get("POST /{bucket}/ 403")
            .copied()
            .unwrap_or(0)
            > 0,
        "no form expired: {:?}",
        state["requests"]
    );
}

#[test]
fn a_form_the_clock_has_moved_past_expires_and_run_renews_it_without_waiting() {
    // The upload below is the bucket's first request; the run's first upload is its second.
    let emu = Emulator::with_faults(&["POST /{bucket}/:2:late"]);
    // A form lives an hour (`--form-ttl` 3600): the clock goes a second past that.
    let ada = "ca929443ed449d7679121de5";
    let logo = samples().join("files/logo.png");
    let form = emu.form(ada);
    let fields = tutorial_fields(&form, &tutorial_key(&form, ada, "logo.png"), "logo.png");
    assert_eq!(emu.advance_clock(3601)["ahead_seconds"], 3601);
    let reply = upload(&emu.s3, &fields, &logo, &[]);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(
        reply.body.contains("<Code>AccessDenied</Code>") && reply.body.contains("Policy expired"),
        "{}",
        reply.body
    );

    // In a run, the first upload arrives after the clock moved past its form's life (a `late`
    // fault): S3 refuses it the same way, and the run gets a new form and uploads again.
    let (_s, manifest) = sample_copy();
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "1", "-v"])
        .assert()
        .code(0);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("the upload form expired; getting a new one"),
        "{stderr}"
    );
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    let requests = requests(&state);
    // The one refused upload above, and the run's one.
    assert_eq!(
        requests.get("POST /{bucket}/ 403"),
        Some(&2),
        "{requests:?}"
    );
    // One form above; the run's: one per contact (the sample's 20 rows name 4: the quota
    // check's is the first contact's, and each contact's form carries its files), one renewed.
    assert_eq!(
        requests.get("GET /api/v3/attachments/s3_form 200"),
        Some(&(1 + 4 + 1)),
        "{requests:?}"
    );
    assert_eq!(emu.advance_clock(0)["ahead_seconds"], 3601 + 3601);
}

#[test]
fn invalid_manifest_sends_nothing_unless_skip_invalid() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("files/missing.pdf,ca929443ed449d7679121de5,note,064132394d9b497f536b2bb7,\n");
    std::fs::write(&manifest, text).unwrap();
    emu.run_cmd(&manifest)
        .assert()
        .code(2)
        .stderr(contains(
            "line 22, column file: \"files/missing.pdf\" does not exist",
        ))
        .stderr(contains("nothing was uploaded"));
    assert!(requests(&emu.state()).is_empty());
    assert!(!s.path("manifest.opcrm.sqlite").exists());

    emu.run_cmd(&manifest)
        .arg("--skip-invalid")
        .args(["--rate", "off"])
        .assert()
        .code(1)
        .stdout(contains("rejected (invalid): 1"));
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 20);
}

#[test]
fn dry_run_plans_without_uploading() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .arg("--dry-run")
        .assert()
        .code(0)
        .stdout(contains("to upload (all three steps): 20"))
        // An attach per row, and a form per contact (4): each contact's form carries its files.
        .stdout(contains("API calls: 24, about "))
        .stdout(contains("storage quota: enough"));
    let state = emu.state();
    assert_eq!(
        requests(&state).values().sum::<u64>(),
        1,
        "only the quota check: {:?}",
        state["requests"]
    );
    assert!(
        !s.path("manifest.opcrm.sqlite").exists(),
        "a dry run writes no state file"
    );
}

#[test]
fn plain_http_to_another_host_is_refused() {
    let (_s, manifest) = sample_copy();
    crate::common::bin()
        .env("ONEPAGECRM_API_URL", "http://192.0.2.10/api/v3")
        .env("ONEPAGECRM_USER_ID", USER_ID)
        .env("ONEPAGECRM_API_KEY", API_KEY)
        .arg("run")
        .arg(&manifest)
        .assert()
        .code(3)
        .stderr(contains("plain http to a host that is not loopback"));
}

#[test]
fn missing_credentials_stop_before_anything_is_sent() {
    let (_s, manifest) = sample_copy();
    crate::common::bin()
        .arg("run")
        .arg(&manifest)
        .assert()
        .code(3)
        .stderr(contains("set ONEPAGECRM_USER_ID and ONEPAGECRM_API_KEY"));
}
