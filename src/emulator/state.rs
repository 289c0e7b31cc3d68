//! What the emulator holds: contacts, their notes, deals, calls and meetings, attachments, stored
//! objects and the account's storage; loaded from a seed file and shown whole by
//! `GET /_emulator/state`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::clock::iso;
use crate::onepagecrm::{ReferenceType, is_object_id, normalize_line_ends, parse_note_date};

/// Default account storage when a seed gives none: 1 GiB, as OnePageCRM gives one user.
pub const DEFAULT_QUOTA: u64 = 1 << 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub quota: Option<u64>,
    pub storage_left: Option<u64>,
    #[serde(default)]
    pub contacts: Vec<SeedContact>,
    pub generate: Option<Generate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedContact {
    pub id: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub company_name: String,
    #[serde(default)]
    pub notes: Vec<SeedRecord>,
    #[serde(default)]
    pub deals: Vec<SeedRecord>,
    #[serde(default)]
    pub calls: Vec<SeedRecord>,
    #[serde(default)]
    pub meetings: Vec<SeedRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRecord {
    pub id: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub name: String,
    pub amount: Option<f64>,
    /// A note's `date`, `YYYY-MM-DD`; the day of its `created_at` by default.
    pub date: Option<String>,
    /// When the record was made (RFC 3339, e.g. `2026-01-31T09:30:00Z`); the moment the seed is
    /// loaded by default. A seeded note made before a run is one the run did not create.
    pub created_at: Option<String>,
}

/// Many records declared at once, for benchmarks: ids follow from the indexes (see
/// `samples/README.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub contacts: u64,
    #[serde(default)]
    pub notes: u64,
    #[serde(default)]
    pub deals: u64,
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub meetings: u64,
}

/// The id of generated contact `k`.
pub fn generated_contact_id(k: u64) -> String {
    format!("cc{k:022x}")
}

/// The id of generated record `j` of type `t` of contact `k`.
pub fn generated_record_id(t: ReferenceType, k: u64, j: u64) -> String {
    let prefix = match t {
        ReferenceType::Note => "a0",
        ReferenceType::Deal => "d0",
        ReferenceType::Call => "c0",
        ReferenceType::Meeting => "e0",
    };
    format!("{prefix}{k:010x}{j:012x}")
}

#[derive(Clone, Debug, Serialize)]
pub struct Contact {
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub company_name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ReferenceType,
    pub contact_id: String,
    /// A note's text as stored: line ends made `\n` (`onepagecrm::normalize_line_ends`).
    pub text: String,
    /// A note's `date` (`YYYY-MM-DD`); none for deals, calls and meetings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    pub created_at: String,
    /// The order records were made in (the seed's order, then the API's): lists of notes go
    /// oldest first by `created_at`, then by this.
    #[serde(skip)]
    pub seq: u64,
    /// Attachment ids, in the order they were attached.
    pub attachments: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub id: String,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    pub contact_id: String,
    pub filename: String,
    pub size: u64,
    pub key: String,
    pub md5: String,
    pub created_at: String,
    /// When it was pinned to its contact (`PATCH /attachments/{id}/pin`); none when not pinned.
    pub pinned_at: Option<String>,
    /// A link attachment (`POST /attachments` with `link_type` and `external_url`): no object,
    /// no key, nothing taken from the storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    /// When it was deleted (`DELETE /attachments/{id}` or of its note), by the emulator's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

/// Where a link attachment's file is: its `storage_provider` (the request's `link_type`) and URL.
#[derive(Clone, Debug, Serialize)]
pub struct Link {
    pub storage_provider: String,
    pub external_url: String,
}

impl Attachment {
    /// The bytes it takes from the account's storage: its size, none for a link.
    pub fn charged(&self) -> u64 {
        if self.link.is_some() { 0 } else { self.size }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub md5: String,
    #[serde(skip)]
    pub body: Body,
}

/// Where an object's bytes are: in memory, or a file under `--data-dir`.
#[derive(Clone, Debug)]
pub enum Body {
    Memory(std::sync::Arc<Vec<u8>>),
    File(PathBuf),
}

/// A seeded record's text, `date` and `created_at` as the emulator keeps them: a note's text with
/// its line ends made `\n`, its date checked (`YYYY-MM-DD`) or the day of its `created_at`;
/// `created_at` checked (RFC 3339) and written as the API writes it, or `now`.
fn seed_times(
    kind: ReferenceType,
    id: &str,
    text: String,
    date: Option<String>,
    created_at: Option<String>,
    now: &str,
) -> anyhow::Result<(String, Option<String>, String)> {
    let created_at = match created_at {
        None => now.to_string(),
        Some(t) => iso(DateTime::parse_from_rfc3339(&t)
            .map_err(|_| {
                anyhow::anyhow!("{kind} {id}: created_at {t:?} is not an RFC 3339 moment")
            })?
            .with_timezone(&Utc)),
    };
    if kind != ReferenceType::Note {
        anyhow::ensure!(date.is_none(), "{kind} {id}: only notes have a date");
        return Ok((text, None, created_at));
    }
    let date = match date {
        None => created_at[..10].to_string(),
        Some(d) => {
            anyhow::ensure!(
                parse_note_date(&d).is_some(),
                "note {id}: date {d:?} is not YYYY-MM-DD"
            );
            d
        }
    };
    Ok((normalize_line_ends(&text), Some(date), created_at))
}

#[derive(Debug, Default)]
pub struct State {
    pub quota: u64,
    pub storage_left: u64,
    pub contacts: BTreeMap<String, Contact>,
    pub records: HashMap<(ReferenceType, String), Record>,
    pub attachments: BTreeMap<String, Attachment>,
    /// Deleted attachments whose bytes still count against the storage (OnePageCRM keeps a
    /// deleted file a while), until `--purge-after` has passed since `deleted_at`.
    pub deleted: BTreeMap<String, (DateTime<Utc>, Attachment)>,
    pub objects: BTreeMap<String, Object>,
    /// Requests by "METHOD route status".
    pub requests: BTreeMap<String, u64>,
    pub throttled: u64,
    /// With `--single-use-forms`: the step-1 timestamps handed out, and the keys made from them.
    pub forms: FormLedger,
    next_id: u64,
    next_seq: u64,
    id_epoch: u64,
}

/// `--single-use-forms`, one form, one upload. Per contact, each `timestamp` step 1 handed out,
/// with how many forms carried it and the distinct keys attached from it so far. A key is *made
/// from* a handed-out timestamp T when its timestamp part (between `<contact>/` and the next `/`)
/// starts with T's digits (the longest such T if several). Step 3 refuses a key made from T that
/// is not attached yet when as many distinct keys made from T are attached as forms carried T
/// (with one form a second, the usual case: when another key from that form is attached). Keys
/// made from no handed-out timestamp, and a key attached again, are not refused.
#[derive(Debug, Default)]
pub struct FormLedger {
    by_contact: HashMap<String, BTreeMap<i64, (u64, BTreeSet<String>)>>,
}

impl FormLedger {
    /// Step 1 handed `contact` a form with `timestamp`.
    pub fn handed_out(&mut self, contact: &str, timestamp: i64) {
        let entry = self
            .by_contact
            .entry(contact.to_string())
            .or_default()
            .entry(timestamp)
            .or_default();
        entry.0 += 1;
    }

    /// The handed-out timestamp `key` is made from, if any.
    fn made_from(&self, contact: &str, key: &str) -> Option<i64> {
        let stamp = key
            .strip_prefix(contact)?
            .strip_prefix('/')?
            .split('/')
            .next()?;
        self.by_contact
            .get(contact)?
            .keys()
            .filter(|t| stamp.starts_with(&t.to_string()))
            .max_by_key(|t| t.to_string().len())
            .copied()
    }

    /// `Err(timestamp)` when `key` would be one upload too many from the forms that carried it.
    pub fn check(&self, contact: &str, key: &str) -> Result<(), i64> {
        let Some(t) = self.made_from(contact, key) else {
            return Ok(());
        };
        let (forms, keys) = &self.by_contact[contact][&t];
        if keys.contains(key) || (keys.len() as u64) < *forms {
            Ok(())
        } else {
            Err(t)
        }
    }

    /// `key` of `contact` was attached.
    pub fn attached(&mut self, contact: &str, key: &str) {
        if let Some(t) = self.made_from(contact, key)
            && let Some((_, keys)) = self
                .by_contact
                .get_mut(contact)
                .and_then(|stamps| stamps.get_mut(&t))
        {
            keys.insert(key.to_string());
        }
    }
}

impl State {
    /// No contacts, the default storage; new ids start from `now`.
    pub fn empty(now: DateTime<Utc>) -> Self {
        let id_epoch = now.timestamp() as u64;
        Self {
            quota: DEFAULT_QUOTA,
            storage_left: DEFAULT_QUOTA,
            id_epoch,
            ..Default::default()
        }
    }

    /// The seed's records, made at `now`.
    pub fn from_seed_file(path: &Path, now: DateTime<Utc>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read seed file {}", path.display()))?;
        let seed: Seed = serde_json::from_str(&text)
            .with_context(|| format!("seed file {} is not valid", path.display()))?;
        Self::from_seed(seed, now)
            .with_context(|| format!("seed file {} is not valid", path.display()))
    }

    pub fn from_seed(seed: Seed, now: DateTime<Utc>) -> anyhow::Result<Self> {
        let mut state = Self::empty(now);
        state.quota = seed.quota.unwrap_or(DEFAULT_QUOTA);
        state.storage_left = seed.storage_left.unwrap_or(state.quota);
        let now = iso(now);
        for c in seed.contacts {
            anyhow::ensure!(
                is_object_id(&c.id),
                "contact id {:?} is not 24 hex digits",
                c.id
            );
            let lists = [
                (ReferenceType::Note, c.notes),
                (ReferenceType::Deal, c.deals),
                (ReferenceType::Call, c.calls),
                (ReferenceType::Meeting, c.meetings),
            ];
            for (kind, records) in lists {
                for r in records {
                    anyhow::ensure!(
                        is_object_id(&r.id),
                        "{kind} id {:?} is not 24 hex digits",
                        r.id
                    );
                    let text = if r.text.is_empty() { r.name } else { r.text };
                    let (text, date, created_at) =
                        seed_times(kind, &r.id, text, r.date, r.created_at, &now)?;
                    let record = Record {
                        id: r.id.clone(),
                        kind,
                        contact_id: c.id.clone(),
                        text,
                        date,
                        created_at,
                        seq: state.next_seq(),
                        attachments: Vec::new(),
                    };
                    anyhow::ensure!(
                        state.records.insert((kind, r.id.clone()), record).is_none(),
                        "{kind} {} is listed twice",
                        r.id
                    );
                }
            }
            let contact = Contact {
                id: c.id.clone(),
                first_name: c.first_name,
                last_name: c.last_name,
                email: c.email,
                company_name: c.company_name,
            };
            anyhow::ensure!(
                state.contacts.insert(c.id.clone(), contact).is_none(),
                "contact {} is listed twice",
                c.id
            );
        }
        if let Some(g) = seed.generate {
            state.generate(&g, &now);
        }
        Ok(state)
    }

    fn generate(&mut self, g: &Generate, now: &str) {
        for k in 0..g.contacts {
            let id = generated_contact_id(k);
            let contact = Contact {
                id: id.clone(),
                first_name: "Contact".into(),
                last_name: k.to_string(),
                email: format!("contact{k}@generated.example"),
                company_name: String::new(),
            };
            self.contacts.insert(id.clone(), contact);
            for (kind, n) in [
                (ReferenceType::Note, g.notes),
                (ReferenceType::Deal, g.deals),
                (ReferenceType::Call, g.calls),
                (ReferenceType::Meeting, g.meetings),
            ] {
                for j in 0..n {
                    let rid = generated_record_id(kind, k, j);
                    let record = Record {
                        id: rid.clone(),
                        kind,
                        contact_id: id.clone(),
                        text: String::new(),
                        date: (kind == ReferenceType::Note).then(|| now[..10].to_string()),
                        created_at: now.to_string(),
                        seq: self.next_seq(),
                        attachments: Vec::new(),
                    };
                    self.records.insert((kind, rid), record);
                }
            }
        }
    }

    /// A fresh 24-hex-digit id: seconds at start, then a counter, as MongoDB ids are made.
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:08x}{:016x}", self.id_epoch as u32, self.next_id)
    }

    /// The next number in the order records are made in.
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A contact's records of type `kind`, or every one when `contact_id` is none, oldest first
    /// (`created_at`, then the order they were made in), as the API lists them.
    pub fn records_of(&self, kind: ReferenceType, contact_id: Option<&str>) -> Vec<&Record> {
        let mut records: Vec<&Record> = self
            .records
            .values()
            .filter(|r| r.kind == kind)
            .filter(|r| contact_id.is_none_or(|c| r.contact_id == c))
            .collect();
        records.sort_by(|a, b| (&a.created_at, a.seq).cmp(&(&b.created_at, b.seq)));
        records
    }

    /// Deletes attachment `id` at `now`: gone from its record and every listing, its bytes
    /// still counted until purged. False when no attachment has that id.
    pub fn delete_attachment(&mut self, id: &str, now: DateTime<Utc>) -> bool {
        let Some(mut a) = self.attachments.remove(id) else {
            return false;
        };
        if let Some(record) = self
            .records
            .get_mut(&(a.reference_type, a.reference_id.clone()))
        {
            record.attachments.retain(|x| x != id);
        }
        a.deleted_at = Some(iso(now));
        self.deleted.insert(id.to_string(), (now, a));
        true
    }

    /// Gives back the storage of every deleted attachment deleted at least `after` before
    /// `now` (`--purge-after`; never when none).
    pub fn purge(&mut self, now: DateTime<Utc>, after: Option<std::time::Duration>) {
        let Some(after) = after else { return };
        if self.deleted.is_empty() {
            return;
        }
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let due: Vec<String> = self
            .deleted
            .iter()
            .filter(|(_, (at, _))| at.checked_add_signed(after).is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some((_, a)) = self.deleted.remove(&id) {
                self.storage_left = self.storage_left.saturating_add(a.charged());
            }
        }
    }

    pub fn count(&mut self, key: String) {
        *self.requests.entry(key).or_default() += 1;
    }

    /// An attachment as the API shows it: the OpenAPI `Attachment` (no `key` field), with its
    /// `url` made by `App::attachment_url` at `now`, valid until `url_expires_at`.
    pub fn attachment_json(&self, a: &Attachment, url: String, now: DateTime<Utc>) -> Value {
        let mut v = json!({
            "id": a.id,
            "filename": a.filename,
            "pinned": a.pinned_at.is_some(),
            "pinned_at": a.pinned_at,
            "size": a.size,
            "storage_provider": "amazon",
            "url": url,
            "url_expires_at": iso(now + chrono::Duration::seconds(super::ATTACHMENT_URL_SECONDS as i64)),
        });
        if let (Some(link), Value::Object(v)) = (&a.link, &mut v) {
            // A link's URL is the one it was given; it does not expire.
            v.insert(
                "storage_provider".into(),
                link.storage_provider.clone().into(),
            );
            v.insert("url".into(), link.external_url.clone().into());
            v.remove("url_expires_at");
        }
        v
    }

    /// Everything the emulator holds, for tests and people (`GET /_emulator/state`).
    pub fn snapshot(&self) -> Value {
        let mut records: Vec<&Record> = self.records.values().collect();
        records.sort_by(|a, b| {
            (a.contact_id.as_str(), a.kind.as_str(), a.id.as_str()).cmp(&(
                b.contact_id.as_str(),
                b.kind.as_str(),
                b.id.as_str(),
            ))
        });
        json!({
            "quota": self.quota,
            "storage_left": self.storage_left,
            "contacts": self.contacts.values().collect::<Vec<_>>(),
            "records": records,
            "notes": self.records_of(ReferenceType::Note, None),
            "attachments": self.attachments.values().collect::<Vec<_>>(),
            "deleted_attachments": self.deleted.values().map(|(_, a)| a).collect::<Vec<_>>(),
            "objects": self.objects.values().collect::<Vec<_>>(),
            "requests": self.requests,
            "throttled": self.throttled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_file_counts_until_purge_after_and_a_link_never_counts() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-31T09:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut state = State::empty(t0);
        let attachment = |id: &str, link: bool| Attachment {
            id: id.into(),
            reference_type: ReferenceType::Note,
            reference_id: "n".into(),
            contact_id: "c".into(),
            filename: "f".into(),
            size: 100,
            key: String::new(),
            md5: String::new(),
            created_at: iso(t0),
            pinned_at: None,
            link: link.then(|| Link {
                storage_provider: "dropbox".into(),
                external_url: "https://x/f".into(),
            }),
            deleted_at: None,
        };
        state.storage_left -= 100;
        state.attachments.insert("a".into(), attachment("a", false));
        state.attachments.insert("l".into(), attachment("l", true));
        assert!(state.delete_attachment("a", t0));
        assert!(state.delete_attachment("l", t0));
        assert!(!state.delete_attachment("a", t0), "once");
        let left = DEFAULT_QUOTA - 100;
        let after = Some(std::time::Duration::from_secs(60));
        state.purge(t0 + chrono::Duration::seconds(600), None);
        assert_eq!(state.storage_left, left, "never without --purge-after");
        state.purge(t0 + chrono::Duration::seconds(59), after);
        assert_eq!(state.storage_left, left);
        state.purge(t0 + chrono::Duration::seconds(60), after);
        assert_eq!(
            state.storage_left, DEFAULT_QUOTA,
            "the file's 100, the link's none"
        );
        assert!(state.deleted.is_empty());
    }

    #[test]
    fn single_use_forms_one_form_one_upload() {
        let mut ledger = FormLedger::default();
        let c = "cc01";
        ledger.handed_out(c, 1_697_212_380);
        let first = "cc01/1697212380000000000001/a.pdf";
        let second = "cc01/1697212380000000000002/b.pdf";
        assert_eq!(ledger.check(c, first), Ok(()));
        ledger.attached(c, first);
        assert_eq!(ledger.check(c, first), Ok(()), "the same key again");
        assert_eq!(ledger.check(c, second), Err(1_697_212_380));
        // A second form with the same timestamp (the same second) carries one more upload.
        ledger.handed_out(c, 1_697_212_380);
        assert_eq!(ledger.check(c, second), Ok(()));
        ledger.attached(c, second);
        assert!(
            ledger
                .check(c, "cc01/1697212380000000000003/c.pdf")
                .is_err()
        );
        // Another form's timestamp, another contact, a stamp no form handed out: not refused.
        ledger.handed_out(c, 1_697_212_381);
        assert_eq!(ledger.check(c, "cc01/1697212381000000000003/c.pdf"), Ok(()));
        assert_eq!(
            ledger.check("cc02", "cc02/1697212380000000000003/c.pdf"),
            Ok(())
        );
        assert_eq!(ledger.check(c, "cc01/1697212999123/c.pdf"), Ok(()));
    }

    #[test]
    fn sample_seed_loads_every_record() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/emulator-seed.json");
        let state = State::from_seed_file(&path, Utc::now()).unwrap();
        assert_eq!(state.contacts.len(), 6);
        assert_eq!(state.records.len(), 4 * 5 + 1);
        assert_eq!(state.storage_left, 214_692_599_468);
        let sharing: Vec<&str> = state
            .contacts
            .values()
            .filter(|c| c.email.eq_ignore_ascii_case("office@twin-desk.example"))
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(sharing.len(), 2, "two contacts share one email");
        let sam = &state.records[&(ReferenceType::Note, "b690e418f67de6d22d2e0e1c".into())];
        assert_eq!(sam.date.as_deref(), Some("2024-03-15"));
        assert_eq!(sam.created_at, "2024-03-15T10:30:00Z");
    }

    #[test]
    fn seeded_notes_keep_their_date_and_created_at_and_default_to_the_load() {
        let seed = r#"{"contacts": [{"id": "5a1b2c3d4e5f60718293a4b5",
            "notes": [{"id": "5a1b2c3d4e5f60718293a4c1", "text": "a\r\nb\rc"},
                      {"id": "5a1b2c3d4e5f60718293a4c2", "text": "x", "created_at": "2025-12-31T23:30:00-01:00"},
                      {"id": "5a1b2c3d4e5f60718293a4c3", "text": "y", "date": "2020-02-29"}],
            "deals": [{"id": "5a1b2c3d4e5f60718293a4d1", "name": "d"}]}]}"#;
        let now = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let state = State::from_seed(serde_json::from_str(seed).unwrap(), now).unwrap();
        let note = |id: &str| &state.records[&(ReferenceType::Note, id.to_string())];
        let a = note("5a1b2c3d4e5f60718293a4c1");
        assert_eq!(a.text, "a\nb\nc", "line ends made \\n");
        assert_eq!(
            (a.date.as_deref(), a.created_at.as_str()),
            (Some("2026-11-30"), "2026-11-30T08:00:00Z")
        );
        let x = note("5a1b2c3d4e5f60718293a4c2");
        assert_eq!(
            (x.date.as_deref(), x.created_at.as_str()),
            (Some("2026-01-01"), "2026-01-01T00:30:00Z"),
            "created_at in UTC; the date is its UTC day"
        );
        let y = note("5a1b2c3d4e5f60718293a4c3");
        assert_eq!(y.date.as_deref(), Some("2020-02-29"));
        let deal = &state.records[&(ReferenceType::Deal, "5a1b2c3d4e5f60718293a4d1".into())];
        assert_eq!(deal.date, None);
        let order: Vec<&str> = state
            .records_of(ReferenceType::Note, Some("5a1b2c3d4e5f60718293a4b5"))
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "5a1b2c3d4e5f60718293a4c2",
                "5a1b2c3d4e5f60718293a4c1",
                "5a1b2c3d4e5f60718293a4c3"
            ],
            "oldest first, then in the seed's order"
        );
    }

    #[test]
    fn seeded_dates_and_moments_are_checked() {
        let with = |field: &str| {
            format!(
                r#"{{"contacts": [{{"id": "5a1b2c3d4e5f60718293a4b5", "notes": [{{"id": "5a1b2c3d4e5f60718293a4c1", {field}}}]}}]}}"#
            )
        };
        for bad in [
            with(r#""date": "2024-2-1""#),
            with(r#""date": "2023-02-29""#),
            with(r#""created_at": "2024-02-01""#),
            with(r#""created_at": "yesterday""#),
            r#"{"contacts": [{"id": "5a1b2c3d4e5f60718293a4b5", "calls": [{"id": "5a1b2c3d4e5f60718293a4c1", "date": "2024-02-01"}]}]}"#.to_string(),
        ] {
            let seed: Seed = serde_json::from_str(&bad).unwrap();
            assert!(State::from_seed(seed, Utc::now()).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_records_have_distinct_valid_ids() {
        let seed: Seed =
            serde_json::from_str(r#"{"generate": {"contacts": 3, "notes": 2, "deals": 1}}"#)
                .unwrap();
        let state = State::from_seed(seed, Utc::now()).unwrap();
        assert_eq!(state.contacts.len(), 3);
        assert_eq!(state.records.len(), 9);
        let id = generated_record_id(ReferenceType::Note, 2, 1);
        assert!(is_object_id(&id));
        assert_eq!(
            state.records[&(ReferenceType::Note, id)].contact_id,
            generated_contact_id(2)
        );
        assert!(is_object_id(&generated_contact_id(2)));
    }

    #[test]
    fn bad_seeds_are_refused() {
        let dup = r#"{"contacts": [{"id": "5a1b2c3d4e5f60718293a4b5"}, {"id": "5a1b2c3d4e5f60718293a4b5"}]}"#;
        assert!(State::from_seed(serde_json::from_str(dup).unwrap(), Utc::now()).is_err());
        let short = r#"{"contacts": [{"id": "abc"}]}"#;
        assert!(State::from_seed(serde_json::from_str(short).unwrap(), Utc::now()).is_err());
        assert!(serde_json::from_str::<Seed>(r#"{"contcts": []}"#).is_err());
    }
}
