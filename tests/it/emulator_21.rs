//! The emulator's endpoints of issue 21: `DELETE /attachments/{id}` and `DELETE /notes/{id}`
//! (deleted files keep counting against the storage until `--purge-after`), `PATCH
//! /attachments/{id}/pin` and `/unpin` with `GET /contacts/{id}/pinned_attachments`, and link
//! attachments (`link_type`, `external_url`). Driven over HTTP; time is moved with
//! `POST /_emulator/clock`; the throttle is off.

use serde_json::{Value, json};

use crate::common::emulator::{
    API_KEY, Emulator, Reply, USER_ID, curl, tutorial_fields, tutorial_key, upload,
};
use crate::common::samples;

/// Ada Lovelace in the sample seed, with her two notes.
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_NOTE2: &str = "ce1987ee72777833d0d1e0e7";
const UNKNOWN: &str = "5a1b2c3d4e5f60718293a4b5";

fn start(args: &[&str]) -> Emulator {
    let mut all = vec!["--rate-limit", "off"];
    all.extend_from_slice(args);
    Emulator::start(&all)
}

/// An authenticated API request of `method` (`path` after `/api/v3`), no body.
fn call(emu: &Emulator, method: &str, path: &str) -> Reply {
    curl(
        &[
            "-X".to_string(),
            method.to_string(),
            format!("{}{path}", emu.api),
        ],
        Some((USER_ID, API_KEY)),
    )
}

/// The `data` of a `{status: 0, message: "OK", timestamp, data}` answer with `status`.
fn ok_data(reply: &Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["status"], 0, "{doc}");
    assert_eq!(doc["message"], "OK", "{doc}");
    assert!(doc["timestamp"].is_i64(), "{doc}");
    doc["data"].clone()
}

/// A `404` error envelope.
fn assert_not_found(reply: &Reply) {
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(
        reply.json()["error_name"],
        "resource_not_found",
        "{}",
        reply.body
    );
}

/// Steps 1 to 3 of the sample logo onto note `note` of `contact`; the attachment and its size.
fn attach_logo(emu: &Emulator, contact: &str, note: &str, name: &str) -> (Value, u64) {
    let file = samples().join("files/logo.png");
    let form = emu.form(contact);
    let key = tutorial_key(&form, contact, name);
    let reply = upload(&emu.s3, &tutorial_fields(&form, &key, name), &file, &[]);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let size = std::fs::metadata(&file).unwrap().len();
    let body = json!({"reference_id": note, "reference_type": "note", "contact_id": contact,
        "name": name, "key": key, "size": size});
    let attachment = ok_data(&emu.post("/attachments", &body), 201)["attachment"].clone();
    (attachment, size)
}

fn storage_left(emu: &Emulator) -> u64 {
    emu.state()["storage_left"].as_u64().unwrap()
}

/// The ids of the attachments `GET /notes/{note}` shows.
fn note_attachments(emu: &Emulator, note: &str) -> Vec<String> {
    ok_data(&emu.get(&format!("/notes/{note}")), 200)["note"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn delete_attachment_answers_200_then_404_and_its_bytes_count_until_purge_after() {
    let emu = start(&["--purge-after", "600"]);
    let before = storage_left(&emu);
    let (a, size) = attach_logo(&emu, ADA, ADA_NOTE, "logo.png");
    let id = a["id"].as_str().unwrap();
    assert_eq!(storage_left(&emu), before - size);
    assert_eq!(note_attachments(&emu, ADA_NOTE), [id]);

    let gone = call(&emu, "DELETE", &format!("/attachments/{id}"));
    assert_eq!(ok_data(&gone, 200), json!({}));
    assert!(
        note_attachments(&emu, ADA_NOTE).is_empty(),
        "gone from its note"
    );
    let notes = ok_data(&emu.get(&format!("/notes?contact_id={ADA}")), 200);
    assert!(
        !notes.to_string().contains(id),
        "gone from the listing: {notes}"
    );
    assert_not_found(&call(&emu, "DELETE", &format!("/attachments/{id}")));
    assert_not_found(&call(&emu, "DELETE", &format!("/attachments/{UNKNOWN}")));
    assert_not_found(&call(&emu, "PATCH", &format!("/attachments/{id}/pin")));

    let state = emu.state();
    assert_eq!(state["deleted_attachments"][0]["id"], id, "{state}");
    assert!(state["deleted_attachments"][0]["deleted_at"].is_string());
    assert_eq!(
        storage_left(&emu),
        before - size,
        "kept a while: still counted"
    );
    let form = ok_data(
        &emu.get(&format!("/attachments/s3_form?contact_id={ADA}")),
        200,
    );
    assert_eq!(form["storage_left"], before - size, "step 1 says so too");
    emu.advance_clock(599);
    assert_eq!(storage_left(&emu), before - size, "not yet");
    emu.advance_clock(1);
    assert_eq!(storage_left(&emu), before, "purged: given back");
    assert_eq!(emu.state()["deleted_attachments"], json!([]));
    assert_eq!(
        emu.requests().get("DELETE /api/v3/attachments/{id} 200"),
        Some(&1)
    );
}

#[test]
fn without_purge_after_a_deleted_files_bytes_are_never_given_back() {
    let emu = start(&[]);
    let before = storage_left(&emu);
    let (a, size) = attach_logo(&emu, ADA, ADA_NOTE, "logo.png");
    let id = a["id"].as_str().unwrap();
    ok_data(&call(&emu, "DELETE", &format!("/attachments/{id}")), 200);
    emu.advance_clock(10 * 365 * 86_400);
    assert_eq!(storage_left(&emu), before - size);
}

#[test]
fn delete_note_deletes_it_and_its_attachments_and_then_answers_404() {
    let emu = start(&[]);
    let before = storage_left(&emu);
    let (a, size) = attach_logo(&emu, ADA, ADA_NOTE2, "logo.png");
    let id = a["id"].as_str().unwrap();
    let gone = call(&emu, "DELETE", &format!("/notes/{ADA_NOTE2}"));
    assert_eq!(ok_data(&gone, 200), json!({}));
    assert_not_found(&emu.get(&format!("/notes/{ADA_NOTE2}")));
    assert_not_found(&call(&emu, "DELETE", &format!("/notes/{ADA_NOTE2}")));
    assert_not_found(&call(&emu, "DELETE", &format!("/notes/{UNKNOWN}")));
    assert_not_found(&call(&emu, "DELETE", &format!("/attachments/{id}")));
    let notes = ok_data(&emu.get(&format!("/notes?contact_id={ADA}")), 200);
    assert_eq!(notes["total_count"], 1, "{notes}");
    let state = emu.state();
    assert_eq!(state["deleted_attachments"][0]["id"], id, "{state}");
    assert_eq!(storage_left(&emu), before - size);
    // A note made through the API is deleted the same way.
    let made = ok_data(
        &emu.post("/notes", &json!({"contact_id": ADA, "text": "to go"})),
        201,
    )["note"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok_data(&call(&emu, "DELETE", &format!("/notes/{made}")), 200);
    assert_not_found(&emu.get(&format!("/notes/{made}")));
}

#[test]
fn faults_and_lost_answers_reach_deletes_and_pins() {
    let emu = start(&[
        "--fault-at",
        "DELETE /api/v3/attachments/{id}:1:drop-after",
        "--fault-at",
        "DELETE /api/v3/notes/{id}:1:drop-before",
        "--fault-at",
        "DELETE /api/v3/notes/{id}:2:error",
        "--fault-at",
        "PATCH /api/v3/attachments/{id}/pin:1:drop-after",
        "--fault-at",
        "PATCH /api/v3/attachments/{id}/unpin:1:error",
    ]);
    let (a, _) = attach_logo(&emu, ADA, ADA_NOTE, "a.png");
    let (b, _) = attach_logo(&emu, ADA, ADA_NOTE, "b.png");
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    let lost = call(&emu, "PATCH", &format!("/attachments/{b}/pin"));
    assert_eq!((lost.status, lost.curl_exit), (0, 52), "{lost:?}");
    let pinned = ok_data(
        &emu.get(&format!("/contacts/{ADA}/pinned_attachments")),
        200,
    );
    assert_eq!(
        pinned["pinned_attachments"][0]["id"], b,
        "pinned, answer lost"
    );
    let refused = call(&emu, "PATCH", &format!("/attachments/{b}/unpin"));
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert_eq!(refused.json()["error_name"], "internal_server_error");
    let pinned = ok_data(
        &emu.get(&format!("/contacts/{ADA}/pinned_attachments")),
        200,
    );
    assert_eq!(
        pinned["pinned_attachments"][0]["id"], b,
        "a 500 did nothing"
    );

    let lost = call(&emu, "DELETE", &format!("/attachments/{a}"));
    assert_eq!((lost.status, lost.curl_exit), (0, 52), "{lost:?}");
    assert_eq!(
        note_attachments(&emu, ADA_NOTE),
        [b],
        "deleted, answer lost"
    );
    assert_not_found(&call(&emu, "DELETE", &format!("/attachments/{a}")));

    let lost = call(&emu, "DELETE", &format!("/notes/{ADA_NOTE}"));
    assert_eq!((lost.status, lost.curl_exit), (0, 52), "{lost:?}");
    ok_data(&emu.get(&format!("/notes/{ADA_NOTE}")), 200);
    let refused = call(&emu, "DELETE", &format!("/notes/{ADA_NOTE}"));
    assert_eq!(refused.status, 500, "{}", refused.body);
    ok_data(&emu.get(&format!("/notes/{ADA_NOTE}")), 200);
    ok_data(&call(&emu, "DELETE", &format!("/notes/{ADA_NOTE}")), 200);
    let requests = emu.requests();
    assert_eq!(
        requests.get("DELETE /api/v3/notes/{id} dropped"),
        Some(&1),
        "{requests:?}"
    );
    assert_eq!(
        requests.get("DELETE /api/v3/notes/{id} 200"),
        Some(&1),
        "{requests:?}"
    );
}

#[test]
fn pin_and_unpin_set_pinned_and_pinned_at_and_the_contact_lists_its_pinned_most_recent_first() {
    let emu = start(&[]);
    let (a, _) = attach_logo(&emu, ADA, ADA_NOTE, "a.png");
    assert_eq!(a["pinned"], false, "{a}");
    assert_eq!(a["pinned_at"], Value::Null, "{a}");
    let (b, _) = attach_logo(&emu, ADA, ADA_NOTE2, "b.png");
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    let empty = emu.get(&format!("/contacts/{ADA}/pinned_attachments"));
    assert_eq!(ok_data(&empty, 200)["pinned_attachments"], json!([]));
    assert_eq!(empty.json()["total_count"], 0);
    assert_eq!(empty.json()["max_page"], 1);

    let shown = ok_data(&call(&emu, "PATCH", &format!("/attachments/{a}/pin")), 200);
    assert_eq!(
        (shown["id"].as_str(), &shown["pinned"]),
        (Some(a), &json!(true))
    );
    let pinned_at = shown["pinned_at"].as_str().unwrap().to_string();
    chrono::DateTime::parse_from_rfc3339(&pinned_at).unwrap();
    emu.advance_clock(5);
    let again = ok_data(&call(&emu, "PATCH", &format!("/attachments/{a}/pin")), 200);
    assert_eq!(
        again["pinned_at"],
        pinned_at.as_str(),
        "pinning again keeps pinned_at"
    );
    ok_data(&call(&emu, "PATCH", &format!("/attachments/{b}/pin")), 200);

    let note = ok_data(&emu.get(&format!("/notes/{ADA_NOTE}")), 200);
    assert_eq!(note["note"]["attachments"][0]["pinned"], true, "{note}");
    let list = emu.get(&format!("/contacts/{ADA}/pinned_attachments"));
    let ids: Vec<&str> = ok_data(&list, 200)["pinned_attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|s| if s == a { "a" } else { "b" })
        .collect();
    assert_eq!(ids, ["b", "a"], "most recently pinned first");
    let doc = list.json();
    assert_eq!(
        (
            &doc["total_count"],
            &doc["page"],
            &doc["per_page"],
            &doc["max_page"]
        ),
        (&json!(2), &json!(1), &json!(10), &json!(1)),
        "{doc}"
    );
    let page2 = emu.get(&format!(
        "/contacts/{ADA}/pinned_attachments?per_page=1&page=2"
    ));
    assert_eq!(ok_data(&page2, 200)["pinned_attachments"][0]["id"], a);

    let off = ok_data(
        &call(&emu, "PATCH", &format!("/attachments/{b}/unpin")),
        200,
    );
    assert_eq!(
        (&off["pinned"], &off["pinned_at"]),
        (&json!(false), &Value::Null)
    );
    let list = ok_data(
        &emu.get(&format!("/contacts/{ADA}/pinned_attachments")),
        200,
    );
    assert_eq!(list["pinned_attachments"].as_array().unwrap().len(), 1);
    ok_data(&call(&emu, "DELETE", &format!("/attachments/{a}")), 200);
    let list = ok_data(
        &emu.get(&format!("/contacts/{ADA}/pinned_attachments")),
        200,
    );
    assert_eq!(
        list["pinned_attachments"],
        json!([]),
        "a deleted file is not listed"
    );

    assert_not_found(&call(&emu, "PATCH", &format!("/attachments/{UNKNOWN}/pin")));
    assert_not_found(&call(
        &emu,
        "PATCH",
        &format!("/attachments/{UNKNOWN}/unpin"),
    ));
    assert_not_found(&emu.get(&format!("/contacts/{UNKNOWN}/pinned_attachments")));
    let bad = emu.get(&format!("/contacts/{ADA}/pinned_attachments?per_page=0"));
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[test]
fn link_attachments_have_their_provider_and_url_take_no_storage_and_are_checked() {
    let emu = start(&["--purge-after", "1"]);
    let before = storage_left(&emu);
    let body = json!({"reference_id": ADA_NOTE, "reference_type": "note", "contact_id": ADA,
        "link_type": "dropbox", "external_url": "https://www.dropbox.com/s/abc/Q3%20report.pdf?dl=0"});
    let link = ok_data(&emu.post("/attachments", &body), 201)["attachment"].clone();
    assert_eq!(link["storage_provider"], "dropbox", "{link}");
    assert_eq!(link["url"], body["external_url"], "{link}");
    assert_eq!(
        link["filename"], "Q3%20report.pdf",
        "the URL's last segment: {link}"
    );
    assert_eq!((&link["size"], &link["pinned"]), (&json!(0), &json!(false)));
    assert!(
        link.get("url_expires_at").is_none(),
        "a link does not expire: {link}"
    );
    assert_eq!(storage_left(&emu), before, "no size against the quota");

    for (kind, provider) in [("google_drive", "google_drive"), ("evernote", "evernote")] {
        let body = json!({"reference_id": ADA_NOTE, "reference_type": "note",
            "link_type": kind, "external_url": "https://example.com/doc", "name": "Plan",
            "size": 1234});
        let made = ok_data(&emu.post("/attachments", &body), 201)["attachment"].clone();
        assert_eq!(
            (&made["storage_provider"], &made["filename"]),
            (&json!(provider), &json!("Plan"))
        );
        assert_eq!(made["size"], 1234);
    }
    assert_eq!(storage_left(&emu), before, "not even a stated size");
    let shown = ok_data(&emu.get(&format!("/notes/{ADA_NOTE}")), 200);
    assert_eq!(
        shown["note"]["attachments"].as_array().unwrap().len(),
        3,
        "{shown}"
    );
    let state = emu.state();
    assert_eq!(state["objects"], json!([]), "no S3 object: {state}");

    let refused = |body: Value, field: &str| {
        let reply = emu.post("/attachments", &body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(
            reply.json()["errors"].get(field).is_some(),
            "{body}: {}",
            reply.body
        );
    };
    let base = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut b = body.as_object().unwrap().clone();
        f(&mut b);
        Value::Object(b)
    };
    refused(
        base(&|b| {
            b.insert("link_type".into(), "onedrive".into());
        }),
        "link_type",
    );
    refused(
        base(&|b| {
            b.remove("link_type");
        }),
        "link_type",
    );
    refused(
        base(&|b| {
            b.remove("external_url");
        }),
        "external_url",
    );
    refused(
        base(&|b| {
            b.insert("external_url".into(), "ftp://x/y".into());
        }),
        "external_url",
    );
    refused(
        base(&|b| {
            b.insert("key".into(), format!("{ADA}/1/x.pdf").into());
        }),
        "key",
    );
    refused(
        base(&|b| {
            b.insert("size".into(), json!(-1));
        }),
        "size",
    );
    refused(
        base(&|b| {
            b.insert("contact_id".into(), UNKNOWN.into());
        }),
        "contact_id",
    );
    assert_not_found(&emu.post(
        "/attachments",
        &base(&|b| {
            b.insert("reference_id".into(), UNKNOWN.into());
        }),
    ));

    let id = link["id"].as_str().unwrap();
    ok_data(&call(&emu, "PATCH", &format!("/attachments/{id}/pin")), 200);
    ok_data(&call(&emu, "DELETE", &format!("/attachments/{id}")), 200);
    emu.advance_clock(2);
    assert_eq!(
        storage_left(&emu),
        before,
        "a purged link gives back nothing"
    );
}

#[test]
fn a_lost_answer_of_a_link_attach_made_it_once() {
    let emu = start(&["--fault-at", "POST /api/v3/attachments:1:drop-after"]);
    let body = json!({"reference_id": ADA_NOTE, "reference_type": "note",
        "link_type": "google_drive", "external_url": "https://drive.google.com/file/d/xyz"});
    let lost = emu.post("/attachments", &body);
    assert_eq!((lost.status, lost.curl_exit), (0, 52), "{lost:?}");
    let shown = ok_data(&emu.get(&format!("/notes/{ADA_NOTE}")), 200);
    let attachments = shown["note"]["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{shown}");
    assert_eq!(attachments[0]["filename"], "xyz");
}
