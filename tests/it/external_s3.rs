//! The emulator in external-S3 mode against s3s-fs, an S3 server we did not write that checks
//! the signature, the expiration and every condition of a POST policy: what the tool sends must
//! pass there too, and every stored object must be the file's very bytes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use predicates::str::contains;
use serde_json::Value;

use crate::common::emulator::{Emulator, curl};
use crate::common::s3s::{self, Answer, Quirks, S3sFs};
use crate::common::{Scratch, bin, samples};
use crate::run::{assert_exactly_once, manifest_rows, sample_copy};

/// Each row's attachment names an object in s3s-fs holding exactly the row's file, and s3s-fs
/// holds nothing else.
fn assert_objects_are_the_files(server: &S3sFs, state: &Value, manifest: &Path) {
    let objects: std::collections::HashMap<String, Vec<u8>> =
        server.objects().into_iter().collect();
    let attachments = state["attachments"].as_array().unwrap();
    let rows = manifest_rows(manifest);
    assert_eq!(
        objects.len(),
        rows.len(),
        "objects in s3s-fs: {:?}",
        objects.keys().collect::<Vec<_>>()
    );
    for row in &rows {
        let attachment = attachments
            .iter()
            .find(|a| {
                a["reference_id"] == row.reference_id.as_str() && a["filename"] == row.name.as_str()
            })
            .unwrap_or_else(|| panic!("line {}: no attachment", row.line));
        let key = attachment["key"].as_str().unwrap();
        assert!(
            key.starts_with(&format!("{}/", row.contact_id)) && key.ends_with(&row.name),
            "line {}: key {key:?}",
            row.line
        );
        let stored = objects
            .get(key)
            .unwrap_or_else(|| panic!("line {}: s3s-fs has no object {key:?}", row.line));
        assert!(
            *stored == std::fs::read(&row.path).unwrap(),
            "line {}: the object {key:?} differs from {}",
            row.line,
            row.path.display()
        );
    }
}

/// Runs `manifest` to its end (`run --rate off` and `args`): exit 0 with `rows` rows done in this
/// run, and every row attached once with its file's very bytes in s3s-fs. Returns the emulator's
/// state and the run's stderr.
fn run_to_the_end(
    emu: &Emulator,
    server: &S3sFs,
    manifest: &Path,
    rows: usize,
    args: &[&str],
) -> (Value, String) {
    let assert = emu
        .run_cmd(manifest)
        .args(["--rate", "off"])
        .args(args)
        .assert()
        .code(0)
        .stdout(contains(format!("done in this run:   {rows}")));
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    let state = emu.state();
    assert_exactly_once(&state, manifest);
    assert_objects_are_the_files(server, &state, manifest);
    (state, stderr)
}

/// A manifest of one file, `files/NAME` holding `bytes`, on a note of the samples' first contact.
fn one_file_manifest(s: &Scratch, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    s.file(&format!("files/{name}"), bytes);
    s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/{name},ca929443ed449d7679121de5,note,064132394d9b497f536b2bb7,\n"
    ))
}

fn forms_given(state: &Value) -> u64 {
    state["requests"]["GET /api/v3/attachments/s3_form 200"]
        .as_u64()
        .unwrap_or(0)
}

/// Bytes no text file has: every value, and long runs of `\r`, `\n` and `-` as in a boundary.
fn awkward_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match (i / 4096) % 4 {
                0 => b"\r\n--"[i % 4],
                _ => x as u8,
            }
        })
        .collect()
}

#[test]
fn sample_manifest_lands_in_s3s_fs_once_and_byte_identical() {
    let server = S3sFs::start();
    let emu = Emulator::start_external(&server, &[]);
    let (_s, manifest) = sample_copy();
    let (state, _) = run_to_the_end(&emu, &server, &manifest, 20, &[]);
    assert_eq!(
        state["requests"]["POST /api/v3/attachments 201"].as_u64(),
        Some(20),
        "{}",
        state["requests"]
    );
    // s3s-fs takes a reused form as it takes a fresh one: one form per contact (the sample's 20
    // rows name 4) carried every file, and every object holds its file's bytes (checked above).
    assert_eq!(forms_given(&state), 4, "{}", state["requests"]);

    // The rerun sends nothing.
    let (again, _) = run_to_the_end(&emu, &server, &manifest, 0, &[]);
    assert_eq!(again["requests"], state["requests"]);
}

#[test]
fn reused_forms_carry_many_files_of_awkward_bytes_into_s3s_fs() {
    // 60 files over 3 contacts, each form carrying 20 uploads of bytes no text file has.
    let server = S3sFs::start();
    let emu = Emulator::start_external(&server, &[]);
    let s = Scratch::new();
    let contacts = [
        "ca929443ed449d7679121de5",
        "285b4ab0cf8624250f4313ff",
        "af16db6b4f2e2bc045adacd3",
    ];
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    let mut manifest = String::from("file,contact_id,reference_type,reference_id,name\n");
    for i in 0..60 {
        let contact = contacts[i % 3];
        let note = seed["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == contact)
            .and_then(|c| c["notes"][0]["id"].as_str())
            .unwrap();
        s.file(&format!("files/f{i}.bin"), awkward_bytes(100 + i * 97));
        manifest.push_str(&format!(
            "files/f{i}.bin,{contact},note,{note},part {i}.bin\n"
        ));
    }
    let manifest = s.manifest(manifest);
    let (state, _) = run_to_the_end(&emu, &server, &manifest, 60, &[]);
    assert_eq!(forms_given(&state), 3, "{}", state["requests"]);
}

#[test]
fn answers_of_other_servers_are_read_alike() {
    // An absolute Location and a quoted `<Etag>`; then no body and no ETag at all, where
    // step 3 is the check (the API refuses an attachment unless the object has the stated size).
    for answer in [Answer::Rewritten, Answer::Empty] {
        let server = S3sFs::start_with(Quirks { answer });
        let emu = Emulator::start_external(&server, &[]);
        let (_s, manifest) = sample_copy();
        run_to_the_end(&emu, &server, &manifest, 20, &[]);
    }

    // That ETag is read, not skipped: one that is not the file's MD5 fails the upload.
    let server = S3sFs::start_with(Quirks {
        answer: Answer::WrongEtag,
    });
    let emu = Emulator::start_external(&server, &[]);
    let s = Scratch::new();
    let manifest = one_file_manifest(&s, "one.txt", "one file\n");
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0"])
        .assert()
        .code(4)
        .stderr(contains(
            "S3's ETag is 0123456789abcdef0123456789abcdef but the file's MD5 is",
        ));
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 0);
}

#[test]
fn file_names_with_quotes_non_ascii_spaces_percent_hash_and_plus() {
    let server = S3sFs::start();
    let emu = Emulator::start_external(&server, &[]);
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    let names = [
        "Report \"final\".txt",
        "Angebot Müller Straße.pdf",
        "meeting  notes 2024.txt",
        "100% done.txt",
        "#1 item.txt",
        "a+b=c.txt",
        "all \"of\" it % # + ü.bin",
    ];
    let s = Scratch::new();
    let mut manifest = String::from("file,contact_id,reference_type,reference_id,name\n");
    for (i, name) in names.iter().enumerate() {
        s.file(&format!("files/{name}"), awkward_bytes(1000 + i * 7919));
        let contact = &seed["contacts"][i % 4];
        manifest.push_str(&format!(
            "\"files/{}\",{},note,{},\n",
            name.replace('"', "\"\""),
            contact["id"].as_str().unwrap(),
            contact["notes"][0]["id"].as_str().unwrap()
        ));
    }
    let manifest = s.manifest(manifest);
    run_to_the_end(&emu, &server, &manifest, names.len(), &[]);
}

#[test]
fn an_expired_form_is_renewed_and_the_file_uploaded() {
    // s3s-fs judges a form by its own clock, which the emulator's cannot move: instead the
    // emulator hands out the first three forms after the quota check's already expired, a
    // second before now (s3s-fs answers 403 AccessDenied "Request has expired"). The renewed
    // ones live an hour, so none expires twice however slow the machine.
    let expired = 3;
    let server = S3sFs::start();
    let emu = Emulator::start_external(
        &server,
        &["--fault-at", "GET /api/v3/attachments/s3_form:2-4:expired"],
    );
    let (_s, manifest) = sample_copy();
    let (state, stderr) = run_to_the_end(&emu, &server, &manifest, 20, &["-v"]);
    assert!(
        stderr.contains("the upload form expired; getting a new one"),
        "{stderr}"
    );
    // One form per contact (the sample's 20 rows name 4; the quota check's form is the first
    // contact's and each contact's form carries its files), and one per expired form.
    assert_eq!(forms_given(&state), 4 + expired, "{}", state["requests"]);
}

#[test]
fn a_file_of_exactly_the_limit_is_accepted() {
    let server = S3sFs::start();
    let emu = Emulator::start_external(&server, &[]);
    let s = Scratch::new();
    let manifest = one_file_manifest(&s, "ten.bin", awkward_bytes(10_485_760));
    let (state, _) = run_to_the_end(&emu, &server, &manifest, 1, &[]);
    assert_eq!(state["attachments"][0]["size"], 10_485_760);
}

#[test]
fn the_emulator_clock_does_not_move_in_external_mode() {
    // s3s-fs would judge forms signed by a moved clock by its own, real one.
    let server = S3sFs::start();
    let emu = Emulator::start_external(&server, &[]);
    let reply = curl(
        &[
            "--data-binary".to_string(),
            r#"{"advance_seconds": 3601}"#.to_string(),
            format!("{}/_emulator/clock", emu.origin),
        ],
        None,
    );
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("external-S3 mode"), "{}", reply.body);
    let now = curl(&[format!("{}/_emulator/clock", emu.origin)], None).json();
    assert_eq!(now["ahead_seconds"], 0, "{now}");

    let out = bin()
        .args(["emulator", "--listen", "127.0.0.1:0", "--fault-at"])
        .arg("POST /api/v3/attachments:1:late")
        .args(server.emulator_args())
        .envs(S3sFs::envs())
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot move in external-S3 mode"),
        "{stderr}"
    );
}

#[test]
fn a_wrong_bucket_secret_or_endpoint_stops_the_emulator_with_a_clear_error() {
    let server = S3sFs::start();
    let emulator = |args: &[&str], secret: &str| {
        let mut cmd = bin();
        cmd.args(["emulator", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("OPCRM_EMULATOR_S3_ACCESS_KEY", s3s::ACCESS_KEY)
            .env("OPCRM_EMULATOR_S3_SECRET_KEY", secret)
            .timeout(Duration::from_secs(30));
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!stderr.contains(secret), "the secret shows: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
        stderr
    };
    let endpoint = server.endpoint.as_str();
    let stderr = emulator(
        &["--s3-endpoint", endpoint, "--s3-bucket", "no-such-bucket"],
        s3s::SECRET_KEY,
    );
    assert!(
        stderr.contains("has no bucket \"no-such-bucket\""),
        "{stderr}"
    );
    let stderr = emulator(
        &["--s3-endpoint", endpoint, "--s3-bucket", s3s::BUCKET],
        "not-the-secret-key",
    );
    assert!(
        stderr.contains("refused the access key and secret key"),
        "{stderr}"
    );
    let stderr = emulator(
        &[
            "--s3-endpoint",
            "http://192.0.2.1:9000",
            "--s3-bucket",
            s3s::BUCKET,
        ],
        s3s::SECRET_KEY,
    );
    assert!(stderr.contains("not on loopback"), "{stderr}");
    let stderr = emulator(&["--s3-endpoint", endpoint], s3s::SECRET_KEY);
    assert!(stderr.contains("--s3-bucket"), "{stderr}");
}
