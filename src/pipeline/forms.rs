//! Upload forms (step 1's answers), and reusing one for a contact's next files (`--form-reuse`).
//!
//! An S3 POST policy holds for every upload that meets its conditions until it expires. The form
//! OnePageCRM hands out leaves the key open below `<contact>/` (a `starts-with` condition), so
//! while it lives one form can carry many of that contact's files, each under a key of its own:
//! about one API call per file (the attach) instead of two. A form is reused only when its policy
//! says so and it has a safe margin left (see [`reuse_window`]); a policy that binds the exact key,
//! or that cannot be read, means one form per file.
//!
//! Forms are kept per contact, one at a time: the rows of a contact are fed one after another
//! (see `run::execute::feed`, which counts them in with [`Forms::expect`]), so a contact's form
//! is dropped when its last row has ended.
//! Workers of one contact wait for the form one of them is fetching instead of fetching their own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::remote::api::{Form, unix_seconds};

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

/// The longest life a form's policy is believed to give: a week, S3's limit on a presigned
/// request. A life read above it (or below zero) comes from a misread unit or a clock far off.
pub const MAX_FORM_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a form may carry one upload only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoReuse {
    /// The policy, or the part of it named, cannot be read.
    Unreadable(&'static str),
    BindsKey,
    /// A `starts-with $key` condition that not every key the tool makes meets.
    NarrowPrefix {
        prefix: String,
        fixed: String,
    },
    /// The life the form's dates give is not believable: why.
    AbsurdLife(String),
    /// Not more life left than the safe margin.
    ShortLife {
        left: Duration,
        margin: Duration,
    },
}

impl NoReuse {
    /// The reason's kind: a run says each kind once, whatever the details of each form.
    fn kind(&self) -> &'static str {
        match self {
            NoReuse::Unreadable(_) => "unreadable",
            NoReuse::BindsKey => "binds key",
            NoReuse::NarrowPrefix { .. } => "narrow prefix",
            NoReuse::AbsurdLife(_) => "absurd life",
            NoReuse::ShortLife { .. } => "short life",
        }
    }
}

impl std::fmt::Display for NoReuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoReuse::Unreadable(what) => f.write_str(what),
            NoReuse::BindsKey => f.write_str("the policy binds the exact key"),
            NoReuse::NarrowPrefix { prefix, fixed } => write!(
                f,
                "the policy's key prefix {prefix:?} is narrower than {fixed:?}"
            ),
            NoReuse::AbsurdLife(why) => f.write_str(why),
            NoReuse::ShortLife { left, margin } => write!(
                f,
                "the form has {} s left, not more than the safe margin of {} s",
                left.as_secs(),
                margin.as_secs()
            ),
        }
    }
}

/// How long after it arrived (`form.arrived`, our monotonic clock) `form` may still carry
/// uploads (until the safe margin before its expiration), or why it may carry only one.
///
/// The form's life is what its policy's `expiration` leaves after the moment the server signed
/// it (its `x-amz-date`): both stamped by the server's clock, so neither our clock nor the unit
/// or the clock of the answer's `timestamp` enters into it, and it is counted from the form's
/// arrival. Only a form without a readable `x-amz-date` is read against clocks: see
/// [`life_by_clocks`]. The margin is the larger of [`MIN_REUSE_MARGIN`] and a tenth of that life.
pub fn reuse_window(form: &Form, wall_now: DateTime<Utc>) -> Result<Duration, NoReuse> {
    reuse_window_of(form, &read_life(form, wall_now)?)
}

/// What a form's policy says of its life: the time it has left as it arrives, and its
/// conditions.
struct Life {
    left: Duration,
    conditions: Vec<Value>,
}

/// Reads `form`'s policy (base64 JSON): its expiration, against the form's signing time (see
/// [`reuse_window`]), and its conditions.
fn read_life(form: &Form, wall_now: DateTime<Utc>) -> Result<Life, NoReuse> {
    let policy = field(form, "policy").ok_or(NoReuse::Unreadable("the form has no policy"))?;
    let policy = base64::engine::general_purpose::STANDARD
        .decode(policy.trim())
        .map_err(|_| NoReuse::Unreadable("the policy is not base64"))?;
    let policy: Value = serde_json::from_slice(&policy)
        .map_err(|_| NoReuse::Unreadable("the policy is not a JSON document"))?;
    let expiration = policy
        .get("expiration")
        .and_then(Value::as_str)
        .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        .map(|e| e.with_timezone(&Utc))
        .ok_or(NoReuse::Unreadable("the policy has no readable expiration"))?;
    let conditions = policy
        .get("conditions")
        .and_then(Value::as_array)
        .ok_or(NoReuse::Unreadable("the policy has no conditions"))?
        .clone();
    // `x-amz-date` is whole seconds and the answer took a while to come: counted from the
    // arrival, the life may end later than S3's by up to a second and the answer's transit,
    // which the margin (a minute at least) covers.
    let left = match field(form, "x-amz-date").and_then(amz_date) {
        Some(signed) => match believable(expiration - signed) {
            Reading::Believable(left) => left,
            // Expired before it was signed: nothing left (and not handed out unused).
            Reading::Negative => Duration::ZERO,
            Reading::TooLong => {
                return Err(NoReuse::AbsurdLife(format!(
                    "the policy expires {} after the form's x-amz-date, more than a week",
                    human(expiration - signed)
                )));
            }
        },
        None => life_by_clocks(form, expiration, wall_now)?,
    };
    Ok(Life { left, conditions })
}

/// The value of `form`'s field `name` (field names are case-insensitive).
fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// SigV4's basic format, `YYYYMMDDTHHMMSSZ`.
fn amz_date(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    (value.len() == 16)
        .then(|| chrono::NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%SZ").ok())
        .flatten()
        .map(|d| d.and_utc())
}

/// What a life read from two moments is worth.
enum Reading {
    Believable(Duration),
    /// Expired before it was issued (or before now).
    Negative,
    /// Longer than [`MAX_FORM_LIFE`].
    TooLong,
}

fn believable(life: chrono::TimeDelta) -> Reading {
    match life.to_std() {
        Err(_) => Reading::Negative,
        Ok(life) if life > MAX_FORM_LIFE => Reading::TooLong,
        Ok(life) => Reading::Believable(life),
    }
}

/// `3 h 20 min`, `-5 s`: a life for a message.
fn human(life: chrono::TimeDelta) -> String {
    let s = life.num_seconds();
    match s.unsigned_abs() {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// A form without a readable `x-amz-date`: its life read against the server's clock (the
/// answer's `timestamp`, in seconds or milliseconds, see [`unix_seconds`]) and against
/// `wall_now` (ours), whichever leaves less, so that neither clock running ahead or behind makes
/// a form look younger than it is; a clock that gives no believable life (negative, or longer
/// than [`MAX_FORM_LIFE`]: a misread unit, a stuck clock, a clock hours off) is not heard. A form
/// that no clock gives a believable life has nothing left when one of them says it has expired,
/// and is not reused otherwise.
fn life_by_clocks(
    form: &Form,
    expiration: DateTime<Utc>,
    wall_now: DateTime<Utc>,
) -> Result<Duration, NoReuse> {
    let issued = form
        .timestamp
        .and_then(unix_seconds)
        .and_then(|t| DateTime::from_timestamp(t, 0));
    let lives: Vec<Reading> = issued
        .map(|issued| believable(expiration - issued))
        .into_iter()
        .chain([believable(expiration - wall_now)])
        .collect();
    let shortest = lives
        .iter()
        .filter_map(|l| match l {
            Reading::Believable(d) => Some(*d),
            _ => None,
        })
        .min();
    if let Some(left) = shortest {
        return Ok(left);
    }
    // No clock believable, and one says it has expired: it may well have.
    if lives.iter().any(|l| matches!(l, Reading::Negative)) {
        return Ok(Duration::ZERO);
    }
    Err(NoReuse::AbsurdLife(format!(
        "the form has no readable x-amz-date, and neither the answer's timestamp ({}) nor our clock gives its policy (expiring {}) a believable life",
        form.timestamp
            .map_or_else(|| "none".to_string(), |t| t.to_string()),
        expiration.to_rfc3339()
    )))
}

/// How long a form of `life` may carry uploads: while every key condition is a prefix the
/// tool's keys meet, until the safe margin before it expires.
fn reuse_window_of(form: &Form, life: &Life) -> Result<Duration, NoReuse> {
    // Every key the tool makes starts with what the key pattern has before its timestamp.
    let fixed = form
        .key_pattern
        .split("__timestamp__")
        .next()
        .unwrap_or_default();
    for condition in &life.conditions {
        match key_condition(condition) {
            KeyCondition::None => {}
            KeyCondition::Exact => return Err(NoReuse::BindsKey),
            KeyCondition::Prefix(prefix) if fixed.starts_with(prefix) => {}
            KeyCondition::Prefix(prefix) => {
                return Err(NoReuse::NarrowPrefix {
                    prefix: prefix.to_string(),
                    fixed: fixed.to_string(),
                });
            }
        }
    }
    let margin = MIN_REUSE_MARGIN.max(life.left / 10);
    match life.left.checked_sub(margin) {
        Some(window) if !window.is_zero() => Ok(window),
        _ => Err(NoReuse::ShortLife {
            left: life.left,
            margin,
        }),
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
    /// Until when it may carry another upload (`None`: one upload only, for `no_reuse`).
    reuse_until: Option<Instant>,
    no_reuse: Option<NoReuse>,
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
    /// Rows of each contact not ended yet (counted in by `expect`): a contact's form is dropped
    /// with its last row.
    remaining: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
    /// Forms fetched, and uploads that went on a form another upload had carried.
    fetched: AtomicU64,
    reused: AtomicU64,
    /// The last form fetched could carry more than one upload (its policy allowed it): 1 yes,
    /// 2 no, 0 none fetched yet.
    last_reusable: AtomicU8,
    /// The kinds of reason (`NoReuse::kind`) said so far why a form could not carry a contact's
    /// next file.
    said: Mutex<HashSet<&'static str>>,
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
            said: Mutex::default(),
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

    /// A contact's form could not carry its next file, for `why`: true the first time in this run
    /// for a reason of that kind (the caller says so then).
    fn first_said(&self, why: &NoReuse) -> bool {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.insert(why.kind())
    }

    fn slot(&self, contact: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(contact.to_string()).or_default().clone()
    }

    /// `form`, just fetched, as a form to keep: when it may carry its first and its next
    /// uploads.
    fn held(&self, form: Form) -> Held {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        // The form's times count from its arrival, as its life does (see `reuse_window`).
        let arrived = form.arrived;
        // The policy is read once, for both of the form's times below.
        let life = read_life(&form, Utc::now());
        let reuse = life.as_ref().map_err(NoReuse::clone);
        let (reuse_until, no_reuse) = match reuse.and_then(|life| reuse_window_of(&form, life)) {
            Ok(window) => (Some(arrived + window), None),
            Err(why) => {
                tracing::debug!("a form for one upload only: {why}");
                (None, Some(why))
            }
        };
        self.last_reusable
            .store(if reuse_until.is_some() { 1 } else { 2 }, Ordering::Relaxed);
        let storage_left = form.storage_left;
        // Unused, a form waits for its first upload a minute at most, and no longer than half
        // the life it has left (an expired one not at all).
        let first_use_until = match life {
            Ok(life) => arrived + UNUSED_FORM_LIFE.min(life.left / 2),
            Err(_) => arrived + UNUSED_FORM_LIFE,
        };
        Held {
            form: Arc::new(form),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            uses: 0,
            carriers: Arc::default(),
            first_use_until,
            reuse_until,
            no_reuse,
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
        // The form carried one of this contact's files and its policy forbids another: the
        // moment reuse, on for the run, gives way to one form per file for this contact. Said
        // once a run for each kind of reason, so that it never happens unseen (nor floods).
        if let Some(why) = held
            .as_ref()
            .filter(|h| h.uses > 0)
            .and_then(|h| h.no_reuse.as_ref())
            && self.first_said(why)
        {
            tracing::warn!(
                "an upload form cannot carry a second file ({why}): one form per file for contacts whose forms say so"
            );
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

    /// A form without an `x-amz-date`, whose answer's timestamp is `timestamp`.
    fn form(policy: &Value, timestamp: i64) -> Form {
        let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
        Form {
            url: "http://127.0.0.1:9/bucket".into(),
            fields: vec![("policy".into(), policy)],
            key_pattern: "c1/__timestamp__/${filename}".into(),
            timestamp: Some(timestamp),
            key_stamp: timestamp,
            arrived: Instant::now(),
            storage_left: 1000,
        }
    }

    /// A form signed at `x_amz_date` (`YYYYMMDDTHHMMSSZ`), whose answer's timestamp is
    /// `timestamp`.
    fn signed(policy: &Value, x_amz_date: &str, timestamp: Option<i64>) -> Form {
        let mut form = form(policy, 1);
        form.fields.push(("X-Amz-Date".into(), x_amz_date.into()));
        form.timestamp = timestamp;
        form
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

    #[test]
    fn the_window_comes_from_x_amz_date_and_expiration_whatever_the_timestamp_says() {
        let hour = policy(
            "2026-11-30T11:00:00.000Z",
            json!(["starts-with", "$key", "c1/"]),
        );
        let issued = at("2026-11-30T10:00:00Z");
        let two_hours = 2 * 3600;
        // Seconds, milliseconds, none, two hours ahead or behind, a unit no one uses; and our
        // clock anywhere: one hour of life from the form's arrival, reused for 54 minutes.
        for timestamp in [
            Some(issued.timestamp()),
            Some(issued.timestamp_millis()),
            None,
            Some(issued.timestamp() + two_hours),
            Some(issued.timestamp() - two_hours),
            Some(issued.timestamp_millis() - two_hours * 1000),
            Some(issued.timestamp_micros()),
        ] {
            for wall in [
                issued,
                issued + chrono::Duration::hours(2),
                issued - chrono::Duration::days(400),
            ] {
                assert_eq!(
                    reuse_window(&signed(&hour, "20261130T100000Z", timestamp), wall),
                    Ok(Duration::from_secs(54 * 60)),
                    "{timestamp:?} at {wall}"
                );
            }
        }
    }

    #[test]
    fn a_form_without_x_amz_date_reads_its_timestamp_in_either_unit() {
        let issued = at("2026-11-30T10:00:00Z");
        let hour = policy(
            "2026-11-30T11:00:00Z",
            json!(["starts-with", "$key", "c1/"]),
        );
        let ms = form(&hour, issued.timestamp_millis());
        assert_eq!(reuse_window(&ms, issued), Ok(Duration::from_secs(54 * 60)));
        // Read as milliseconds, the server's clock still counts when it leaves less: our clock
        // 10 minutes behind leaves 70.
        assert_eq!(
            reuse_window(&ms, issued - chrono::Duration::minutes(10)),
            Ok(Duration::from_secs(54 * 60))
        );
        // A timestamp unread (none, 12 digits) or two hours ahead (a negative life): our clock
        // alone tells.
        let ahead = issued + chrono::Duration::minutes(10);
        for timestamp in [
            None,
            Some(issued.timestamp_millis() / 10),
            Some(issued.timestamp() + 2 * 3600),
        ] {
            let mut f = form(&hour, 1);
            f.timestamp = timestamp;
            assert_eq!(
                reuse_window(&f, ahead),
                Ok(Duration::from_secs(45 * 60)),
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn a_policy_whose_life_is_not_believable_is_not_reused_and_says_why() {
        let key = json!(["starts-with", "$key", "c1/"]);
        let issued = at("2026-11-30T10:00:00Z");
        // A month after it was signed: a misread unit or a clock far off, not a form's life.
        let month = policy("2026-12-30T10:00:00Z", key.clone());
        let why = reuse_window(&signed(&month, "20261130T100000Z", None), issued).unwrap_err();
        assert!(matches!(why, NoReuse::AbsurdLife(_)), "{why:?}");
        assert!(
            why.to_string()
                .contains("expires 30 days after the form's x-amz-date"),
            "{why}"
        );
        // Expired before it was signed: nothing left.
        let before = policy("2026-11-30T09:00:00Z", key.clone());
        assert_eq!(
            reuse_window(&signed(&before, "20261130T100000Z", None), issued),
            Err(NoReuse::ShortLife {
                left: Duration::ZERO,
                margin: MIN_REUSE_MARGIN
            })
        );
        // No x-amz-date, and both clocks far before the expiration: neither is believed.
        let f = form(&month, issued.timestamp_millis());
        let why = reuse_window(&f, issued).unwrap_err();
        assert!(
            why.to_string().contains("no readable x-amz-date")
                && why.to_string().contains("believable life"),
            "{why}"
        );
        // An x-amz-date that is not SigV4's basic format is no x-amz-date: the clocks tell.
        let hour = policy("2026-11-30T11:00:00Z", key);
        for odd in ["2026-11-30T10:00:00Z", "20261130T100000", "x"] {
            assert_eq!(
                reuse_window(&signed(&hour, odd, Some(issued.timestamp())), issued),
                Ok(Duration::from_secs(54 * 60)),
                "{odd}"
            );
        }
    }

    #[test]
    fn a_kept_forms_times_count_from_its_arrival() {
        let forms = Forms::new(FormReuse::Auto);
        let mut f = reusable();
        // An arrival an hour from now: were the times counted from now, they would end sooner.
        f.arrived = Instant::now() + Duration::from_secs(3600);
        let arrived = f.arrived;
        let held = forms.held(f);
        assert_eq!(
            held.reuse_until,
            Some(arrived + Duration::from_secs(54 * 60))
        );
        assert_eq!(held.first_use_until, arrived + UNUSED_FORM_LIFE);
    }

    #[test]
    fn each_kind_of_reason_not_to_reuse_is_said_once_a_run() {
        let forms = Forms::new(FormReuse::Auto);
        let short = |left| NoReuse::ShortLife {
            left: Duration::from_secs(left),
            margin: MIN_REUSE_MARGIN,
        };
        assert!(forms.first_said(&short(30)));
        assert!(
            !forms.first_said(&short(31)),
            "the same kind, other numbers"
        );
        assert!(forms.first_said(&NoReuse::BindsKey));
        assert!(!forms.first_said(&NoReuse::BindsKey));
    }

    /// A form signed now that lives an hour, its key open below `c1/`.
    fn reusable() -> Form {
        // Whole seconds, as x-amz-date has them: an hour of life exactly.
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        let expiration = (now + chrono::Duration::hours(1)).to_rfc3339();
        signed(
            &policy(&expiration, json!(["starts-with", "$key", "c1/"])),
            &now.format("%Y%m%dT%H%M%SZ").to_string(),
            Some(now.timestamp()),
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
    async fn a_single_use_form_is_never_handed_out_twice_and_says_why_once() {
        let forms = Forms::new(FormReuse::Auto);
        let mut single = reusable();
        single.fields.retain(|(k, _)| k != "policy");
        let fetch = || async { Ok::<_, ()>(single.clone()) };
        let a = forms.lease("c1", 1, false, fetch).await.unwrap();
        let b = forms.lease("c1", 1, false, fetch).await.unwrap();
        assert!(!a.reused && !b.reused && a.id != b.id);
        // The second file of c1 found its form unfit for reuse: said (the warning) then.
        assert!(!forms.first_said(&NoReuse::Unreadable("the form has no policy")));
    }

    #[tokio::test]
    async fn a_contact_with_one_file_has_nothing_to_say_of_reuse() {
        let forms = Forms::new(FormReuse::Auto);
        let mut single = reusable();
        single.fields.clear();
        let fetch = || async { Ok::<_, ()>(single.clone()) };
        forms.lease("c1", 1, false, fetch).await.unwrap();
        forms.lease("c2", 1, false, fetch).await.unwrap();
        assert!(forms.first_said(&NoReuse::Unreadable("the form has no policy")));
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
