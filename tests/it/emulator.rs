//! The emulator: the tutorial's three steps with real curl, and each refusal S3 and the API give.
//!
//! The protocol tests start the emulator with `--rate-limit off`: their curl requests are not
//! paced, and on a fast machine a dozen of them inside a second draw the default 5/10 throttle's
//! 403 (a CI run failed so). The throttle has tests of its own below.

use std::path::Path;

use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::common::emulator::{
    Emulator, Reply, TUTORIAL_FIELDS, curl, curl_output, tutorial_fields, tutorial_key, upload,
};
use crate::common::{Scratch, bin, samples};

/// The sample seed's contacts, with their records.
fn seed() -> Value {
    serde_json::from_str(&std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap())
        .unwrap()
}

struct Contact {
    id: String,
    note: String,
    deal: String,
}

fn contact(i: usize) -> Contact {
    let c = &seed()["contacts"][i];
    Contact {
        id: c["id"].as_str().unwrap().into(),
        note: c["notes"][0]["id"].as_str().unwrap().into(),
        deal: c["deals"][0]["id"].as_str().unwrap().into(),
    }
}

fn md5_hex(path: &Path) -> String {
    hex::encode(Md5::digest(std::fs::read(path).unwrap()))
}

/// Steps 1 and 2 for one file; returns the key it was stored under.
fn stage(emu: &Emulator, contact_id: &str, file: &Path) -> String {
    let form = emu.form(contact_id);
    let name = file.file_name().unwrap().to_str().unwrap();
    let key = tutorial_key(&form, contact_id, name);
    let reply = upload(
        emu.s3.as_str(),
        &tutorial_fields(&form, &key, name),
        file,
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    key
}

fn attach_body(c: &Contact, key: &str, size: u64) -> Value {
    json!({"reference_id": c.note, "reference_type": "note", "contact_id": c.id, "name": "x.bin", "key": key, "size": size})
}

fn assert_s3_error(reply: &Reply, status: u16, code: &str, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(
        reply.content_type.starts_with("application/xml"),
        "{}",
        reply.content_type
    );
    assert!(
        reply.body.contains(&format!("<Code>{code}</Code>")),
        "{}",
        reply.body
    );
    assert!(reply.body.contains(message), "{}", reply.body);
}

fn assert_api_error(reply: &Reply, status: u16, error_name: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["status"], status);
    assert_eq!(doc["error_name"], error_name, "{doc}");
    assert!(doc["message"].is_string() && doc["error_message"].is_string());
    if let Some(field) = field {
        assert!(doc["errors"][field].is_string(), "{doc}");
    }
}

#[test]
fn tutorial_three_steps_with_curl_attach_the_file() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let ada = contact(0);
    let file = samples().join("files/logo.png");

    // Step 1, as the tutorial shows it.
    let form = emu.form(&ada.id);
    assert_eq!(form["status"], 0);
    assert_eq!(form["message"], "OK");
    assert!(form["timestamp"].is_i64());
    let data = &form["data"];
    for key in ["quota", "storage_left"] {
        assert!(data[key].is_u64(), "{key}");
    }
    assert_eq!(data["url"], emu.s3.as_str());
    let fields = &data["fields"];
    assert_eq!(fields["acl"], "private");
    assert_eq!(
        fields["success_action_status"], 201,
        "a JSON number, as in the tutorial"
    );
    assert_eq!(fields["x-amz-algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(fields["key"], "");
    let names: Vec<&str> = fields
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: Vec<&str> = TUTORIAL_FIELDS
        .iter()
        .copied()
        .chain(["key", "x-ignore-pattern"])
        .collect();
    assert_eq!(names, expected);

    // Step 2: the tutorial's curl, field by field in its order, the file last.
    let key = tutorial_key(&form, &ada.id, "logo.png");
    let fields = tutorial_fields(&form, &key, "logo.png");
    let reply = upload(&emu.s3, &fields, &file, &[]);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let etag = format!("\"{}\"", md5_hex(&file));
    assert!(reply.body.contains("<PostResponse>"), "{}", reply.body);
    assert!(
        reply.body.contains(&format!("<Key>{key}</Key>")),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains(&format!("<ETag>{etag}</ETag>")),
        "{}",
        reply.body
    );

    // Step 3.
    let size = std::fs::metadata(&file).unwrap().len();
    let body = json!({"reference_id": ada.note, "reference_type": "note", "contact_id": ada.id, "name": "logo.png", "key": key, "size": size});
    let reply = emu.post("/attachments", &body);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let attachment = &reply.json()["data"]["attachment"];
    assert_eq!(attachment["filename"], "logo.png");
    assert_eq!(attachment["size"], size);
    assert_eq!(attachment["storage_provider"], "amazon");
    assert!(
        attachment.get("key").is_none(),
        "the API's attachment has no key"
    );
    let id = attachment["id"].as_str().unwrap();
    assert!(id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()));

    // The note lists it, and the emulator's state shows it with its key and MD5.
    let note = emu.get(&format!("/notes/{}", ada.note)).json();
    assert_eq!(note["data"]["note"]["attachments"][0]["id"], id);
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["key"], key.as_str());
    assert_eq!(attachments[0]["reference_id"], ada.note.as_str());
    assert_eq!(attachments[0]["md5"], md5_hex(&file));
    assert_eq!(state["objects"][0]["size"], size);
    assert_eq!(
        state["storage_left"],
        seed()["storage_left"].as_u64().unwrap() - size
    );
    assert_eq!(state["requests"]["GET /api/v3/attachments/s3_form 200"], 1);
    assert_eq!(state["requests"]["POST /{bucket}/ 201"], 1);
    assert_eq!(state["requests"]["POST /api/v3/attachments 201"], 1);

    // The stored object is byte for byte the file.
    assert_eq!(emu.object(&key), std::fs::read(&file).unwrap());
}

#[test]
fn api_refuses_missing_and_wrong_credentials_with_401_envelopes() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let path = format!(
        "{}/attachments/s3_form?contact_id={}",
        emu.api,
        contact(0).id
    );
    assert_api_error(
        &curl(std::slice::from_ref(&path), None),
        401,
        "authorization_data_not_found",
        None,
    );
    let wrong = curl(
        &[path],
        Some((crate::common::emulator::USER_ID, "not-the-key")),
    );
    assert_api_error(&wrong, 401, "invalid_auth_data", None);
    assert!(!wrong.body.contains("not-the-key"));
}

#[test]
fn s3_form_refuses_unknown_and_missing_contacts() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    assert_api_error(
        &emu.get("/attachments/s3_form?contact_id=5a1b2c3d4e5f60718293a4b5"),
        404,
        "resource_not_found",
        None,
    );
    assert_api_error(
        &emu.get("/attachments/s3_form"),
        400,
        "invalid_request_data",
        Some("contact_id"),
    );
}

fn logo() -> std::path::PathBuf {
    samples().join("files/logo.png")
}

/// Step 1 for the first sample contact: the tutorial's fields for uploading the sample logo.
fn logo_fields(emu: &Emulator) -> Vec<(String, String)> {
    let ada = contact(0);
    let form = emu.form(&ada.id);
    tutorial_fields(&form, &tutorial_key(&form, &ada.id, "logo.png"), "logo.png")
}

fn set(fields: &mut [(String, String)], name: &str, value: &str) {
    let field = fields
        .iter_mut()
        .find(|(n, _)| n == name)
        .expect("a tutorial field");
    field.1 = value.to_string();
}

#[test]
fn s3_refuses_a_bad_signature() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let mut fields = logo_fields(&emu);
    set(&mut fields, "x-amz-signature", &"0".repeat(64));
    let reply = upload(&emu.s3, &fields, &logo(), &[]);
    assert_s3_error(
        &reply,
        403,
        "AccessDenied",
        "Policy Signature does not match",
    );
    assert_eq!(emu.state()["objects"].as_array().unwrap().len(), 0);
}

#[test]
fn s3_refuses_an_expired_policy() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let fields = logo_fields(&emu);
    // The form lives an hour (`--form-ttl` 3600): the clock goes a second past that.
    emu.advance_clock(3601);
    let reply = upload(&emu.s3, &fields, &logo(), &[]);
    assert_s3_error(&reply, 403, "AccessDenied", "Policy expired");
    // A new form works.
    stage(&emu, &contact(0).id, &logo());
}

#[test]
fn the_clock_moves_forward_when_told_and_everything_dated_follows() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let ada = contact(0);
    let before = emu.form(&ada.id)["timestamp"].as_i64().unwrap();
    let key = stage(&emu, &ada.id, &logo());
    let size = std::fs::metadata(logo()).unwrap().len();
    let attached = emu.post("/attachments", &attach_body(&ada, &key, size));
    assert_eq!(attached.status, 201, "{}", attached.body);
    let url = attached.json()["data"]["attachment"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        curl(std::slice::from_ref(&url), None).status,
        200,
        "a fresh link works"
    );

    // A link lives an hour: a second past it, S3 refuses it as expired.
    let moved = emu.advance_clock(3601);
    assert_eq!(moved["ahead_seconds"], 3601, "{moved}");
    assert!(moved["unix"].as_i64().unwrap() >= before + 3601, "{moved}");
    let expired = curl(&[url], None);
    assert_eq!(expired.status, 403, "{}", expired.body);
    assert!(
        expired.body.contains("Request has expired"),
        "{}",
        expired.body
    );
    // Answers are stamped by the moved clock, and it reads back the same.
    let after = emu.form(&ada.id)["timestamp"].as_i64().unwrap();
    assert!(after >= before + 3601, "{before} then {after}");
    let now = curl(&[format!("{}/_emulator/clock", emu.origin)], None).json();
    assert_eq!(now["ahead_seconds"], 3601, "{now}");

    // Only forward, by a whole number of seconds.
    for body in [
        r#"{"advance_seconds": -5}"#,
        r#"{"advance_seconds": "1"}"#,
        "{}",
    ] {
        let reply = curl(
            &[
                "--data-binary".to_string(),
                body.to_string(),
                format!("{}/_emulator/clock", emu.origin),
            ],
            None,
        );
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(reply.body.contains("advance_seconds"), "{}", reply.body);
    }
}

#[test]
fn s3_refuses_a_failed_exact_match_condition() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let mut fields = logo_fields(&emu);
    set(&mut fields, "acl", "public-read");
    let reply = upload(&emu.s3, &fields, &logo(), &[]);
    assert_s3_error(
        &reply,
        403,
        "AccessDenied",
        "Policy Condition failed: {\"acl\":\"private\"}",
    );
}

#[test]
fn s3_refuses_a_key_outside_the_contact() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let mut fields = logo_fields(&emu);
    set(&mut fields, "key", &format!("{}/1/logo.png", contact(1).id));
    let reply = upload(&emu.s3, &fields, &logo(), &[]);
    assert_s3_error(&reply, 403, "AccessDenied", "[\"starts-with\",\"$key\"");
}

#[test]
fn s3_refuses_a_field_the_policy_does_not_name() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let mut fields = logo_fields(&emu);
    fields.insert(7, ("x-amz-meta-owner".into(), "me".into()));
    let reply = upload(&emu.s3, &fields, &logo(), &[]);
    assert_s3_error(
        &reply,
        403,
        "AccessDenied",
        "Extra input fields: x-amz-meta-owner",
    );
}

#[test]
fn s3_takes_exactly_the_limit_and_refuses_one_byte_more() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let ada = contact(0);
    let s = Scratch::new();
    let exact = s.file("exact.bin", vec![7u8; 10_485_760]);
    let over = s.file("over.bin", vec![7u8; 10_485_761]);
    stage(&emu, &ada.id, &exact);
    let form = emu.form(&ada.id);
    let key = tutorial_key(&form, &ada.id, "over.bin");
    let reply = upload(
        &emu.s3,
        &tutorial_fields(&form, &key, "over.bin"),
        &over,
        &[],
    );
    assert_s3_error(
        &reply,
        400,
        "EntityTooLarge",
        "exceeds the maximum allowed size",
    );
    let objects = emu.state()["objects"].as_array().unwrap().clone();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["size"], 10_485_760);
}

#[test]
fn s3_refuses_a_missing_key_or_file_and_a_malformed_body() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let fields: Vec<_> = logo_fields(&emu)
        .into_iter()
        .filter(|(n, _)| n != "key")
        .collect();
    let reply = upload(&emu.s3, &fields, &logo(), &[]);
    assert_s3_error(
        &reply,
        400,
        "InvalidArgument",
        "must contain a field named 'key'",
    );

    let mut only_fields: Vec<String> = Vec::new();
    for (name, value) in logo_fields(&emu) {
        only_fields.extend(["--form-string".to_string(), format!("{name}={value}")]);
    }
    only_fields.push(emu.s3.clone());
    let reply = curl(&only_fields, None);
    assert_s3_error(&reply, 400, "InvalidArgument", "exactly one file upload");

    let garbage = curl(
        &[
            "-H".into(),
            "content-type: multipart/form-data; boundary=XYZ".into(),
            "--data-binary".into(),
            "--XYZ\r\nthis is not a part header\r\n\r\n".into(),
            emu.s3.clone(),
        ],
        None,
    );
    assert_s3_error(&garbage, 400, "MalformedPOSTRequest", "not well-formed");

    let empty = upload(&emu.s3, &logo_fields(&emu), Path::new("/dev/null"), &[]);
    assert_eq!(empty.status, 201, "an empty file is a file: {}", empty.body);
    assert_eq!(emu.state()["objects"][0]["size"], 0);
}

#[test]
fn s3_ignores_fields_after_the_file_and_unknown_buckets_are_404() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let after = [
        ("x-amz-meta-late".to_string(), "ignored".to_string()),
        ("acl".to_string(), "public-read".to_string()),
    ];
    let reply = upload(&emu.s3, &logo_fields(&emu), &logo(), &after);
    assert_eq!(reply.status, 201, "{}", reply.body);

    let other = emu
        .s3
        .replace("onepagecrm-emulator", "someone-elses-bucket");
    let reply = upload(&other, &logo_fields(&emu), &logo(), &[]);
    assert_s3_error(&reply, 404, "NoSuchBucket", "does not exist");
}

#[test]
fn attach_refuses_each_inconsistency() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (ada, grace) = (contact(0), contact(1));
    let file = samples().join("files/logo.png");
    let size = std::fs::metadata(&file).unwrap().len();
    let key = stage(&emu, &ada.id, &file);

    let mut unknown = attach_body(&ada, &key, size);
    unknown["reference_id"] = json!("5a1b2c3d4e5f60718293a4b5");
    assert_api_error(
        &emu.post("/attachments", &unknown),
        404,
        "resource_not_found",
        None,
    );

    let mut other_contact = attach_body(&ada, &key, size);
    other_contact["reference_id"] = json!(grace.note);
    assert_api_error(
        &emu.post("/attachments", &other_contact),
        400,
        "invalid_request_data",
        Some("contact_id"),
    );

    let mut bad_type = attach_body(&ada, &key, size);
    bad_type["reference_type"] = json!("photo");
    assert_api_error(
        &emu.post("/attachments", &bad_type),
        400,
        "invalid_request_data",
        Some("reference_type"),
    );

    let not_uploaded = attach_body(&ada, &format!("{}/1/never-uploaded.png", ada.id), size);
    assert_api_error(
        &emu.post("/attachments", &not_uploaded),
        400,
        "invalid_request_data",
        Some("key"),
    );

    let wrong_size = attach_body(&ada, &key, size + 1);
    assert_api_error(
        &emu.post("/attachments", &wrong_size),
        400,
        "invalid_request_data",
        Some("size"),
    );

    let grace_key = stage(&emu, &grace.id, &file);
    let foreign_key = attach_body(&ada, &grace_key, size);
    assert_api_error(
        &emu.post("/attachments", &foreign_key),
        400,
        "invalid_request_data",
        Some("key"),
    );

    let not_json = curl(
        &[
            "--data-binary".into(),
            "{not json".into(),
            format!("{}/attachments", emu.api),
        ],
        Some((
            crate::common::emulator::USER_ID,
            crate::common::emulator::API_KEY,
        )),
    );
    assert_eq!(not_json.status, 400);

    // None of it attached anything; the right request still does.
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 0);
    let mut deal = attach_body(&ada, &key, size);
    deal["reference_type"] = json!("deal");
    deal["reference_id"] = json!(ada.deal);
    assert_eq!(emu.post("/attachments", &deal).status, 201);
    let shown = emu.get(&format!("/deals/{}", ada.deal)).json();
    assert_eq!(
        shown["data"]["deal"]["attachments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `curl` with many URLs in one process: one connection, so the requests come as fast as can be.
fn burst(emu: &Emulator, n: usize) -> Vec<(u16, String)> {
    let url = format!("{}/contacts", emu.api);
    let mut args = vec![
        "-sS".to_string(),
        "-w".into(),
        "%{http_code} %{content_type}\\n".into(),
    ];
    for _ in 0..n {
        args.extend(["-o".to_string(), "/dev/null".to_string(), url.clone()]);
    }
    let out = curl_output(
        &args,
        Some((
            crate::common::emulator::USER_ID,
            crate::common::emulator::API_KEY,
        )),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (code, ct) = l.split_once(' ').unwrap_or((l, ""));
            (code.parse().unwrap(), ct.to_string())
        })
        .collect()
}

#[test]
fn throttle_answers_403_text_past_the_burst() {
    let emu = Emulator::start(&[]);
    let replies = burst(&emu, 25);
    assert!(
        replies[..10].iter().all(|(code, _)| *code == 200),
        "{replies:?}"
    );
    let throttled: Vec<_> = replies.iter().filter(|(code, _)| *code == 403).collect();
    assert!(throttled.len() >= 8, "{replies:?}");
    assert!(
        throttled.iter().all(|(_, ct)| ct.starts_with("text/plain")),
        "{replies:?}"
    );
    assert_eq!(
        emu.state()["throttled"].as_u64().unwrap() as usize,
        throttled.len()
    );

    let free = Emulator::start(&["--rate-limit", "off"]);
    assert!(burst(&free, 40).iter().all(|(code, _)| *code == 200));
}

fn statuses(args: &[&str]) -> Vec<u16> {
    let emu = Emulator::start(args);
    (0..40)
        .map(|_| emu.get("/contacts?per_page=1").status)
        .collect()
}

#[test]
fn same_fault_seed_gives_same_faults() {
    let a = statuses(&[
        "--rate-limit",
        "off",
        "--fault-rate",
        "0.4",
        "--fault-seed",
        "7",
    ]);
    let b = statuses(&[
        "--rate-limit",
        "off",
        "--fault-rate",
        "0.4",
        "--fault-seed",
        "7",
    ]);
    let c = statuses(&[
        "--rate-limit",
        "off",
        "--fault-rate",
        "0.4",
        "--fault-seed",
        "8",
    ]);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.contains(&500) && a.contains(&200), "{a:?}");
}

#[test]
fn dropped_connections_sometimes_take_effect_first() {
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--drop-rate",
        "0.5",
        "--fault-seed",
        "3",
    ]);
    let ada = contact(0);
    let file = samples().join("files/logo.png");
    let size = std::fs::metadata(&file).unwrap().len();
    let (mut answered, mut dropped) = (0, 0);
    for _ in 0..24 {
        // Steps 1 and 2 until they get through, then one try at step 3.
        let key = loop {
            let reply = emu.get(&format!("/attachments/s3_form?contact_id={}", ada.id));
            if reply.status != 200 {
                assert_eq!(reply.curl_exit, 52, "a drop is an empty reply: {reply:?}");
                continue;
            }
            let form: Value = reply.json();
            let key = tutorial_key(&form, &ada.id, "logo.png") + &format!("-{answered}-{dropped}");
            if upload(
                &emu.s3,
                &tutorial_fields(&form, &key, "logo.png"),
                &file,
                &[],
            )
            .status
                == 201
            {
                break key;
            }
        };
        let reply = emu.post("/attachments", &attach_body(&ada, &key, size));
        if reply.status == 201 {
            answered += 1;
        } else {
            assert_eq!((reply.status, reply.curl_exit), (0, 52), "{reply:?}");
            dropped += 1;
        }
    }
    let attached = emu.state()["attachments"].as_array().unwrap().len();
    assert!(
        dropped > 0 && answered > 0,
        "answered {answered}, dropped {dropped}"
    );
    assert!(
        attached > answered,
        "some dropped attaches took effect: {attached} attached, {answered} answered"
    );
    assert!(
        attached < answered + dropped,
        "some dropped attaches did not: {attached} attached, {answered} answered"
    );
}

#[test]
fn notes_and_contacts_by_email() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let ada = contact(0);
    let found = emu.get("/contacts?email=ADA@analytical.example").json();
    assert_eq!(found["data"]["total_count"], 1);
    assert_eq!(
        found["data"]["contacts"][0]["contact"]["id"],
        ada.id.as_str()
    );
    let note = emu.post(
        "/notes",
        &json!({"contact_id": ada.id, "text": "Imported documents"}),
    );
    assert_eq!(note.status, 201, "{}", note.body);
    let id = note.json()["data"]["note"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        emu.get(&format!("/notes/{id}")).json()["data"]["note"]["text"],
        "Imported documents"
    );
    assert_api_error(
        &emu.get("/notes/5a1b2c3d4e5f60718293a4b5"),
        404,
        "resource_not_found",
        None,
    );
}

#[test]
fn data_dir_keeps_objects_on_disk() {
    let s = Scratch::new();
    let dir = s.path("objects");
    let emu = Emulator::start(&["--data-dir", dir.to_str().unwrap(), "--rate-limit", "off"]);
    let file = samples().join("files/floor-plan.png");
    let key = stage(&emu, &contact(0).id, &file);
    let stored: Vec<_> = std::fs::read_dir(dir.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        std::fs::read(&stored[0]).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert_eq!(emu.object(&key), std::fs::read(&file).unwrap());
}

#[test]
fn emulator_listens_on_loopback_only() {
    bin()
        .args(["emulator", "--listen", "0.0.0.0:0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("loopback only"));
}

#[test]
fn credentials_from_the_environment_replace_the_demo_ones() {
    let (user, key) = ("0123456789abcdef01234567", "key-from-the-environment");
    let emu = Emulator::start_with_credentials(&["--rate-limit", "off"], Some((user, key)));
    let url = format!("{}/contacts", emu.api);
    assert_eq!(
        curl(std::slice::from_ref(&url), Some((user, key))).status,
        200
    );
    let demo = curl(
        &[url],
        Some((
            crate::common::emulator::USER_ID,
            crate::common::emulator::API_KEY,
        )),
    );
    assert_api_error(&demo, 401, "invalid_auth_data", None);
}

#[test]
fn injected_errors_are_api_500_envelopes_and_s3_slowdown() {
    let emu = Emulator::start(&["--fault-rate", "1", "--rate-limit", "off"]);
    assert_api_error(&emu.get("/contacts"), 500, "internal_server_error", None);
    let reply = upload(
        &emu.s3,
        &[("key".into(), "x".into())],
        &samples().join("files/logo.png"),
        &[],
    );
    assert_s3_error(&reply, 503, "SlowDown", "reduce your request rate");
    let state = emu.state();
    assert_eq!(state["requests"]["GET /api/v3/contacts 500"], 1);
    assert_eq!(state["requests"]["POST /{bucket}/ 503"], 1);
}

#[test]
fn envelopes_carry_the_timestamp_in_milliseconds_or_none_when_told() {
    let ada = contact(0);
    let keys = |doc: &Value| -> Vec<String> { doc.as_object().unwrap().keys().cloned().collect() };
    let emu = Emulator::start(&["--rate-limit", "off", "--timestamp-ms"]);
    let before = chrono::Utc::now().timestamp_millis();
    let form = emu.form(&ada.id);
    let found = emu.get("/contacts?email=ADA@analytical.example").json();
    let after = chrono::Utc::now().timestamp_millis();
    for doc in [&form, &found] {
        let ms = doc["timestamp"].as_i64().unwrap();
        // The emulator's clock is ours until a test moves it; whole milliseconds, not seconds.
        assert!((before - 1000..=after + 1000).contains(&ms), "{doc}");
    }
    // `--form-timestamp` is given in seconds and answered in milliseconds.
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--timestamp-ms",
        "--form-timestamp",
        "1700000000",
    ]);
    assert_eq!(emu.form(&ada.id)["timestamp"], 1_700_000_000_000_i64);

    let emu = Emulator::start(&["--rate-limit", "off", "--no-timestamp"]);
    let form = emu.form(&ada.id);
    assert_eq!(keys(&form), ["status", "message", "data"], "{form}");
    assert!(form["data"]["fields"]["x-amz-date"].is_string(), "{form}");
    let found = emu.get("/contacts?email=ADA@analytical.example").json();
    assert_eq!(keys(&found), ["status", "message", "data"], "{found}");
}
