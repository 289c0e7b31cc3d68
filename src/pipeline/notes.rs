//! Notes created from the manifest, exactly once, before the rows that attach to them.
//!
//! Rows that give `note_text` form note groups (one contact and one `note_key`, or one text and
//! date); each group gets one note. Before any of those rows starts its three steps, every group
//! still without a note is settled here, `--concurrency` groups at once, and its rows then carry
//! the note's id as their `reference_id`. A stage of its own, rather than rows waiting for each
//! other inside the pipeline: no worker ever sits blocked on another row's note, and a group
//! that cannot be created fails its rows before any of them uploads a byte.
//!
//! Exactly once, by a snapshot: before the first note a run creates for a contact,
//! the ids of the contact's notes are kept (every page). The intent is committed before
//! `POST /notes`. A group found in `intent` (an answer lost to a drop, a timeout or a kill)
//! lists the contact's notes again and adopts the one note with the group's text (line ends
//! normalized) and date that is in neither the snapshot nor held by another group. No clock, no
//! `timestamp` unit, no `created_at` enters into it. When none is there yet, the listing is
//! read again with growing waits (`--settle-window`, a listing may show a write late) before the
//! note is created again. Groups whose notes could be told apart only by their key (one contact,
//! one text, one date, two `note_key`s) are settled one after the other, so one cannot adopt the
//! other's note.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use super::{Context, Event, RowError, Settling, ago, backoff};
use crate::checkpoint::{NoteGroup, NoteState};
use crate::onepagecrm::ReferenceType;
use crate::remote::RemoteError;
use crate::remote::api::RemoteNote;

/// `GET /notes` page size: the API's largest.
const PER_PAGE: u64 = 100;
/// The most pages read of one contact's notes (10,000 pages of 100): a server that keeps saying
/// there is another page cannot keep a run listing for ever.
const MAX_PAGES: u64 = 10_000;

/// How settling one group ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The group's note.
    Note(String),
    Failed {
        retryable: bool,
        message: String,
    },
    /// Not tried (the run stopped starting new work) or cut short by an interrupt: its rows end
    /// without an outcome, and a rerun resumes the group from its committed state.
    NotStarted,
}

/// Text as the API may give it back: line ends normalized (CRLF and CR to LF), surrounding
/// white space trimmed.
pub fn normalized(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .trim()
        .to_string()
}

/// Whether `note` may be the one this group's lost attempt created: same words and date, in
/// neither the contact's snapshot (`held`) nor held by another group (`claimed`). A group
/// without a date takes the API's default, the day the note was made: a note dated more than a
/// day from the group's first intent (by this machine's clock, as it recorded it) was made by a
/// dated group or a person, never by it.
pub fn adoptable(
    note: &RemoteNote,
    group: &NoteGroup,
    held: &HashSet<String>,
    claimed: &HashSet<String>,
) -> bool {
    let date_matches = match &group.date {
        Some(date) => note.date.as_deref() == Some(date.as_str()),
        None => {
            let day = |d: &str| chrono::NaiveDate::parse_from_str(d.get(..10)?, "%Y-%m-%d").ok();
            match (
                note.date.as_deref().and_then(day),
                group.intent_at.as_deref().and_then(day),
            ) {
                (Some(note), Some(intent)) => (note - intent).num_days().abs() <= 1,
                // No intent recorded: nothing was sent, nothing is adopted (see `adopt`).
                _ => false,
            }
        }
    };
    date_matches
        && !held.contains(&note.id)
        && !claimed.contains(&note.id)
        && normalized(&note.text) == normalized(&group.text)
}

/// Settles every group (creates or adopts its note), `--concurrency` at once; groups of one
/// contact with the same words one after the other. `rows` is how many rows each group has (for
/// the log).
pub async fn settle_all(
    ctx: Arc<Context>,
    groups: Vec<NoteGroup>,
    rows: HashMap<String, usize>,
) -> HashMap<String, Settled> {
    // One contact's groups of the same words are settled one after the other, dated ones first:
    // a group without a date would otherwise race a dated one for the same note.
    let mut families: BTreeMap<(String, String), Vec<NoteGroup>> = BTreeMap::new();
    for g in groups {
        let family = (g.contact_id.clone(), normalized(&g.text));
        families.entry(family).or_default().push(g);
    }
    for family in families.values_mut() {
        family.sort_by_key(|g| g.date.is_none());
    }
    // Every run lists a contact's notes again before its first note there.
    let snapshots = Arc::new(NoteSnapshots {
        taken: Mutex::default(),
        slots: Mutex::default(),
    });
    let queue = Arc::new(Mutex::new(families.into_values().collect::<VecDeque<_>>()));
    let settled = Arc::new(Mutex::new(HashMap::new()));
    let rows = Arc::new(rows);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..ctx.settings.concurrency.max(1) {
        let (ctx, queue, settled, rows, snapshots) = (
            ctx.clone(),
            queue.clone(),
            settled.clone(),
            rows.clone(),
            snapshots.clone(),
        );
        workers.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(family) = next else { break };
                for group in family {
                    let rows = rows.get(&group.group).copied();
                    let outcome = settle(&ctx, &snapshots, &group, rows).await;
                    settled
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(group.group.clone(), outcome);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    std::mem::take(&mut *settled.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The contacts whose notes were listed in this run, before its first note for them.
struct NoteSnapshots {
    taken: Mutex<HashSet<String>>,
    /// One listing at a time per contact.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl NoteSnapshots {
    fn has(&self, contact_id: &str) -> bool {
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(contact_id)
    }

    /// Before the first note created for `contact_id`: the ids of its notes, every page, kept in
    /// the state file.
    async fn ensure(
        &self,
        ctx: &Context,
        contact_id: &str,
        attempts: &mut u32,
    ) -> Result<(), RowError> {
        if self.has(contact_id) {
            return Ok(());
        }
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(contact_id.to_string())
            .or_default()
            .clone();
        let _one_listing_at_a_time = slot.lock().await;
        if self.has(contact_id) {
            return Ok(());
        }
        let notes = loop {
            match list_all(ctx, contact_id).await {
                Ok(notes) => break notes,
                Err(RowError::Remote(e)) if e.is_retryable() => retry(ctx, e, attempts).await?,
                Err(e) => return Err(e),
            }
        };
        let ids = notes.into_iter().map(|n| n.id).collect::<Vec<_>>();
        let generation = ctx.generation().await?;
        ctx.state
            .record_notes_seen(contact_id, ids, generation)
            .await
            .map_err(RowError::Store)?;
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(contact_id.to_string());
        Ok(())
    }
}

/// One group: adopt (after an unknown outcome) or create its note, retried as a row's calls are.
async fn settle(
    ctx: &Context,
    snapshots: &NoteSnapshots,
    group: &NoteGroup,
    rows: Option<usize>,
) -> Settled {
    if let Some(id) = &group.note_id {
        return Settled::Note(id.clone());
    }
    if ctx.stop_starting.is_cancelled() {
        return Settled::NotStarted;
    }
    match settle_group(ctx, snapshots, group).await {
        Ok(id) => Settled::Note(id),
        Err(RowError::Cut) => Settled::NotStarted,
        Err(RowError::Remote(RemoteError::Stopped(_))) if ctx.interrupted_now() => {
            Settled::NotStarted
        }
        // (No note is pinned: `Pin` never comes from here.)
        Err(RowError::Remote(e) | RowError::Pin(e)) => {
            ctx.events.emit(Event::NoteFailed {
                contact_id: &group.contact_id,
                rows: rows.unwrap_or(0),
                error: &e,
            });
            Settled::Failed {
                retryable: e.is_retryable_later(),
                message: format!(
                    "the note {} on contact {} could not be created: {e}",
                    crate::manifest::shown(&group.text),
                    group.contact_id
                ),
            }
        }
        Err(RowError::Store(e)) => {
            ctx.stop(super::Stop::StateFile);
            Settled::Failed {
                retryable: true,
                message: format!("cannot record the note in the state file: {e}"),
            }
        }
    }
}

async fn settle_group(
    ctx: &Context,
    snapshots: &NoteSnapshots,
    group: &NoteGroup,
) -> Result<String, RowError> {
    let mut group = group.clone();
    let mut attempts = 0u32;
    // A lost answer: the contact's notes are listed again with growing waits before the note is
    // created again. A group found in `intent` lost its answer when its intent was recorded.
    let mut settling = (group.state == NoteState::Intent)
        .then(|| Settling::since(ctx.settings.settle_window, ago(group.intent_at.as_deref())));
    loop {
        if let Some(s) = settling.as_mut() {
            match adopt(ctx, &group).await {
                Ok(Some(id)) => return Ok(id),
                Ok(None) => {
                    if let Some(wait) = s.next_wait() {
                        info!(
                            "the contact {}'s notes do not show the note {} yet; listing them again in {} s",
                            group.contact_id,
                            crate::manifest::shown(&group.text),
                            wait.as_secs()
                        );
                        if !ctx.pause(wait).await {
                            return Err(ctx.cut(RemoteError::Unsettled(
                                "the answer to creating the note was lost and the contact's notes did not show it yet; a rerun lists them again".into(),
                            )));
                        }
                        continue;
                    }
                    // The window is over: the note is created again (a new window begins if
                    // that answer is lost too).
                }
                Err(RowError::Remote(e)) if e.is_retryable() => {
                    retry(ctx, e, &mut attempts).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        snapshots
            .ensure(ctx, &group.contact_id, &mut attempts)
            .await?;
        // Committed before the request, with the listing it is sent after: from here its outcome
        // is unknown until recorded.
        let generation = ctx.generation().await?;
        let intent_at = ctx
            .state
            .note_intent(&group, generation)
            .await
            .map_err(RowError::Store)?;
        group.intent_at = Some(intent_at);
        let created = ctx
            .api(|| {
                ctx.client
                    .create_note(&group.contact_id, &group.text, group.date.as_deref())
            })
            .await;
        match created {
            Ok(note) => {
                record(ctx, &group, &note.id, false).await?;
                return Ok(note.id);
            }
            Err(e) if e.is_retryable() => {
                retry(ctx, e, &mut attempts).await?;
                settling = Some(Settling::since(ctx.settings.settle_window, Duration::ZERO));
            }
            // Refused (a contact that does not exist, say): nothing was created. The group stays
            // in `intent`, so a later attempt lists the contact's notes first all the same.
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every page of `contact_id`'s notes.
async fn list_all(ctx: &Context, contact_id: &str) -> Result<Vec<RemoteNote>, RowError> {
    let mut notes = Vec::new();
    let mut page = 1;
    loop {
        let listed = ctx
            .api(|| ctx.client.list_notes(contact_id, page, PER_PAGE))
            .await?;
        let empty = listed.notes.is_empty();
        notes.extend(listed.notes);
        if empty || page >= listed.max_page || page >= MAX_PAGES {
            return Ok(notes);
        }
        page += 1;
    }
}

/// After an unknown outcome: the contact's notes, every page, and the one this group's lost
/// attempt made, if it shows (recorded before this returns).
async fn adopt(ctx: &Context, group: &NoteGroup) -> Result<Option<String>, RowError> {
    if group.intent_at.is_none() {
        // No intent was ever committed, so nothing was ever sent.
        return Ok(None);
    }
    let notes = list_all(ctx, &group.contact_id).await?;
    let (held, claimed) = ctx
        .state
        .notes_held_and_claimed(group)
        .await
        .map_err(RowError::Store)?;
    let Some(note) = notes
        .iter()
        .filter(|n| n.contact_id.is_empty() || n.contact_id == group.contact_id)
        .find(|n| adoptable(n, group, &held, &claimed))
    else {
        return Ok(None);
    };
    record(ctx, group, &note.id, true).await?;
    Ok(Some(note.id.clone()))
}

/// Records `note_id` as the group's note and gives it to the group's rows; the note held no
/// attachment when it was made (its record's snapshot is empty).
async fn record(
    ctx: &Context,
    group: &NoteGroup,
    note_id: &str,
    adopted: bool,
) -> Result<(), RowError> {
    let generation = ctx.generation().await?;
    ctx.state
        .note_created(group, note_id, adopted, generation)
        .await
        .map_err(RowError::Store)?;
    ctx.snapshots
        .created(ReferenceType::Note, note_id, &group.contact_id);
    ctx.events.emit(Event::NoteCreated {
        contact_id: &group.contact_id,
        note_id,
        adopted,
    });
    Ok(())
}

/// A retryable failure of a group's call: gives up past `--retries`, else waits its backoff.
async fn retry(ctx: &Context, e: RemoteError, attempts: &mut u32) -> Result<(), RowError> {
    *attempts += 1;
    if *attempts > ctx.settings.retries {
        return Err(RowError::Remote(e));
    }
    if ctx.abort.is_cancelled() {
        return Err(ctx.cut(e));
    }
    let waited = {
        let _backoff = ctx
            .events
            .backoff(None, *attempts, ctx.settings.retries, &e);
        ctx.pause(backoff(*attempts)).await
    };
    if !waited {
        return Err(ctx.cut(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(text: &str, date: Option<&str>) -> NoteGroup {
        NoteGroup {
            group: "g".into(),
            contact_id: "c".into(),
            text: text.into(),
            date: date.map(str::to_string),
            key: None,
            state: NoteState::Intent,
            intent_at: Some("2026-11-30T10:00:00.000Z".into()),
            note_id: None,
        }
    }

    /// A note whose `created_at` is far from anything: it must not matter.
    fn note(id: &str, text: &str, date: &str) -> RemoteNote {
        RemoteNote {
            id: id.into(),
            contact_id: "c".into(),
            text: text.into(),
            date: Some(date.into()),
            created_at: Some("1999-01-01T00:00:00Z".into()),
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_a_note_new_since_the_snapshot_unclaimed_with_the_same_words_and_date_is_adopted() {
        let g = group("Visit,\r\n\"Müller\"", Some("2024-03-15"));
        let none = set(&[]);
        let ours = note("n1", "Visit,\n\"Müller\"", "2024-03-15");
        assert!(adoptable(&ours, &g, &none, &none), "line ends normalized");
        let unknown_time = RemoteNote {
            created_at: None,
            ..ours.clone()
        };
        assert!(
            adoptable(&unknown_time, &g, &none, &none),
            "no creation time needed"
        );
        assert!(
            !adoptable(&ours, &g, &set(&["n1"]), &none),
            "there before the first note: in the snapshot"
        );
        assert!(
            !adoptable(&ours, &g, &none, &set(&["n1"])),
            "another group's"
        );
        let other_date = note("n4", "Visit,\n\"Müller\"", "2024-03-16");
        assert!(!adoptable(&other_date, &g, &none, &none));
        let other_text = note("n5", "Visit, Müller", "2024-03-15");
        assert!(!adoptable(&other_text, &g, &none, &none));
    }

    #[test]
    fn a_group_without_a_date_takes_only_a_note_dated_within_a_day_of_its_intent() {
        let g = group("Lunch", None);
        let none = set(&[]);
        assert!(adoptable(
            &note("n1", "Lunch", "2026-11-30"),
            &g,
            &none,
            &none
        ));
        assert!(adoptable(
            &note("n2", "Lunch", "2026-12-01"),
            &g,
            &none,
            &none
        ));
        assert!(
            !adoptable(&note("n3", "Lunch", "2024-01-01"), &g, &none, &none),
            "a dated group's note"
        );
        let never_sent = NoteGroup {
            intent_at: None,
            ..g.clone()
        };
        assert!(!adoptable(
            &note("n1", "Lunch", "2026-11-30"),
            &never_sent,
            &none,
            &none
        ));
    }

    #[test]
    fn settle_waits_grow_threefold_and_end_with_the_window() {
        // Moments given, not read: the same on a busy machine.
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = Settling::since_at(t0, Duration::from_secs(120), Duration::ZERO);
        assert_eq!(s.next_wait_at(at(0)), Some(Duration::from_secs(5)));
        assert_eq!(s.next_wait_at(at(5)), Some(Duration::from_secs(15)));
        assert_eq!(s.next_wait_at(at(20)), Some(Duration::from_secs(45)));
        // The next (135 s) is cut to what is left of the window.
        assert_eq!(s.next_wait_at(at(65)), Some(Duration::from_secs(55)));
        assert_eq!(s.next_wait_at(at(120)), None, "the window is over");
        let mut over = Settling::since_at(t0, Duration::from_secs(120), Duration::from_secs(121));
        assert_eq!(over.next_wait_at(t0), None, "the window began long ago");
        let mut none = Settling::since_at(t0, Duration::ZERO, Duration::ZERO);
        assert_eq!(none.next_wait_at(t0), None, "--settle-window 0");
    }
}
