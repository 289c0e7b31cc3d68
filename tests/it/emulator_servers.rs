//! The emulator as the other servers the OnePageCRM documentation allows: links without the key
//! (`--opaque-links`), listings that lag behind writes (`--list-lag`), a clock ahead of or behind
//! this machine's (`--clock-offset`), and the list endpoints of deals, calls and meetings. Time is
//! moved with `POST /_emulator/clock`, never waited for. Every emulator here runs with
//! `--rate-limit off` (see tests/it/emulator.rs).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

use crate::common::emulator::{Emulator, Reply, curl, tutorial_fields, tutorial_key, upload};
use crate::common::{ID, ID2, Scratch, samples};
use opcrm_import::remote::api::RemoteAttachment;

/// Ada Lovelace in the sample seed, with her first note and deal.
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_DEAL: &str = "ce6ec0cdddd720161b4cbd15";

fn start(args: &[&str]) -> Emulator {
    let mut all = vec!["--rate-limit", "off"];
    all.extend_from_slice(args);
    Emulator::start(&all)
}

/// This machine's clock, in Unix seconds.
fn wall() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The `data` of a `{status: 0, message: "OK", timestamp, data}` answer with `status`.
fn ok_data(reply: &Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["status"], 0, "{doc}");
    doc["data"].clone()
}

fn unix(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .timestamp()
}

/// Steps 1 and 2 of the sample logo for `contact`: the key it was stored under and its size.
fn stage_logo(emu: &Emulator, contact: &str) -> (String, u64) {
    let file = samples().join("files/logo.png");
    let form = emu.form(contact);
    let key = tutorial_key(&form, contact, "logo.png");
    let reply = upload(
        &emu.s3,
        &tutorial_fields(&form, &key, "logo.png"),
        &file,
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    (key, std::fs::metadata(&file).unwrap().len())
}

/// Steps 1 to 3 of the sample logo onto `reference_type` `reference_id` of `contact`, named
/// `name`; the attachment as step 3 shows it.
fn attach_logo(
    emu: &Emulator,
    contact: &str,
    reference_type: &str,
    reference_id: &str,
    name: &str,
) -> Value {
    let (key, size) = stage_logo(emu, contact);
    let body = json!({"reference_id": reference_id, "reference_type": reference_type,
        "contact_id": contact, "name": name, "key": key, "size": size});
    ok_data(&emu.post("/attachments", &body), 201)["attachment"].clone()
}

#[test]
fn clock_offset_stamps_everything_two_hours_off_and_forms_still_upload() {
    for offset in [7200_i64, -7200] {
        let emu = start(&["--clock-offset", &offset.to_string()]);
        let before = wall() + offset;
        let form = emu.form(ADA);
        let note = emu.post("/notes", &json!({"contact_id": ADA, "text": "offset"}));
        let after = wall() + offset;
        let within = |t: i64, what: &str| {
            assert!(
                before <= t && t <= after,
                "{what} {t} is not {offset} s off this machine's clock ({before}..={after})"
            );
        };

        within(form["timestamp"].as_i64().unwrap(), "step 1's timestamp");
        let fields = &form["data"]["fields"];
        let date = chrono::NaiveDateTime::parse_from_str(
            fields["x-amz-date"].as_str().unwrap(),
            "%Y%m%dT%H%M%SZ",
        )
        .unwrap()
        .and_utc()
        .timestamp();
        within(date, "the form's x-amz-date");
        let policy: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(fields["policy"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let expiration = unix(policy["expiration"].as_str().unwrap());
        within(expiration - 3600, "the policy's expiration less an hour");
        within(
            note.json()["timestamp"].as_i64().unwrap(),
            "POST /notes's timestamp",
        );
        let note = ok_data(&note, 201)["note"].clone();
        within(
            unix(note["created_at"].as_str().unwrap()),
            "the note's created_at",
        );
        let clock = curl(&[format!("{}/_emulator/clock", emu.origin)], None).json();
        assert_eq!(clock["ahead_seconds"], offset, "{clock}");

        // S3 judges the form by the same clock: the upload and the attach go through, and the
        // attachment's presigned link, signed by that clock, is good for an hour of it.
        let linked_from = wall() + offset;
        let attachment = attach_logo(&emu, ADA, "note", ADA_NOTE, "logo.png");
        let linked_until = wall() + offset;
        let url = attachment["url"].as_str().unwrap().to_string();
        let fetched = curl(std::slice::from_ref(&url), None);
        assert_eq!(fetched.status, 200, "{offset}: {}", fetched.body);
        let expires = unix(attachment["url_expires_at"].as_str().unwrap()) - 3600;
        assert!(
            linked_from <= expires && expires <= linked_until,
            "the link's expiry less an hour {expires} is not {offset} s off this machine's clock"
        );
        emu.advance_clock(3601);
        assert_eq!(
            curl(&[url], None).status,
            403,
            "the link expires by that clock"
        );
        let state = emu.state();
        assert_eq!(state["attachments"].as_array().unwrap().len(), 1);
        assert_eq!(state["objects"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn clock_offset_is_refused_beyond_ten_years_and_in_external_s3_mode() {
    let out = crate::common::bin()
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--clock-offset",
            "-400000000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--clock-offset"), "{stderr}");
    let out = crate::common::bin()
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--clock-offset",
            "60",
        ])
        .args([
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-bucket",
            "bucket",
        ])
        .args(["--s3-access-key", "k", "--s3-secret-key", "s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--clock-offset cannot be used in external-S3 mode"),
        "{stderr}"
    );
}

/// The attachment as the tool reads it from a record, for `RemoteAttachment::key`.
fn remote(attachment: &Value) -> RemoteAttachment {
    RemoteAttachment {
        id: attachment["id"].as_str().unwrap().to_string(),
        filename: attachment["filename"].as_str().unwrap().to_string(),
        size: attachment["size"].as_u64().unwrap(),
        url: attachment["url"].as_str().map(str::to_string),
        storage_provider: attachment["storage_provider"].as_str().map(str::to_string),
    }
}

/// Every attachment the API shows of Ada's first note: in its `GET` and in her notes' list.
fn shown_on_ada_note(emu: &Emulator) -> Vec<Value> {
    let note = ok_data(&emu.get(&format!("/notes/{ADA_NOTE}")), 200)["note"].clone();
    let listed = ok_data(
        &emu.get(&format!("/notes?contact_id={ADA}&per_page=100")),
        200,
    );
    let in_list = listed["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["note"]["id"] == ADA_NOTE)
        .expect("Ada's note is listed")["note"]["attachments"]
        .clone();
    assert_eq!(note["attachments"], in_list);
    note["attachments"].as_array().unwrap().clone()
}

#[test]
fn opaque_links_name_only_the_file_and_show_no_key_the_tool_could_find() {
    // The control: a presigned link shows the key, and the tool finds it there.
    let presigned = start(&[]);
    let shown = attach_logo(&presigned, ADA, "note", ADA_NOTE, "logo.png");
    let key = presigned.state()["attachments"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(remote(&shown).key(ADA).as_deref(), Some(key.as_str()));

    let emu = start(&["--opaque-links"]);
    // The second name spells a key of Ada's: it must stay a name.
    let names = [
        "logo.png".to_string(),
        format!("{ADA}/1697212380123/a b.png"),
    ];
    for name in &names {
        attach_logo(&emu, ADA, "note", ADA_NOTE, name);
    }
    let state = emu.state();
    let kept = state["attachments"].as_array().unwrap();
    assert_eq!(kept.len(), 2);
    let shown = shown_on_ada_note(&emu);
    assert_eq!(shown.len(), 2);
    for (attachment, name) in shown.iter().zip(&names) {
        let id = attachment["id"].as_str().unwrap();
        let key = kept.iter().find(|a| a["id"] == id).unwrap()["key"]
            .as_str()
            .unwrap();
        let url = attachment["url"].as_str().unwrap();
        let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        assert_eq!(
            url,
            format!("{}/_emulator/files/{id}/{encoded}", emu.origin),
            "the link ends with the file's name"
        );
        let stamp = key.split('/').nth(1).unwrap();
        assert!(
            !url.contains(stamp),
            "{url} shows the key's timestamp {stamp}"
        );
        assert_eq!(remote(attachment).key(ADA), None, "{url}");

        // The link is a link: it gives the file, and only under its own name.
        let fetched = crate::common::emulator::curl_output(&[url.to_string()], None);
        assert_eq!(
            fetched.stdout,
            std::fs::read(samples().join("files/logo.png")).unwrap()
        );
    }
    let wrong = curl(
        &[format!(
            "{}/_emulator/files/{}/other.png",
            emu.origin,
            shown[0]["id"].as_str().unwrap()
        )],
        None,
    );
    assert_eq!(wrong.status, 404, "{}", wrong.body);
}

#[test]
fn opaque_links_and_attachment_urls_opaque_are_one_thing_and_conflict_with_presigned() {
    let old = start(&["--attachment-urls", "opaque"]);
    let shown = attach_logo(&old, ADA, "note", ADA_NOTE, "logo.png");
    let id = shown["id"].as_str().unwrap();
    assert_eq!(
        shown["url"],
        format!("{}/_emulator/files/{id}/logo.png", old.origin)
    );
    let out = crate::common::bin()
        .args(["emulator", "--listen", "127.0.0.1:0", "--opaque-links"])
        .args(["--attachment-urls", "presigned"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--opaque-links"), "{stderr}");
}

/// Two contacts: `ID` with 12 deals made on shuffled days, 3 calls made together (at the seed's
/// load) and no meeting; `ID2` with one deal and 2 meetings. Deals' ids follow the seed's order,
/// which is not the order they were made in.
fn records_seed(s: &Scratch) -> std::path::PathBuf {
    let deal = |i: u32, day: u32| {
        json!({"id": format!("d0{i:022x}"), "name": format!("deal {i}"),
            "created_at": format!("2024-01-{day:02}T10:00:00Z")})
    };
    let deals: Vec<Value> = (0..12).map(|i| deal(i, (i * 5) % 12 + 1)).collect();
    let calls: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("c0{i:022x}"), "text": format!("call {i}")}))
        .collect();
    let meetings: Vec<Value> = (0..2)
        .map(|i| json!({"id": format!("e0{i:022x}"), "text": format!("meeting {i}")}))
        .collect();
    let seed = json!({"contacts": [
        {"id": ID, "deals": deals, "calls": calls},
        {"id": ID2, "deals": [deal(99, 1)], "meetings": meetings},
    ]});
    s.file("seed.json", seed.to_string())
}

/// Every item of `GET /<plural>?<query>` a page of `per_page` at a time, pages in order; each
/// item checked to wrap one record of that type.
fn all_pages(emu: &Emulator, plural: &str, query: &str, per_page: u64) -> Vec<Value> {
    let singular = plural.trim_end_matches('s');
    let mut items = Vec::new();
    for page in 1.. {
        let data = ok_data(
            &emu.get(&format!(
                "/{plural}?{query}&page={page}&per_page={per_page}"
            )),
            200,
        );
        let keys: Vec<&str> = data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [plural, "total_count", "page", "per_page", "max_page"]
        );
        assert_eq!(
            (data["page"].as_u64(), data["per_page"].as_u64()),
            (Some(page), Some(per_page))
        );
        let total = data["total_count"].as_u64().unwrap();
        assert_eq!(
            data["max_page"].as_u64().unwrap(),
            total.div_ceil(per_page).max(1)
        );
        for item in data[plural].as_array().unwrap() {
            let keys: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, [singular], "each item wraps one {singular}");
            items.push(item[singular].clone());
        }
        if page >= data["max_page"].as_u64().unwrap() {
            assert_eq!(items.len() as u64, total, "{plural}?{query}");
            break;
        }
    }
    items
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn deals_calls_and_meetings_are_listed_per_contact_oldest_first_a_page_at_a_time() {
    let s = Scratch::new();
    let emu = Emulator::start_seeded(&records_seed(&s), &["--rate-limit", "off"], None);
    let mut by_day: Vec<(u32, u32)> = (0..12).map(|i| ((i * 5) % 12 + 1, i)).collect();
    by_day.sort();
    let deals: Vec<String> = by_day.iter().map(|(_, i)| format!("d0{i:022x}")).collect();
    let calls: Vec<String> = (0..3).map(|i| format!("c0{i:022x}")).collect();
    let meetings: Vec<String> = (0..2).map(|i| format!("e0{i:022x}")).collect();

    for per_page in [1, 5, 10, 100] {
        let listed = all_pages(&emu, "deals", &format!("contact_id={ID}"), per_page);
        assert_eq!(ids(&listed), deals, "oldest first, per_page {per_page}");
        let listed = all_pages(&emu, "calls", &format!("contact_id={ID}"), per_page);
        assert_eq!(ids(&listed), calls, "made together: in the seed's order");
    }
    let deal = &all_pages(&emu, "deals", &format!("contact_id={ID}"), 10)[0];
    assert_eq!(deal["contact_id"], ID);
    assert_eq!(deal["name"], "deal 0");
    assert_eq!(deal["created_at"], "2024-01-01T10:00:00Z");
    assert_eq!(deal["attachments"], json!([]));
    assert!(all_pages(&emu, "meetings", &format!("contact_id={ID}"), 10).is_empty());
    let theirs = all_pages(&emu, "meetings", &format!("contact_id={ID2}"), 1);
    assert_eq!(ids(&theirs), meetings);
    assert!(
        theirs
            .iter()
            .all(|m| m["contact_id"] == ID2 && m["text"].is_string())
    );

    // Without contact_id: every record of the type, whoever's.
    let every = all_pages(&emu, "deals", "", 100);
    assert_eq!(every.len(), 13);
    assert!(every.iter().any(|d| d["contact_id"] == ID2));

    // The second page of 5, and a page past the last.
    let second = ok_data(
        &emu.get(&format!("/deals?contact_id={ID}&page=2&per_page=5")),
        200,
    );
    let on_second: Vec<&str> = second["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deal"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(on_second, deals[5..10]);
    assert_eq!(
        (second["total_count"].as_u64(), second["max_page"].as_u64()),
        (Some(12), Some(3))
    );
    let past = ok_data(&emu.get(&format!("/calls?contact_id={ID}&page=2")), 200);
    assert_eq!(past["calls"], json!([]));

    // Attachments show in the listing as in the record's own GET.
    let attached = attach_logo(&emu, ID2, "meeting", &meetings[1], "agenda.png");
    let listed = all_pages(&emu, "meetings", &format!("contact_id={ID2}"), 10);
    assert_eq!(listed[1]["attachments"][0]["id"], attached["id"]);
    // The same but for the links' signatures and expiry, which are made at each answer's second.
    assert_eq!(
        unsigned(listed[1].clone()),
        unsigned(ok_data(&emu.get(&format!("/meetings/{}", meetings[1])), 200)["meeting"].clone())
    );

    for plural in ["deals", "calls", "meetings"] {
        let unknown = emu.get(&format!("/{plural}?contact_id=5a1b2c3d4e5f60718293a4ff"));
        assert_eq!(unknown.status, 404, "{}", unknown.body);
        assert_eq!(unknown.json()["error_name"], "resource_not_found");
        for bad in ["contact_id=", "per_page=101", "page=0"] {
            let refused = emu.get(&format!("/{plural}?{bad}"));
            assert_eq!(refused.status, 400, "{plural}?{bad}: {}", refused.body);
        }
    }
}

/// Sam Rivera in the sample seed: one note, made in 2024 (so old enough for any lag).
const SAM: &str = "9d4d92b4171e5211be70debe";
const SAM_NOTE: &str = "b690e418f67de6d22d2e0e1c";

/// The ids a notes listing of `contact` shows, and its `total_count`.
fn listed_notes(emu: &Emulator, contact: &str) -> (Vec<String>, u64) {
    let data = ok_data(
        &emu.get(&format!("/notes?contact_id={contact}&per_page=100")),
        200,
    );
    let notes: Vec<Value> = data["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["note"].clone())
        .collect();
    (ids(&notes), data["total_count"].as_u64().unwrap())
}

/// The attachment ids `GET /<plural>/<id>` shows.
fn attachments_of(emu: &Emulator, plural: &str, id: &str) -> Vec<String> {
    let data = ok_data(&emu.get(&format!("/{plural}/{id}")), 200);
    let record = &data[plural.trim_end_matches('s')];
    ids(record["attachments"].as_array().unwrap())
}

#[test]
fn list_lag_hides_a_fresh_note_and_fresh_attachments_until_the_clock_passes_it() {
    // An hour's lag, so that however slow this machine is, nothing ages past it unmoved.
    let emu = start(&["--list-lag", "3600"]);
    let note = ok_data(
        &emu.post("/notes", &json!({"contact_id": SAM, "text": "fresh"})),
        201,
    )["note"]
        .clone();
    let fresh = note["id"].as_str().unwrap().to_string();
    let on_note = attach_logo(&emu, SAM, "note", SAM_NOTE, "on-note.png");
    let on_deal = attach_logo(&emu, ADA, "deal", ADA_DEAL, "on-deal.png");
    let on_fresh = attach_logo(&emu, SAM, "note", &fresh, "on-fresh.png");
    assert!(on_note["id"].is_string(), "step 3 shows what it made");

    let hidden = |emu: &Emulator| {
        assert_eq!(listed_notes(emu, SAM), (vec![SAM_NOTE.to_string()], 1));
        assert!(attachments_of(emu, "notes", SAM_NOTE).is_empty());
        assert!(attachments_of(emu, "deals", ADA_DEAL).is_empty());
        let deals = all_pages(emu, "deals", &format!("contact_id={ADA}"), 10);
        assert_eq!(deals[0]["attachments"], json!([]));
        let listed = ok_data(&emu.get(&format!("/notes?contact_id={SAM}")), 200);
        assert_eq!(listed["notes"][0]["note"]["attachments"], json!([]));
        // The young note itself still answers, its young attachments hidden alike.
        let own = ok_data(&emu.get(&format!("/notes/{fresh}")), 200)["note"].clone();
        assert_eq!(own["text"], "fresh");
        assert_eq!(own["attachments"], json!([]));
    };
    hidden(&emu);
    // The state shows the truth.
    let state = emu.state();
    assert!(
        state["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == fresh.as_str())
    );
    assert_eq!(state["attachments"].as_array().unwrap().len(), 3);

    emu.advance_clock(1800);
    hidden(&emu);

    emu.advance_clock(1801);
    assert_eq!(
        listed_notes(&emu, SAM),
        (vec![SAM_NOTE.to_string(), fresh.clone()], 2),
        "past the lag the note is listed, oldest first"
    );
    assert_eq!(
        attachments_of(&emu, "notes", SAM_NOTE),
        [on_note["id"].as_str().unwrap()]
    );
    assert_eq!(
        attachments_of(&emu, "deals", ADA_DEAL),
        [on_deal["id"].as_str().unwrap()]
    );
    assert_eq!(
        attachments_of(&emu, "notes", &fresh),
        [on_fresh["id"].as_str().unwrap()]
    );
    let deals = all_pages(&emu, "deals", &format!("contact_id={ADA}"), 10);
    assert_eq!(deals[0]["attachments"][0]["id"], on_deal["id"]);
}

#[test]
fn list_lag_counts_a_seeded_note_without_created_at_as_made_at_load() {
    let emu = start(&["--list-lag", "60"]);
    assert_eq!(listed_notes(&emu, ADA), (vec![], 0));
    emu.advance_clock(61);
    assert_eq!(listed_notes(&emu, ADA).1, 2);
    let plain = start(&[]);
    assert_eq!(listed_notes(&plain, ADA).1, 2, "no lag hides nothing");
}

/// `record` with each attachment's presigned `url` cut before its query and without its
/// `url_expires_at` (both made at the second of the answer).
fn unsigned(mut record: Value) -> Value {
    for a in record["attachments"].as_array_mut().into_iter().flatten() {
        if let Some(url) = a["url"].as_str() {
            a["url"] = Value::from(url.split('?').next().unwrap_or_default());
        }
        if let Some(a) = a.as_object_mut() {
            a.remove("url_expires_at");
        }
    }
    record
}
