//! What the emulator holds: contacts, their notes, deals, calls and meetings, attachments, stored
//! objects and the account's storage; loaded from a seed file and shown whole by
//! `GET /_emulator/state`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::clock::iso;
use crate::onepagecrm::{ReferenceType, is_object_id};

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
    /// A note's date (`YYYY-MM-DD`); its creation day by default.
    pub date: Option<String>,
    /// When the record was made (RFC 3339); the emulator's start by default. A note made long
    /// before a run, to rehearse one that must not be taken for the run's own.
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
    pub text: String,
    /// A note's date as given (`YYYY-MM-DD`); `None`: its creation day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    pub created_at: String,
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

#[derive(Debug, Default)]
pub struct State {
    pub quota: u64,
    pub storage_left: u64,
    pub contacts: BTreeMap<String, Contact>,
    pub records: HashMap<(ReferenceType, String), Record>,
    pub attachments: BTreeMap<String, Attachment>,
    pub objects: BTreeMap<String, Object>,
    /// Requests by "METHOD route status".
    pub requests: BTreeMap<String, u64>,
    pub throttled: u64,
    next_id: u64,
    id_epoch: u64,
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
                    let record = Record {
                        id: r.id.clone(),
                        kind,
                        contact_id: c.id.clone(),
                        text,
                        date: r.date,
                        created_at: r.created_at.unwrap_or_else(|| now.clone()),
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
                        date: None,
                        created_at: now.to_string(),
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

    pub fn count(&mut self, key: String) {
        *self.requests.entry(key).or_default() += 1;
    }

    /// An attachment as the API shows it: the OpenAPI `Attachment` (no `key` field), with its
    /// `url` made by `App::attachment_url` at `now`, valid until `url_expires_at`.
    pub fn attachment_json(&self, a: &Attachment, url: String, now: DateTime<Utc>) -> Value {
        json!({
            "id": a.id,
            "filename": a.filename,
            "size": a.size,
            "storage_provider": "amazon",
            "url": url,
            "url_expires_at": iso(now + chrono::Duration::seconds(super::ATTACHMENT_URL_SECONDS as i64)),
        })
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
            "attachments": self.attachments.values().collect::<Vec<_>>(),
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
    fn sample_seed_loads_every_record() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/emulator-seed.json");
        let state = State::from_seed_file(&path, Utc::now()).unwrap();
        assert_eq!(state.contacts.len(), 4);
        assert_eq!(state.records.len(), 4 * 5);
        assert_eq!(state.storage_left, 214_692_599_468);
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
