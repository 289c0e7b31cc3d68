//! Upload forms (step 1's answers), and reusing one for a contact's next files (`--form-reuse`).
//!
//! An S3 POST policy holds for every upload that meets its conditions until it expires. The form
//! OnePageCRM hands out leaves the key open below `<contact>/` (a `starts-with` condition), so
//! while it lives one form can carry many of that contact's files, each under a key of its own:
//! about one API call per file (the attach) instead of two. A form is reused only when its policy
//! says so and it has a safe margin left (see [`reuse_window`]); a policy that binds the exact key,
//! or that cannot be read, means one form per file.
//!
//! Forms are kept per contact, one at a time: the rows of a contact run one after another in the
//! plan (see `pipeline::schedule`), so a contact's form is dropped when its last row has ended.
//! Workers of one contact wait for the form one of them is fetching instead of fetching their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::remote::api::Form;

/// `--form-reuse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FormReuse {
    /// Reuse a contact's form for its next files while the form's policy allows it.
    #[default]
    Auto,
    /// One form per file.
    Off,
}

/// The least time a form must have left before its expiration to carry another upload: an upload
/// that starts then has at least this long to reach S3 (S3 judges the policy when the request
/// arrives). A tenth of the form's lifetime when that is longer (6 minutes of OnePageCRM's hour).
pub const MIN_REUSE_MARGIN: Duration = Duration::from_secs(60);

/// How long a form whose policy cannot be read (or binds the key) may wait, fetched but unused
/// (the quota check's), before the row it is handed to takes it: forms last minutes at least.
const UNUSED_FORM_LIFE: Duration = Duration::from_secs(60);

/// How long after it was received `form` may still carry uploads (until the safe margin before
/// its expiration), or why it may carry only one.
///
/// The expiration is read against the server's clock (the answer's `timestamp`) and against
/// `wall_now` (ours), whichever leaves less, so that neither clock running ahead or behind makes
/// a form look younger than it is. The margin is the larger of [`MIN_REUSE_MARGIN`] and a tenth
/// of that life (read as the form arrives: its lifetime).
pub fn reuse_window(form: &Form, wall_now: DateTime<Utc>) -> Result<Duration, String> {
    reuse_window_of(form, &read_life(form, wall_now)?)
}

/// What a form's policy says of its life: the time it has left, and its conditions.
struct Life {
    left: Duration,
    conditions: Vec<Value>,
}

/// Reads `form`'s policy (base64 JSON): its expiration, against both clocks (see
/// [`reuse_window`]), and its conditions.
fn read_life(form: &Form, wall_now: DateTime<Utc>) -> Result<Life, String> {
    let policy = form
        .fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("policy"))
        .map(|(_, v)| v.as_str())
        .ok_or("the form has no policy")?;
    let policy = base64::engine::general_purpose::STANDARD
        .decode(policy.trim())
        .map_err(|_| "the policy is not base64")?;
    let policy: Value =
        serde_json::from_slice(&policy).map_err(|_| "the policy is not a JSON document")?;
    let expiration = policy
        .get("expiration")
        .and_then(Value::as_str)
        .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        .map(|e| e.with_timezone(&Utc))
        .ok_or("the policy has no readable expiration")?;
    let conditions = policy
        .get("conditions")
        .and_then(Value::as_array)
        .ok_or("the policy has no conditions")?
        .clone();
    let issued = DateTime::from_timestamp(form.timestamp, 0).ok_or("no readable timestamp")?;
    // Read as the form arrives, what is left is its lifetime (a server's timestamp far in the
    // past would otherwise make it look long-lived and its margin huge). Expired: nothing left.
    let by_server = (expiration - issued).to_std().unwrap_or_default();
    let left = by_server.min((expiration - wall_now).to_std().unwrap_or_default());
    Ok(Life { left, conditions })
}

/// How long a form of `life` may carry uploads: while every key condition is a prefix the
/// tool's keys meet, until the safe margin before it expires.
fn reuse_window_of(form: &Form, life: &Life) -> Result<Duration, String> {
    // Every key the tool makes starts with what the key pattern has before its timestamp.
    let fixed = form
        .key_pattern
        .split("__timestamp__")
        .next()
        .unwrap_or_default();
    for condition in &life.conditions {
        match key_condition(condition) {
            KeyCondition::None => {}
            KeyCondition::Exact => return Err("the policy binds the exact key".into()),
            KeyCondition::Prefix(prefix) if fixed.starts_with(prefix) => {}
            KeyCondition::Prefix(prefix) => {
                return Err(format!(
                    "the policy's key prefix {prefix:?} is narrower than {fixed:?}"
                ));
            }
        }
    }
    let margin = MIN_REUSE_MARGIN.max(life.left / 10);
    match life.left.checked_sub(margin) {
        Some(window) if !window.is_zero() => Ok(window),
        _ => Err(format!(
            "the form has {} s left, not more than the safe margin of {} s",
            life.left.as_secs(),
            margin.as_secs()
        )),
    }
}

/// What one policy condition says of the key.
enum KeyCondition<'a> {
    None,
    Exact,
    Prefix(&'a str),
}

/// `{"key": "…"}` and `["eq", "$key", "…"]` bind the key; `["starts-with", "$key", "…"]` gives
/// a prefix (field names are case-insensitive).
fn key_condition(condition: &Value) -> KeyCondition<'_> {
    match condition {
        Value::Object(map) if map.keys().any(|k| k.eq_ignore_ascii_case("key")) => {
            KeyCondition::Exact
        }
        Value::Array(items) => {
            let text = |i: usize| items.get(i).and_then(Value::as_str);
            let is_key = text(1).is_some_and(|f| f.eq_ignore_ascii_case("$key"));
            match (text(0).map(str::to_ascii_lowercase).as_deref(), is_key) {
                (Some("starts-with"), true) => {
                    text(2).map_or(KeyCondition::Exact, KeyCondition::Prefix)
                }
                (_, true) => KeyCondition::Exact,
                _ => KeyCondition::None,
            }
        }
        _ => KeyCondition::None,
    }
}

/// A form handed to one upload.
#[derive(Clone, Debug)]
pub struct Lease {
    pub form: Arc<Form>,
    /// Which form this is (to drop the right one when S3 refuses it).
    pub id: u64,
    /// The form carried another upload before this one.
    pub reused: bool,
    /// How many uploads the form has been handed to so far (this one and any after it).
    carriers: Arc<AtomicU32>,
    /// The storage left as the form told it, less the files it carried before this one.
    pub storage_left: u64,
}

impl Lease {
    /// The form was handed to another upload too, before this one or since: when S3 refuses
    /// it, that may be for carrying more than one (whichever of them S3 saw first).
    pub fn shared(&self) -> bool {
        self.carriers.load(Ordering::SeqCst) > 1
    }
}

/// A contact's form, kept for its next files.
struct Held {
    form: Arc<Form>,
    id: u64,
    uses: u32,
    carriers: Arc<AtomicU32>,
    /// Until when it may carry its first upload: a form kept unused (the quota check's) is not
    /// handed out near or past its expiration.
    first_use_until: Instant,
    /// Until when it may carry another upload (`None`: one upload only).
    reuse_until: Option<Instant>,
    storage_left: u64,
}

impl Held {
    /// Hands the form to one more upload, if it may carry it at `now`.
    fn lease(&mut self, now: Instant, reusing: bool, size: u64) -> Option<Lease> {
        let may = match self.uses {
            0 => now < self.first_use_until,
            _ => reusing && self.reuse_until.is_some_and(|until| now < until),
        };
        may.then(|| self.hand_out(size))
    }

    /// Hands the form to one more upload of `size` bytes.
    fn hand_out(&mut self, size: u64) -> Lease {
        self.uses += 1;
        self.carriers.store(self.uses, Ordering::SeqCst);
        let lease = Lease {
            form: self.form.clone(),
            id: self.id,
            reused: self.uses > 1,
            carriers: self.carriers.clone(),
            storage_left: self.storage_left,
        };
        self.storage_left = self.storage_left.saturating_sub(size);
        lease
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Held>>>;

/// The run's forms, per contact, and whether they are reused.
pub struct Forms {
    /// Reuse was on when the run started (`--form-reuse auto`, not off for the state file).
    started_on: bool,
    reusing: AtomicBool,
    /// This run recorded in the state file that reuse is refused.
    recorded: AtomicBool,
    /// Why reuse was turned off in this run, once it was.
    turned_off: OnceLock<String>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Rows of each contact not ended yet (set by the schedule): a contact's form is dropped
    /// with its last row.
    remaining: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
    /// Forms fetched, and uploads that went on a form another upload had carried.
    fetched: AtomicU64,
    reused: AtomicU64,
    /// The last form fetched could carry more than one upload (its policy allowed it): 1 yes,
    /// 2 no, 0 none fetched yet.
    last_reusable: AtomicU8,
}

impl Forms {
    pub fn new(reuse: FormReuse) -> Self {
        Self {
            started_on: reuse == FormReuse::Auto,
            reusing: AtomicBool::new(reuse == FormReuse::Auto),
            recorded: AtomicBool::new(false),
            turned_off: OnceLock::new(),
            slots: Mutex::default(),
            remaining: Mutex::default(),
            next_id: AtomicU64::new(1),
            fetched: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            last_reusable: AtomicU8::new(0),
        }
    }

    /// Forms are reused in this run (now).
    pub fn reusing(&self) -> bool {
        self.reusing.load(Ordering::SeqCst)
    }

    /// Forms are reused now and, as far as the last form fetched shows, their policies allow it:
    /// what an estimate of the calls still to make assumes.
    pub fn reuse_expected(&self) -> bool {
        self.reusing() && self.last_reusable.load(Ordering::Relaxed) != 2
    }

    /// Turns reuse off for the rest of the run; true the first time, when reuse was on (the
    /// caller says so once). A run that started with reuse off turns nothing off.
    pub fn turn_off(&self, why: String) -> bool {
        self.reusing.store(false, Ordering::SeqCst);
        self.started_on && self.turned_off.set(why).is_ok()
    }

    /// True the first time in this run: the state file is to record that reuse is refused.
    pub fn record_once(&self) -> bool {
        !self.recorded.swap(true, Ordering::SeqCst)
    }

    /// Why reuse was turned off in this run.
    pub fn turned_off(&self) -> Option<&str> {
        self.turned_off.get().map(String::as_str)
    }

    /// Forms fetched so far, and uploads that went on a reused form.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        )
    }

    fn slot(&self, contact: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(contact.to_string()).or_default().clone()
    }

    /// `form`, just fetched, as a form to keep: when it may carry its first and its next
    /// uploads.
    fn held(&self, form: Form) -> Held {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // The policy is read once, for both of the form's times below.
        let life = read_life(&form, Utc::now());
        let reuse = life.as_ref().map_err(String::clone);
        let reuse_until = match reuse.and_then(|life| reuse_window_of(&form, life)) {
            Ok(window) => Some(now + window),
            Err(why) => {
                tracing::debug!("a form for one upload only: {why}");
                None
            }
        };
        self.last_reusable
            .store(if reuse_until.is_some() { 1 } else { 2 }, Ordering::Relaxed);
        let storage_left = form.storage_left;
        // Unused, a form waits for its first upload a minute at most, and no longer than half
        // the life it has left (an expired one not at all).
        let first_use_until = match life {
            Ok(life) => now + UNUSED_FORM_LIFE.min(life.left / 2),
            Err(_) => now + UNUSED_FORM_LIFE,
        };
        Held {
            form: Arc::new(form),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            uses: 0,
            carriers: Arc::default(),
            first_use_until,
            reuse_until,
            storage_left,
        }
    }

    /// A form for one upload of `size` bytes to `contact`: the contact's kept form while it may
    /// carry it, else a new one from `fetch` (which the contact's other rows then wait for and
    /// share). `own` asks for a form no other upload carried or will carry (a row redone after
    /// its key or its shared form was refused).
    pub async fn lease<F, Fut, E>(
        &self,
        contact: &str,
        size: u64,
        own: bool,
        fetch: F,
    ) -> Result<Lease, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Form, E>>,
    {
        let slot = self.slot(contact);
        if own || !self.reusing() {
            // An unused form (the quota check's) still serves one upload; else a form of its
            // own, kept by nobody.
            if let Ok(mut held) = slot.try_lock()
                && let Some(lease) = held
                    .as_mut()
                    .and_then(|h| (h.uses == 0).then(|| h.lease(Instant::now(), false, size)))
                    .flatten()
            {
                return Ok(lease);
            }
            let form = fetch().await?;
            // A form just fetched carries its first upload whatever its life: it is used at once,
            // as one form per file always was.
            return Ok(self.held(form).hand_out(size));
        }
        let mut held = slot.lock().await;
        if let Some(lease) = held
            .as_mut()
            .and_then(|h| h.lease(Instant::now(), true, size))
        {
            if lease.reused {
                self.reused.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(lease);
        }
        *held = None;
        let form = fetch().await?;
        Ok(held.insert(self.held(form)).hand_out(size))
    }

    /// Keeps a form fetched outside any upload (the quota check's) for `contact`'s first upload.
    pub fn keep_unused(&self, contact: &str, form: Form) {
        let slot = self.slot(contact);
        if let Ok(mut held) = slot.try_lock() {
            *held = Some(self.held(form));
        }
    }

    /// S3 refused form `id` of `contact` (expired, or refused for another upload): nobody gets
    /// it again.
    pub async fn drop_form(&self, contact: &str, id: u64) {
        let slot = self.slot(contact);
        let mut held = slot.lock().await;
        if held.as_ref().is_some_and(|h| h.id == id) {
            *held = None;
        }
    }

    /// The rows about to run, by contact (a contact's form is kept until its last one ends).
    pub fn expect<'a>(&self, contacts: impl Iterator<Item = &'a str>) {
        let mut remaining = self.remaining.lock().unwrap_or_else(|e| e.into_inner());
        for contact in contacts {
            *remaining.entry(contact.to_string()).or_default() += 1;
        }
    }

    /// One of `contact`'s rows ended: after its last, its form is dropped.
    pub fn row_ended(&self, contact: &str) {
        let mut remaining = self.remaining.lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = remaining.get_mut(contact) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            remaining.remove(contact);
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(contact);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(policy: &Value, timestamp: i64) -> Form {
        let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
        Form {
            url: "http://127.0.0.1:9/bucket".into(),
            fields: vec![("policy".into(), policy)],
            key_pattern: "c1/__timestamp__/${filename}".into(),
            timestamp,
            storage_left: 1000,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy(expiration: &str, key: Value) -> Value {
        json!({"expiration": expiration, "conditions": [{"bucket": "b"}, key, ["content-length-range", 0, 10]]})
    }

    #[test]
    fn a_form_is_reused_until_the_larger_of_a_minute_and_a_tenth_of_its_life_is_left() {
        let issued = at("2026-11-30T10:00:00Z");
        let hour = policy(
            "2026-11-30T11:00:00.000Z",
            json!(["starts-with", "$key", "c1/"]),
        );
        // One hour of life: a margin of 6 minutes, so 54 minutes of reuse.
        assert_eq!(
            reuse_window(&form(&hour, issued.timestamp()), issued),
            Ok(Duration::from_secs(54 * 60))
        );
        // Five minutes of life: the margin is the minute.
        let five = policy("2026-11-30T10:05:00Z", json!(["starts-with", "$key", ""]));
        assert_eq!(
            reuse_window(&form(&five, issued.timestamp()), issued),
            Ok(Duration::from_secs(4 * 60))
        );
        // Our clock 10 minutes ahead of the server's: what our clock leaves counts (50 minutes,
        // less a tenth).
        let ahead = issued + chrono::Duration::minutes(10);
        assert_eq!(
            reuse_window(&form(&hour, issued.timestamp()), ahead),
            Ok(Duration::from_secs(45 * 60))
        );
        // A server timestamp far in the past (a stuck clock): what our clock leaves counts.
        assert_eq!(
            reuse_window(&form(&hour, issued.timestamp() - 86_400 * 365), issued),
            Ok(Duration::from_secs(54 * 60))
        );
        // Our clock behind: the server's timestamp counts.
        let behind = issued - chrono::Duration::minutes(10);
        assert_eq!(
            reuse_window(&form(&hour, issued.timestamp()), behind),
            Ok(Duration::from_secs(54 * 60))
        );
        // A minute of life or less: never reused.
        let minute = policy(
            "2026-11-30T10:01:00Z",
            json!(["starts-with", "$key", "c1/"]),
        );
        assert!(reuse_window(&form(&minute, issued.timestamp()), issued).is_err());
        let expired = policy(
            "2026-11-30T09:59:59Z",
            json!(["starts-with", "$key", "c1/"]),
        );
        assert!(reuse_window(&form(&expired, issued.timestamp()), issued).is_err());
    }

    #[test]
    fn a_policy_that_binds_the_key_or_cannot_be_read_means_one_form_per_file() {
        let issued = at("2026-11-30T10:00:00Z");
        let t = issued.timestamp();
        for key in [
            json!({"key": "c1/1/a.pdf"}),
            json!({"KEY": "c1/1/a.pdf"}),
            json!(["eq", "$key", "c1/1/a.pdf"]),
            json!(["starts-with", "$key", "c1/1764496800/"]),
            json!(["starts-with", "$key", "c2/"]),
            json!(["starts-with", "$key"]),
        ] {
            let p = policy("2026-11-30T11:00:00Z", key.clone());
            assert!(reuse_window(&form(&p, t), issued).is_err(), "{key}");
        }
        let mut garbage = form(&json!({}), t);
        garbage.fields = vec![("policy".into(), "not base64!".into())];
        assert!(reuse_window(&garbage, issued).is_err());
        garbage.fields.clear();
        assert!(reuse_window(&garbage, issued).is_err());
        let no_expiration = json!({"conditions": [["starts-with", "$key", ""]]});
        assert!(reuse_window(&form(&no_expiration, t), issued).is_err());
        // A prefix condition and other conditions (any case) are fine.
        let p = policy("2026-11-30T11:00:00Z", json!(["Starts-With", "$Key", "c1"]));
        assert!(reuse_window(&form(&p, t), issued).is_ok());
    }

    fn reusable() -> Form {
        let now = Utc::now();
        let expiration = (now + chrono::Duration::hours(1)).to_rfc3339();
        form(
            &policy(&expiration, json!(["starts-with", "$key", "c1/"])),
            now.timestamp(),
        )
    }

    #[tokio::test]
    async fn one_form_carries_a_contacts_files_and_own_asks_for_a_fresh_one() {
        let forms = Forms::new(FormReuse::Auto);
        let fetches = AtomicU64::new(0);
        let fetch = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(reusable())
        };
        let first = forms.lease("c1", 100, false, fetch).await.unwrap();
        assert!(!first.reused);
        assert_eq!(first.storage_left, 1000);
        let second = forms.lease("c1", 100, false, fetch).await.unwrap();
        assert!(second.reused && second.id == first.id);
        assert_eq!(second.storage_left, 900, "less what the form carried");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let own = forms.lease("c1", 100, true, fetch).await.unwrap();
        assert!(!own.reused && own.id != first.id);
        let other = forms.lease("c2", 100, false, fetch).await.unwrap();
        assert!(!other.reused);
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        // A refused form is not handed out again.
        forms.drop_form("c1", first.id).await;
        let again = forms.lease("c1", 100, false, fetch).await.unwrap();
        assert!(!again.reused && again.id != first.id);
        // Turned off: one form per file from now on.
        assert!(forms.turn_off("why".into()));
        assert!(!forms.turn_off("again".into()), "said once");
        let off = forms.lease("c1", 100, false, fetch).await.unwrap();
        assert!(!off.reused && off.id != again.id);
        assert_eq!(forms.counts(), (5, 1));
    }

    #[tokio::test]
    async fn the_quota_checks_form_serves_one_upload_even_without_reuse() {
        for reuse in [FormReuse::Auto, FormReuse::Off] {
            let forms = Forms::new(reuse);
            forms.keep_unused("c1", reusable());
            let fetch = || async { Ok::<_, ()>(reusable()) };
            let first = forms.lease("c1", 10, false, fetch).await.unwrap();
            assert!(!first.reused);
            assert_eq!(first.storage_left, 1000);
            let second = forms.lease("c1", 10, false, fetch).await.unwrap();
            assert_eq!(second.reused, reuse == FormReuse::Auto, "{reuse:?}");
            assert_eq!(forms.counts().0, 1 + u64::from(reuse == FormReuse::Off));
        }
    }

    #[tokio::test]
    async fn the_first_upload_of_a_form_learns_when_a_second_shares_it() {
        // S3 may see the second upload first and refuse the first: the first is then on a
        // shared form too.
        let forms = Forms::new(FormReuse::Auto);
        let fetch = || async { Ok::<_, ()>(reusable()) };
        let first = forms.lease("c1", 1, false, fetch).await.unwrap();
        assert!(!first.shared());
        let second = forms.lease("c1", 1, false, fetch).await.unwrap();
        assert!(first.shared() && second.shared() && !first.reused && second.reused);
    }

    #[test]
    fn a_run_that_started_with_reuse_off_turns_nothing_off_but_records_once() {
        let forms = Forms::new(FormReuse::Off);
        assert!(!forms.turn_off("why".into()));
        assert_eq!(forms.turned_off(), None);
        assert!(forms.record_once());
        assert!(!forms.record_once());
    }

    #[tokio::test]
    async fn an_expired_form_kept_unused_is_not_handed_out() {
        let forms = Forms::new(FormReuse::Auto);
        let now = Utc::now();
        let expired = form(
            &policy(
                &(now - chrono::Duration::seconds(1)).to_rfc3339(),
                json!(["starts-with", "$key", "c1/"]),
            ),
            now.timestamp(),
        );
        forms.keep_unused("c1", expired);
        let lease = forms
            .lease("c1", 1, false, || async { Ok::<_, ()>(reusable()) })
            .await
            .unwrap();
        assert_eq!(forms.counts().0, 2, "a new form was fetched");
        assert!(!lease.reused);
    }

    #[tokio::test]
    async fn a_single_use_form_is_never_handed_out_twice() {
        let forms = Forms::new(FormReuse::Auto);
        let mut single = reusable();
        single.fields.clear();
        let fetch = || async { Ok::<_, ()>(single.clone()) };
        let a = forms.lease("c1", 1, false, fetch).await.unwrap();
        let b = forms.lease("c1", 1, false, fetch).await.unwrap();
        assert!(!a.reused && !b.reused && a.id != b.id);
    }

    #[tokio::test]
    async fn a_contacts_form_goes_with_its_last_row() {
        let forms = Forms::new(FormReuse::Auto);
        forms.expect(["c1", "c1"].into_iter());
        let fetch = || async { Ok::<_, ()>(reusable()) };
        let a = forms.lease("c1", 1, false, fetch).await.unwrap();
        forms.row_ended("c1");
        assert!(forms.lease("c1", 1, false, fetch).await.unwrap().reused);
        forms.row_ended("c1");
        assert!(forms.slots.lock().unwrap().is_empty());
        let c = forms.lease("c1", 1, false, fetch).await.unwrap();
        assert!(!c.reused && c.id != a.id);
    }
}
