//! Issue 14, the emulator's side: `--throttle-model` and `--single-use-forms`, with the tutorial's
//! three steps in curl. The models themselves are unit-tested against their definitions in
//! `src/emulator/faults.rs`; here the flags reach them, and step 3 keeps one form to one upload.

use serde_json::{Value, json};

use crate::common::emulator::{
    API_KEY, Emulator, USER_ID, curl_output, tutorial_fields, tutorial_key, upload,
};
use crate::common::samples;

/// The sample seed's first contact and its first note.
fn ada() -> (String, String) {
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    let c = &seed["contacts"][0];
    (
        c["id"].as_str().unwrap().into(),
        c["notes"][0]["id"].as_str().unwrap().into(),
    )
}

/// Steps 2 and 3 of `name` (a sample file) with `form`: the upload's and the attach's answers.
fn upload_and_attach(emu: &Emulator, form: &Value, name: &str) -> (u16, u16, Value) {
    let (contact, note) = ada();
    let file = samples().join("files").join(name);
    let key = tutorial_key(form, &contact, name);
    let uploaded = upload(&emu.s3, &tutorial_fields(form, &key, name), &file, &[]);
    let size = std::fs::metadata(&file).unwrap().len();
    let attached = emu.post(
        "/attachments",
        &json!({"reference_id": note, "reference_type": "note", "contact_id": contact,
                "name": name, "key": key, "size": size}),
    );
    let body = serde_json::from_str(&attached.body).unwrap_or(Value::Null);
    (uploaded.status, attached.status, body)
}

const FILES: [&str; 2] = ["logo.png", "org-chart.svg"];

#[test]
fn throttle_single_use_forms_refuse_a_second_key_from_one_form() {
    let emu = Emulator::start(&["--rate-limit", "off", "--single-use-forms"]);
    let (contact, _) = ada();
    let form = emu.form(&contact);
    let (up, attach, _) = upload_and_attach(&emu, &form, FILES[0]);
    assert_eq!((up, attach), (201, 201));
    // The same form for a second file: S3 takes it (the policy's key condition is a prefix), and
    // step 3 refuses the second key made from the form's timestamp, in the error envelope.
    let (up, attach, doc) = upload_and_attach(&emu, &form, FILES[1]);
    assert_eq!(up, 201, "S3 accepts a form posted twice");
    assert_eq!(attach, 400, "{doc}");
    assert_eq!(doc["status"], 400);
    assert_eq!(doc["error_name"], "invalid_request_data", "{doc}");
    let why = doc["errors"]["key"].as_str().expect("names `key`");
    assert!(why.contains(&form["timestamp"].to_string()), "{why}");
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 1);
}

#[test]
fn throttle_single_use_forms_take_one_upload_per_form() {
    let emu = Emulator::start(&["--rate-limit", "off", "--single-use-forms"]);
    let (contact, _) = ada();
    // Two forms (perhaps in one second, with one timestamp): each carries one upload.
    let forms = [emu.form(&contact), emu.form(&contact)];
    for (form, name) in forms.iter().zip(FILES) {
        let (up, attach, doc) = upload_and_attach(&emu, form, name);
        assert_eq!((up, attach), (201, 201), "{doc}");
    }
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 2);
}

#[test]
fn throttle_without_single_use_forms_one_form_carries_two_uploads() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (contact, _) = ada();
    let form = emu.form(&contact);
    for name in FILES {
        let (up, attach, doc) = upload_and_attach(&emu, &form, name);
        assert_eq!((up, attach), (201, 201), "{doc}");
    }
}

/// One `GET /contacts`: its status line and headers.
fn headers(emu: &Emulator) -> String {
    let args = [
        "-s".to_string(),
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        format!("{}/contacts?per_page=1", emu.api),
    ];
    String::from_utf8(curl_output(&args, Some((USER_ID, API_KEY))).stdout).unwrap()
}

fn passed(head: &str) -> bool {
    head.starts_with("HTTP/1.1 200")
}

/// At 0.001/4 (a request's worth of leak takes over a quarter of an hour, so how fast this
/// machine sends makes no difference): a burst of 8, then 5 more knocks. Returns how many of the
/// burst passed and how many knocks passed. (The models' timing is unit-tested in
/// `emulator::faults` with explicit times; this proves each is what the API answers with.)
fn burst_then_knock(model: &str) -> (usize, usize) {
    let emu = Emulator::start(&["--rate-limit", "0.001/4", "--throttle-model", model]);
    let heads: Vec<String> = (0..8).map(|_| headers(&emu)).collect();
    let in_burst = heads.iter().filter(|h| passed(h)).count();
    for refused in heads.iter().filter(|h| !passed(h)) {
        let head = refused.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 403"), "{model}: {refused}");
        assert!(
            head.contains("content-type: text/plain"),
            "{model}: {refused}"
        );
        assert!(!head.contains("retry-after"), "{model}: {refused}");
    }
    let knocks = 5;
    let knocks_passed = (0..knocks).filter(|_| passed(&headers(&emu))).count();
    let refused = 8 - in_burst + knocks - knocks_passed;
    assert_eq!(emu.state()["throttled"], refused as u64, "{model}: counted");
    (in_burst, knocks_passed)
}

#[test]
fn throttle_models_reach_the_api() {
    // Rack (the default's model): B - 1 pass in a burst (the level reaches B on the B-th);
    // knocking while refused keeps it full.
    let (burst, knocks) = burst_then_knock("rack");
    assert!((3..=4).contains(&burst), "rack: {burst} of 8 passed");
    assert_eq!(knocks, 0, "rack: a client knocking while refused stays out");
    // GCRA: B in a burst, then none until a period has passed.
    let (burst, knocks) = burst_then_knock("gcra");
    assert_eq!((burst, knocks), (4, 0), "gcra");
    // Window: B in a burst, then none until the first leaves the window.
    let (burst, knocks) = burst_then_knock("window");
    assert_eq!((burst, knocks), (4, 0), "window");
}
