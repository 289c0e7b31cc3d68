//! Notes created from the manifest, exactly once, before the rows that attach to them.
//!
//! Rows that give `note_text` form note groups (one contact and one `note_key`, or one text and
//! date); each group gets one note. Before any of those rows starts its three steps, every group
//! still without a note is settled here, `--concurrency` groups at once, and its rows then carry
//! the note's id as their `reference_id`. A stage of its own, rather than rows waiting for each
//! other inside the pipeline: no worker ever sits blocked on another row's note, and a group
//! that cannot be created fails its rows before any of them uploads a byte.
//!
//! Exactly once: the intent is committed before `POST /notes`. A group found in `intent` (an
//! answer lost to a drop, a timeout or a kill) first lists the contact's notes, every page, and
//! adopts a note with the same text (line ends normalized) and date, created no earlier than the
//! group's first intent less `CLOCK_SKEW`, that no group of this state file holds; only if there
//! is none is the note created again. A note older than that was there before and is never taken.
//! Groups whose notes could be told apart only by time (one contact, one text, one date, two
//! `note_key`s) are settled one after the other, so one cannot adopt the other's note.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::{Context, Event, RowError, backoff};
use crate::checkpoint::{self, NoteGroup, NoteState};
use crate::remote::RemoteError;
use crate::remote::api::RemoteNote;

/// How far the server's clock may be behind ours: a note created by our own lost attempt is
/// stamped by the server's clock, the intent by ours. Five minutes covers any NTP-synced pair
/// with a wide margin, and a note of the same words made by a person in the five minutes before
/// the run is the only one this could take for ours.
pub const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

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

/// Whether `note` may be the one this group's lost attempt created: same words and date,
/// created no earlier than `intent_at` (on the server's clock) less the clock skew, held by no
/// group of this state file. A group without a date takes the API's default, the day the note
/// was made: a note dated otherwise was made by a dated group or a person, never by it.
pub fn adoptable(
    note: &RemoteNote,
    group: &NoteGroup,
    intent_at: DateTime<Utc>,
    claimed: &std::collections::HashSet<String>,
) -> bool {
    let Some(created) = created_at(note) else {
        // When it was made cannot be told: it may have been there before; never taken.
        return false;
    };
    let date_matches = match &group.date {
        Some(date) => note.date.as_deref() == Some(date.as_str()),
        None => note
            .date
            .as_deref()
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            // The day in the server's time zone: within a day of the UTC day it was made.
            .is_some_and(|d| (d - created.date_naive()).num_days().abs() <= 1),
    };
    date_matches
        && created >= intent_at - CLOCK_SKEW
        && !claimed.contains(&note.id)
        && normalized(&note.text) == normalized(&group.text)
}

fn created_at(note: &RemoteNote) -> Option<DateTime<Utc>> {
    note.created_at
        .as_deref()
        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Of the adoptable notes, the one most likely this group's own: the first made at or after
/// the intent (another state file's note of the same words made earlier is not it), else the
/// last one made before it, within the skew.
fn likeliest(mut found: Vec<&RemoteNote>, intent_at: DateTime<Utc>) -> Option<&RemoteNote> {
    found.sort_by(|a, b| (created_at(a), &a.id).cmp(&(created_at(b), &b.id)));
    let after = found
        .iter()
        .position(|n| created_at(n).is_some_and(|c| c >= intent_at));
    match after {
        Some(i) => Some(found[i]),
        None => found.last().copied(),
    }
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
    let queue = Arc::new(Mutex::new(families.into_values().collect::<VecDeque<_>>()));
    let settled = Arc::new(Mutex::new(HashMap::new()));
    let rows = Arc::new(rows);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..ctx.settings.concurrency.max(1) {
        let (ctx, queue, settled, rows) =
            (ctx.clone(), queue.clone(), settled.clone(), rows.clone());
        workers.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(family) = next else { break };
                for group in family {
                    let outcome = settle(&ctx, &group, rows.get(&group.group).copied()).await;
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

/// One group: adopt (after an unknown outcome) or create its note, retried as a row's calls are.
async fn settle(ctx: &Context, group: &NoteGroup, rows: Option<usize>) -> Settled {
    if let Some(id) = &group.note_id {
        return Settled::Note(id.clone());
    }
    if ctx.stop_starting.is_cancelled() {
        return Settled::NotStarted;
    }
    match settle_group(ctx, group).await {
        Ok(id) => Settled::Note(id),
        Err(RowError::Cut) => Settled::NotStarted,
        Err(RowError::Remote(RemoteError::Stopped(_))) if ctx.interrupted_now() => {
            Settled::NotStarted
        }
        Err(RowError::Remote(e)) => {
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

async fn settle_group(ctx: &Context, group: &NoteGroup) -> Result<String, RowError> {
    let mut attempts = 0u32;
    let mut unknown = group.state == NoteState::Intent;
    loop {
        if unknown {
            match adopt(ctx, group).await {
                Ok(Some(id)) => return Ok(id),
                Ok(None) => {}
                Err(RowError::Remote(e)) if e.is_retryable() => {
                    retry(ctx, e, &mut attempts).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        // Committed before the request: from here its outcome is unknown until recorded.
        let g = group.group.clone();
        ctx.store
            .call(move |c| checkpoint::note_intent(c, &g))
            .await
            .map_err(RowError::Store)?;
        unknown = true;
        let created = ctx
            .api(|| {
                ctx.client
                    .create_note(&group.contact_id, &group.text, group.date.as_deref())
            })
            .await;
        match created {
            Ok(note) => {
                record(ctx, group, &note.id, false).await?;
                return Ok(note.id);
            }
            Err(e) if e.is_retryable() => retry(ctx, e, &mut attempts).await?,
            // Refused (a contact that does not exist, say): nothing was created. The group stays
            // in `intent`, so a later attempt lists the contact's notes first all the same.
            Err(e) => return Err(e.into()),
        }
    }
}

/// After an unknown outcome: the contact's notes, every page, and the one this group's lost
/// attempt made, if there is one (recorded before this returns).
async fn adopt(ctx: &Context, group: &NoteGroup) -> Result<Option<String>, RowError> {
    let mut notes = Vec::new();
    let mut page = 1;
    // How far the server's clock is ahead of ours, from its first answer (0 when it says not).
    let mut offset = chrono::Duration::zero();
    loop {
        let listed = ctx
            .api(|| ctx.client.list_notes(&group.contact_id, page, PER_PAGE))
            .await?;
        if page == 1
            && let Some(server) = listed.server_time
        {
            offset = chrono::Duration::seconds(server - Utc::now().timestamp());
        }
        let empty = listed.notes.is_empty();
        notes.extend(listed.notes);
        if empty || page >= listed.max_page || page >= MAX_PAGES {
            break;
        }
        page += 1;
    }
    let g = group.group.clone();
    let (intent_at, claimed) = ctx
        .store
        .call(move |c| {
            let intent_at: Option<String> = c.query_row(
                "SELECT intent_at FROM notes WHERE group_key = ?1",
                [&g],
                |r| r.get(0),
            )?;
            Ok((intent_at, checkpoint::claimed_notes(c)?))
        })
        .await
        .map_err(RowError::Store)?;
    let Some(intent_at) = intent_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
    else {
        // No intent was ever committed, so nothing was ever sent.
        return Ok(None);
    };
    // The intent on the server's clock, which stamps `created_at`: a server minutes behind or
    // ahead of this machine is measured, not only allowed for by the skew.
    let intent_at = intent_at + offset;
    let found: Vec<&RemoteNote> = notes
        .iter()
        .filter(|n| n.contact_id.is_empty() || n.contact_id == group.contact_id)
        .filter(|n| adoptable(n, group, intent_at, &claimed))
        .collect();
    let Some(note) = likeliest(found, intent_at) else {
        return Ok(None);
    };
    record(ctx, group, &note.id, true).await?;
    Ok(Some(note.id.clone()))
}

/// Records `note_id` as the group's note and gives it to the group's rows.
async fn record(
    ctx: &Context,
    group: &NoteGroup,
    note_id: &str,
    adopted: bool,
) -> Result<(), RowError> {
    let (g, id) = (group.group.clone(), note_id.to_string());
    ctx.store
        .call_atomic(move |c| checkpoint::note_created(c, &g, &id, adopted))
        .await
        .map_err(RowError::Store)?;
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
            intent_at: None,
            note_id: None,
        }
    }

    fn note(id: &str, text: &str, date: &str, created_at: &str) -> RemoteNote {
        RemoteNote {
            id: id.into(),
            contact_id: "c".into(),
            text: text.into(),
            date: Some(date.into()),
            created_at: Some(created_at.into()),
        }
    }

    #[test]
    fn only_a_recent_unclaimed_note_of_the_same_words_and_date_is_adopted() {
        let intent: DateTime<Utc> = "2026-11-30T10:00:00Z".parse().unwrap();
        let g = group("Visit,\r\n\"Müller\"", Some("2024-03-15"));
        let none = Default::default();
        let ours = note(
            "n1",
            "Visit,\n\"Müller\"",
            "2024-03-15",
            "2026-11-30T10:00:01Z",
        );
        assert!(adoptable(&ours, &g, intent, &none), "line ends normalized");
        // A server clock a little behind ours.
        let behind = note(
            "n2",
            "Visit,\r\"Müller\"",
            "2024-03-15",
            "2026-11-30T09:56:00Z",
        );
        assert!(adoptable(&behind, &g, intent, &none));
        let before = note(
            "n3",
            "Visit,\n\"Müller\"",
            "2024-03-15",
            "2026-11-30T09:54:59Z",
        );
        assert!(
            !adoptable(&before, &g, intent, &none),
            "there before the run"
        );
        let other_date = note(
            "n4",
            "Visit,\n\"Müller\"",
            "2024-03-16",
            "2026-11-30T10:00:01Z",
        );
        assert!(!adoptable(&other_date, &g, intent, &none));
        let other_text = note("n5", "Visit, Müller", "2024-03-15", "2026-11-30T10:00:01Z");
        assert!(!adoptable(&other_text, &g, intent, &none));
        let claimed = ["n1".to_string()].into_iter().collect();
        assert!(!adoptable(&ours, &g, intent, &claimed), "another group's");
        let unknown_time = RemoteNote {
            created_at: None,
            ..ours.clone()
        };
        assert!(!adoptable(&unknown_time, &g, intent, &none));
    }

    #[test]
    fn a_group_without_a_date_takes_only_a_note_dated_the_day_it_was_made() {
        let intent: DateTime<Utc> = "2026-11-30T10:00:00Z".parse().unwrap();
        let g = group("Lunch", None);
        let none = Default::default();
        let today = note("n1", "Lunch", "2026-11-30", "2026-11-30T10:00:01Z");
        assert!(adoptable(&today, &g, intent, &none));
        let dated = note("n2", "Lunch", "2024-01-01", "2026-11-30T10:00:01Z");
        assert!(
            !adoptable(&dated, &g, intent, &none),
            "a dated group's note"
        );
    }

    #[test]
    fn the_note_made_after_the_intent_is_preferred_to_an_older_one_of_the_same_words() {
        let intent: DateTime<Utc> = "2026-11-30T10:00:00Z".parse().unwrap();
        let other_run = note("a", "Lunch", "2026-11-30", "2026-11-30T09:58:00Z");
        let ours = note("b", "Lunch", "2026-11-30", "2026-11-30T10:00:02Z");
        let later = note("c", "Lunch", "2026-11-30", "2026-11-30T10:03:00Z");
        let picked = likeliest(vec![&other_run, &later, &ours], intent).unwrap();
        assert_eq!(picked.id, "b");
        // Only older ones (a server clock behind ours): the latest of them.
        let older = note("d", "Lunch", "2026-11-30", "2026-11-30T09:59:00Z");
        assert_eq!(likeliest(vec![&other_run, &older], intent).unwrap().id, "d");
    }
}
