//! The emulator's contacts by email and notes (issue 13): `GET /contacts?email=`, `POST /notes`,
//! `GET /notes?contact_id=&page=&per_page=`, as the OpenAPI file shapes them, and the faults that
//! reach them. Every emulator here runs with `--rate-limit off` (see tests/it/emulator.rs).

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::{Value, json};

use crate::common::emulator::{Emulator, Reply};

/// Ada Lovelace in the sample seed.
const ADA: &str = "ca929443ed449d7679121de5";
/// Sam Rivera and Alex Rivera share `office@twin-desk.example` (in two cases) in the sample seed.
const SAM: &str = "9d4d92b4171e5211be70debe";
const ALEX: &str = "776a8f689a4b18e8f7cf0297";
/// Sam's one seeded note, made 2024-03-15T10:30:00Z.
const SAM_NOTE: &str = "b690e418f67de6d22d2e0e1c";
const UNKNOWN: &str = "5a1b2c3d4e5f60718293a4b5";

fn start(args: &[&str]) -> Emulator {
    let mut all = vec!["--rate-limit", "off"];
    all.extend_from_slice(args);
    Emulator::start(&all)
}

fn assert_api_error(reply: &Reply, status: u16, error_name: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["status"], status, "{doc}");
    assert_eq!(doc["error_name"], error_name, "{doc}");
    assert!(doc["message"].is_string() && doc["error_message"].is_string());
    if let Some(field) = field {
        assert!(doc["errors"][field].is_string(), "{doc}");
    }
}

/// `{status: 0, message: "OK", timestamp, data}` and its `data`.
fn ok_data(reply: &Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/json"));
    let doc = reply.json();
    assert_eq!(doc["status"], 0);
    assert_eq!(doc["message"], "OK");
    assert!(doc["timestamp"].is_i64(), "{doc}");
    let keys: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["status", "message", "timestamp", "data"])
    );
    doc["data"].clone()
}

/// The paging fields of a list's `data`: `(total_count, page, per_page, max_page)`.
fn paging(data: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| data[k].as_u64().unwrap_or_else(|| panic!("{k} in {data}"));
    (n("total_count"), n("page"), n("per_page"), n("max_page"))
}

fn post_note(emu: &Emulator, body: Value) -> Value {
    ok_data(&emu.post("/notes", &body), 201)["note"].clone()
}

/// Every note of `contact` as `GET /notes` pages them, `per_page` at a time, pages in order.
fn all_notes(emu: &Emulator, contact: &str, per_page: u64) -> Vec<Value> {
    let mut notes = Vec::new();
    let mut page = 1;
    loop {
        let data = ok_data(
            &emu.get(&format!(
                "/notes?contact_id={contact}&page={page}&per_page={per_page}"
            )),
            200,
        );
        let (_, at, size, max_page) = paging(&data);
        assert_eq!((at, size), (page, per_page));
        for item in data["notes"].as_array().unwrap() {
            let keys: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["note"], "each item wraps one note");
            notes.push(item["note"].clone());
        }
        if page >= max_page {
            return notes;
        }
        page += 1;
    }
}

/// The emulator's notes with `text`, from `GET /_emulator/state`.
fn state_notes(emu: &Emulator, text: &str) -> Vec<Value> {
    emu.state()["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["text"] == text)
        .cloned()
        .collect()
}

#[test]
fn contacts_by_email_are_a_list_envelope_with_every_contact_of_that_email() {
    let emu = start(&[]);
    let data = ok_data(&emu.get("/contacts?email=OFFICE@twin-desk.EXAMPLE"), 200);
    let keys: BTreeSet<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["contacts", "total_count", "page", "per_page", "max_page"])
    );
    assert_eq!(paging(&data), (2, 1, 10, 1));
    let contacts = data["contacts"].as_array().unwrap();
    let ids: Vec<&str> = contacts
        .iter()
        .map(|c| c["contact"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ALEX, SAM], "both, any case, sorted by name");
    let alex = &contacts[0]["contact"];
    assert_eq!(alex["first_name"], "Alex");
    assert_eq!(alex["last_name"], "Rivera");
    assert_eq!(
        alex["emails"],
        json!([{"type": "work", "value": "Office@Twin-Desk.example"}])
    );

    let one = ok_data(&emu.get("/contacts?email=ada@analytical.example"), 200);
    assert_eq!(paging(&one), (1, 1, 10, 1));
    assert_eq!(one["contacts"][0]["contact"]["id"], ADA);

    let none = ok_data(&emu.get("/contacts?email=nobody@nowhere.example"), 200);
    assert_eq!(paging(&none), (0, 1, 10, 1));
    assert_eq!(none["contacts"], json!([]));

    let second = ok_data(
        &emu.get("/contacts?email=office@twin-desk.example&per_page=1&page=2"),
        200,
    );
    assert_eq!(paging(&second), (2, 2, 1, 2));
    assert_eq!(second["contacts"][0]["contact"]["id"], SAM);

    assert_api_error(
        &emu.get("/contacts?email="),
        400,
        "invalid_request_data",
        Some("email"),
    );
    assert_api_error(
        &emu.get("/contacts?email=ada@analytical.example&per_page=101"),
        400,
        "invalid_request_data",
        Some("per_page"),
    );
    assert_api_error(
        &emu.get("/contacts?page=0"),
        400,
        "invalid_request_data",
        Some("page"),
    );
}

#[test]
fn a_created_note_has_its_date_or_today_and_created_at_by_the_emulator_clock() {
    let emu = start(&[]);
    // A year ahead, so that "today" can only come from the emulator's clock.
    let before = emu.advance_clock(366 * 24 * 3600)["now"]
        .as_str()
        .unwrap()
        .to_string();
    let note = post_note(
        &emu,
        json!({"contact_id": ADA, "text": "Imported documents"}),
    );
    let after = emu.advance_clock(0)["now"].as_str().unwrap().to_string();
    let keys: BTreeSet<&str> = note
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "contact_id",
            "text",
            "date",
            "created_at",
            "modified_at",
            "attachments"
        ])
    );
    assert_eq!(note["contact_id"], ADA);
    assert_eq!(note["text"], "Imported documents");
    assert_eq!(note["attachments"], json!([]));
    let created_at = note["created_at"].as_str().unwrap();
    assert!(
        before.as_str() <= created_at && created_at <= after.as_str(),
        "{before} <= {created_at} <= {after}"
    );
    let today = note["date"].as_str().unwrap();
    assert!(
        before[..10] <= *today && *today <= after[..10],
        "today by the clock: {today}"
    );

    let dated = post_note(
        &emu,
        json!({"contact_id": ADA, "text": "From the archive", "date": "2019-07-01"}),
    );
    assert_eq!(dated["date"], "2019-07-01");
    let id = dated["id"].as_str().unwrap();
    assert_eq!(
        ok_data(&emu.get(&format!("/notes/{id}")), 200)["note"],
        dated,
        "GET /notes/{{id}} shows the note as created"
    );

    // The state lists each note once with its text, date and created_at.
    let shown = state_notes(&emu, "From the archive");
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["id"], id);
    assert_eq!(shown[0]["contact_id"], ADA);
    assert_eq!(shown[0]["date"], "2019-07-01");
    assert_eq!(shown[0]["created_at"], dated["created_at"]);
}

#[test]
fn note_text_date_and_contact_are_checked_and_a_refused_note_is_not_made() {
    let emu = start(&[]);
    let longest = "ü".repeat(7168);
    let note = post_note(&emu, json!({"contact_id": ADA, "text": longest}));
    assert_eq!(note["text"].as_str().unwrap().chars().count(), 7168);
    let notes_before = emu.state()["notes"].as_array().unwrap().len();

    let too_long = "ü".repeat(7169);
    let refused = [
        (json!({"contact_id": ADA, "text": too_long}), "text"),
        (json!({"contact_id": ADA}), "text"),
        (json!({"contact_id": ADA, "text": " \n "}), "text"),
        (json!({"contact_id": ADA, "text": 7}), "text"),
        (json!({"text": "x"}), "contact_id"),
        (json!({"contact_id": "", "text": "x"}), "contact_id"),
        (
            json!({"contact_id": ADA, "text": "x", "date": "2024-2-1"}),
            "date",
        ),
        (
            json!({"contact_id": ADA, "text": "x", "date": "2023-02-29"}),
            "date",
        ),
        (
            json!({"contact_id": ADA, "text": "x", "date": "01/02/2024"}),
            "date",
        ),
        (json!({"contact_id": ADA, "text": "x", "date": ""}), "date"),
        (
            json!({"contact_id": ADA, "text": "x", "date": 20240201}),
            "date",
        ),
    ];
    for (body, field) in refused {
        let reply = emu.post("/notes", &body);
        assert_api_error(&reply, 400, "invalid_request_data", Some(field));
    }
    let long = emu.post(
        "/notes",
        &json!({"contact_id": ADA, "text": "ü".repeat(7169)}),
    );
    assert!(
        long.json()["errors"]["text"]
            .as_str()
            .unwrap()
            .contains("7168"),
        "{}",
        long.body
    );
    assert_api_error(
        &emu.post("/notes", &json!({"contact_id": UNKNOWN, "text": "x"})),
        404,
        "resource_not_found",
        None,
    );
    assert_eq!(
        emu.state()["notes"].as_array().unwrap().len(),
        notes_before,
        "no refused note was made"
    );
}

/// The line-end rule: a note's text is stored and returned with every `\r\n` and lone `\r` made
/// `\n`, and nothing else changed; so a client compares texts after the same normalization.
#[test]
fn note_text_comes_back_with_line_ends_made_lf_and_nothing_else_changed() {
    let emu = start(&[]);
    let sent = "Line 1\r\nLine 2\rLine 3\n  Müller, \"quoted\", tab\there\r\n";
    let returned = "Line 1\nLine 2\nLine 3\n  Müller, \"quoted\", tab\there\n";
    let note = post_note(&emu, json!({"contact_id": ALEX, "text": sent}));
    assert_eq!(note["text"], returned);
    let id = note["id"].as_str().unwrap();
    assert_eq!(
        ok_data(&emu.get(&format!("/notes/{id}")), 200)["note"]["text"],
        returned
    );
    let listed = all_notes(&emu, ALEX, 10);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["text"], returned);
    assert_eq!(state_notes(&emu, returned).len(), 1);
}

#[test]
fn a_contacts_notes_are_listed_oldest_first_a_page_at_a_time() {
    let emu = start(&[]);
    let texts: Vec<String> = (1..=24).map(|i| format!("note {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        post_note(&emu, json!({"contact_id": SAM, "text": text}));
        if i == 11 {
            post_note(&emu, json!({"contact_id": ADA, "text": "Ada's, not Sam's"}));
        }
    }
    // Sam's seeded note (2024) first, then the 24 in the order they were made.
    let mut expected = vec!["Met Sam at the spring fair".to_string()];
    expected.extend(texts.iter().cloned());

    let first = ok_data(&emu.get(&format!("/notes?contact_id={SAM}")), 200);
    let keys: BTreeSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["notes", "total_count", "page", "per_page", "max_page"])
    );
    assert_eq!(paging(&first), (25, 1, 10, 3), "per_page is 10 by default");
    assert_eq!(first["notes"][0]["note"]["id"], SAM_NOTE);
    assert_eq!(first["notes"][0]["note"]["date"], "2024-03-15");
    assert_eq!(
        first["notes"][0]["note"]["created_at"],
        "2024-03-15T10:30:00Z"
    );

    for per_page in [1, 7, 10, 25, 100] {
        let notes = all_notes(&emu, SAM, per_page);
        let got: Vec<&str> = notes.iter().map(|n| n["text"].as_str().unwrap()).collect();
        assert_eq!(got, expected, "per_page {per_page}");
        assert!(notes.iter().all(|n| n["contact_id"] == SAM));
    }
    let last = ok_data(&emu.get(&format!("/notes?contact_id={SAM}&page=3")), 200);
    assert_eq!(paging(&last), (25, 3, 10, 3));
    assert_eq!(last["notes"].as_array().unwrap().len(), 5);
    let past = ok_data(&emu.get(&format!("/notes?contact_id={SAM}&page=4")), 200);
    assert_eq!(paging(&past), (25, 4, 10, 3));
    assert_eq!(past["notes"], json!([]), "past the last page: no notes");
    let all = ok_data(
        &emu.get(&format!("/notes?contact_id={SAM}&per_page=100")),
        200,
    );
    assert_eq!(paging(&all), (25, 1, 100, 1));

    let empty = ok_data(&emu.get(&format!("/notes?contact_id={ALEX}")), 200);
    assert_eq!(paging(&empty), (0, 1, 10, 1));
    assert_eq!(empty["notes"], json!([]));

    for (query, field) in [
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=two", "page"),
    ] {
        assert_api_error(
            &emu.get(&format!("/notes?contact_id={SAM}&{query}")),
            400,
            "invalid_request_data",
            Some(field),
        );
    }
    assert_api_error(
        &emu.get("/notes?contact_id="),
        400,
        "invalid_request_data",
        Some("contact_id"),
    );
    assert_api_error(
        &emu.get(&format!("/notes?contact_id={UNKNOWN}")),
        404,
        "resource_not_found",
        None,
    );
}

#[test]
fn a_dropped_answer_after_post_notes_made_the_note_once_and_a_drop_before_made_none() {
    let emu = start(&[
        "--fault-at",
        "POST /api/v3/notes:1:drop-after",
        "--fault-at",
        "POST /api/v3/notes:2:drop-before",
    ]);
    let lost = emu.post("/notes", &json!({"contact_id": SAM, "text": "answer lost"}));
    assert_eq!(
        (lost.status, lost.curl_exit),
        (0, 52),
        "no answer: {lost:?}"
    );
    let never = emu.post("/notes", &json!({"contact_id": SAM, "text": "never made"}));
    assert_eq!(
        (never.status, never.curl_exit),
        (0, 52),
        "no answer: {never:?}"
    );

    let made = state_notes(&emu, "answer lost");
    assert_eq!(made.len(), 1, "drop-after: made once, answer lost");
    assert!(made[0]["date"].is_string() && made[0]["created_at"].is_string());
    assert!(state_notes(&emu, "never made").is_empty(), "drop-before");
    let state = emu.state();
    assert_eq!(state["requests"]["POST /api/v3/notes dropped"], 2);

    // The client finds the note it lost the answer of in the contact's list.
    let listed = all_notes(&emu, SAM, 100);
    let found: Vec<&Value> = listed
        .iter()
        .filter(|n| n["text"] == "answer lost")
        .collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], made[0]["id"]);
}

#[test]
fn planned_errors_and_drops_reach_the_notes_and_contacts_lists() {
    let emu = start(&[
        "--fault-at",
        "GET /api/v3/notes:1:error",
        "--fault-at",
        "GET /api/v3/contacts:1:drop-after",
    ]);
    assert_api_error(
        &emu.get(&format!("/notes?contact_id={SAM}")),
        500,
        "internal_server_error",
        None,
    );
    ok_data(&emu.get(&format!("/notes?contact_id={SAM}")), 200);
    let dropped = emu.get("/contacts?email=ada@analytical.example");
    assert_eq!((dropped.status, dropped.curl_exit), (0, 52), "{dropped:?}");
    ok_data(&emu.get("/contacts?email=ada@analytical.example"), 200);
    let requests = &emu.state()["requests"];
    assert_eq!(requests["GET /api/v3/notes 500"], 1);
    assert_eq!(requests["GET /api/v3/notes 200"], 1);
    assert_eq!(requests["GET /api/v3/contacts dropped"], 1);
}

#[test]
fn fault_and_drop_rates_reach_post_notes() {
    let failing = start(&["--fault-rate", "1"]);
    assert_api_error(
        &failing.post("/notes", &json!({"contact_id": SAM, "text": "x"})),
        500,
        "internal_server_error",
        None,
    );
    assert!(
        state_notes(&failing, "x").is_empty(),
        "an error makes nothing"
    );

    let dropping = start(&["--drop-rate", "1", "--fault-seed", "3"]);
    let n = 20;
    for i in 0..n {
        let reply = dropping.post(
            "/notes",
            &json!({"contact_id": SAM, "text": format!("d{i}")}),
        );
        assert_eq!((reply.status, reply.curl_exit), (0, 52), "{reply:?}");
    }
    let made = dropping.state()["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["text"].as_str().unwrap().starts_with('d'))
        .count();
    assert!(
        0 < made && made < n,
        "some dropped notes were made first, some not: {made} of {n}"
    );
}

#[test]
fn latency_holds_the_notes_routes_too() {
    let emu = start(&["--latency-ms", "300"]);
    let t = Instant::now();
    post_note(&emu, json!({"contact_id": SAM, "text": "slow"}));
    ok_data(&emu.get(&format!("/notes?contact_id={SAM}")), 200);
    ok_data(&emu.get("/contacts?email=ada@analytical.example"), 200);
    let took = t.elapsed();
    assert!(
        took.as_millis() >= 900,
        "three requests held 300 ms each: {took:?}"
    );
}
