//! `opcrm-import rehearse`: the user's own migration, whole, against the built-in emulator seeded
//! from the manifest itself, so that a newcomer sees what the real one will do before it sends
//! anything: the contacts it names (by id, and by email: each email becomes one contact), the
//! records its rows attach to (each under the first contact that names it), room for every file.
//! The run is `run`'s own, with its checks, progress and summary, on a temporary state file (the
//! real migration's is not touched); then what the account would hold, and how long the real
//! run takes at OnePageCRM's rate. Nothing leaves this machine.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write as _;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::ExitStatus;
use crate::cli::RehearseArgs;
use crate::emulator::{self, Config, DEMO_API_KEY, DEMO_USER_ID};
use crate::error::CommandResult;
use crate::manifest::{ReadOptions, email_key};
use crate::onepagecrm::ReferenceType;
use crate::preflight::{Checked, human_bytes};
use crate::remote::Credentials;
use crate::run::{self, Remote, RunConfig};

pub fn run(args: &RehearseArgs) -> CommandResult {
    let manifest = args.manifest.manifest.clone();
    let read = ReadOptions {
        delimiter: args.manifest.delimiter,
    };
    let checked = crate::preflight::check(&manifest, read);
    let seed = Seed::of(&checked);
    drop(checked);
    let temp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let seed_path = temp.path().join("seed.json");
    std::fs::write(&seed_path, seed.json().to_string()).context("cannot write the seed")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut config = Config::new("127.0.0.1:0".parse().expect("an address"));
    config.seed = Some(seed_path);
    config.user_id = DEMO_USER_ID.into();
    config.api_key = DEMO_API_KEY.into();
    // The files' bytes go to the temporary folder, not to memory.
    config.data_dir = Some(temp.path().join("data"));
    config.rate_limit = None;
    let emu = runtime.block_on(emulator::start(config))?;
    let url = reqwest::Url::parse(&emu.app.api_base()).map_err(anyhow::Error::from)?;
    let remote = Remote {
        url,
        credentials: Credentials::new(DEMO_USER_ID.into(), DEMO_API_KEY.into()),
    };
    let mut cfg = RunConfig::defaults(manifest, temp.path().join("rehearsal.sqlite"), remote);
    cfg.read = read;
    cfg.json = args.json;
    cfg.no_progress = args.no_progress;
    cfg.choices.skip_invalid = args.skip_invalid;
    // The emulator does not throttle: the rehearsal takes as long as the machine needs, and the
    // real run's time is told from the calls it made.
    cfg.settings.rate = None;
    if !args.json {
        say(&seed.describe(&cfg.manifest))?;
    }
    let status = run::run_with(&cfg);
    // The API's requests (not S3's), as the emulator counted them.
    let requests: u64 = emu
        .app
        .state()
        .requests
        .iter()
        .filter(|(route, _)| route.contains("/api/v3"))
        .map(|(_, n)| n)
        .sum();
    let holdings = emu.app.state().snapshot();
    runtime.block_on(emu.stop());
    let status = status?;
    if !args.json && status != ExitStatus::Usage {
        say(&holdings_text(&holdings, requests))?;
    }
    Ok(status)
}

fn say(text: &str) -> std::io::Result<()> {
    crate::error::ignore_broken_pipe(writeln!(std::io::stdout(), "{text}"))
}

/// The emulator's seed made from a manifest: every contact and record its rows name.
#[derive(Default)]
struct Seed {
    /// Contact id → its email (empty when named by id) and its records by type.
    contacts: BTreeMap<String, SeedContact>,
    /// Record (type, id) → the contact that holds it (the first that names it).
    records: HashMap<(ReferenceType, String), String>,
    by_email: usize,
    bytes: u64,
}

#[derive(Default)]
struct SeedContact {
    email: String,
    records: BTreeMap<&'static str, Vec<String>>,
}

impl Seed {
    fn of(checked: &Checked) -> Self {
        let mut seed = Seed::default();
        for (row, facts) in checked.manifest.rows.iter().zip(&checked.files) {
            seed.bytes += facts.as_ref().map_or(0, |f| f.size);
            let contact = match (row.contact_id.is_empty(), row.contact_email.is_empty()) {
                (false, _) => row.contact_id.clone(),
                (true, false) => seed.by_email(&row.contact_email),
                (true, true) => continue,
            };
            let entry = seed.contacts.entry(contact.clone()).or_default();
            // A row that creates its note names no record: the run makes the note.
            let (Some(t), false) = (row.reference_type, row.reference_id.is_empty()) else {
                continue;
            };
            let key = (t, row.reference_id.clone());
            if seed.records.contains_key(&key) {
                continue;
            }
            entry
                .records
                .entry(plural(t))
                .or_default()
                .push(row.reference_id.clone());
            seed.records.insert(key, contact);
        }
        seed
    }

    /// The contact an email stands for: one per email (any case), with an id made from it.
    fn by_email(&mut self, email: &str) -> String {
        let key = email_key(email);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let id = format!("e0{:022x}", u128::from(hasher.finish()));
        let contact = self.contacts.entry(id.clone()).or_default();
        if contact.email.is_empty() {
            contact.email = key;
            self.by_email += 1;
        }
        id
    }

    fn json(&self) -> Value {
        let contacts: Vec<Value> = self
            .contacts
            .iter()
            .map(|(id, c)| {
                let mut contact = json!({
                    "id": id,
                    "first_name": "Rehearsal",
                    "last_name": "Contact",
                    "email": c.email,
                });
                for (kind, ids) in &c.records {
                    let records: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"id": id, "text": "Seeded for the rehearsal", "name": "Seeded for the rehearsal"}))
                        .collect();
                    contact[*kind] = Value::Array(records);
                }
                contact
            })
            .collect();
        // Room for every file twice over, and a gigabyte: the storage is never what stops it.
        let quota = self.bytes.saturating_mul(2).saturating_add(1 << 30);
        json!({"quota": quota, "storage_left": quota, "contacts": contacts})
    }

    fn describe(&self, manifest: &std::path::Path) -> String {
        format!(
            "Rehearsal of {} against the built-in emulator, seeded from the manifest itself: {} contacts ({} by email), {} records, room for {}. Nothing leaves this machine, and the migration's own state file is not touched.\n",
            manifest.display(),
            self.contacts.len(),
            self.by_email,
            self.records.len(),
            human_bytes(self.bytes)
        )
    }
}

fn plural(t: ReferenceType) -> &'static str {
    match t {
        ReferenceType::Note => "notes",
        ReferenceType::Deal => "deals",
        ReferenceType::Call => "calls",
        ReferenceType::Meeting => "meetings",
    }
}

/// What the account would hold after the real run, and how long that run would take.
fn holdings_text(state: &Value, requests: u64) -> String {
    let attachments = state["attachments"].as_array().map_or(0, Vec::len);
    let bytes: u64 = state["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["size"].as_u64())
        .sum();
    let notes = state["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["text"].as_str() != Some("Seeded for the rehearsal"))
        .count();
    let api_calls = requests;
    let seconds = api_calls as f64 / crate::pipeline::DEFAULT_RATE;
    format!(
        "\nThe account would then hold {attachments} new attachments ({}) and {notes} new notes. The real run makes about {api_calls} API calls: at the tool's pace under OnePageCRM's limit ({} requests/s) about {}.",
        human_bytes(bytes),
        crate::pipeline::DEFAULT_RATE,
        crate::progress::human_duration(std::time::Duration::from_secs_f64(seconds))
    )
}
