//! Contacts by email: every distinct email of a manifest (letter case does not matter) is looked
//! up once with `GET /contacts?email=`, through the run's rate limit, throttle gate and retries,
//! and what was found becomes the rows' contact ids, or their problems (`contact_not_found`,
//! `contact_ambiguous`, each with its line and column). `check` and `run` share it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::StreamExt;
use serde::Serialize;

use crate::manifest::{self, Problem, ProblemKind, Row, shown};
use crate::pipeline::Context;
use crate::remote::RemoteError;

/// The most pages of one email's contacts read (10,000 contacts): no real answer has more, and a
/// broken server that always says there is another page must not keep a run going.
const MAX_PAGES: u32 = 100;

/// What the lookup of one email found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    One(String),
    None,
    /// The ids of every contact that has the email, sorted.
    Several(Vec<String>),
}

/// What the lookups of one manifest found, and how many each way (the counts are what `check
/// --json` shows as `lookups`).
#[derive(Debug, Default, Serialize)]
pub struct Lookups {
    /// Each distinct email (as [`manifest::email_key`] makes it) and what it resolved to.
    #[serde(skip)]
    pub found: BTreeMap<String, Found>,
    /// Distinct well-formed emails in the manifest.
    pub emails: usize,
    /// Resolved by an earlier run (the state file's `lookups`): not looked up again.
    pub known: usize,
    /// Looked up now (one `GET /contacts?email=` each, more for a list of over 100).
    pub looked_up: usize,
    /// Looked up now and found exactly one contact.
    pub resolved: usize,
    pub not_found: usize,
    pub ambiguous: usize,
}

impl Lookups {
    /// The emails that resolved to one contact, and its id.
    pub fn resolved_ids(&self) -> HashMap<String, String> {
        self.found
            .iter()
            .filter_map(|(email, found)| match found {
                Found::One(id) => Some((email.clone(), id.clone())),
                _ => None,
            })
            .collect()
    }

    /// The emails looked up now that resolved to one contact (to record in the state file).
    pub fn resolved_now<'a>(
        &'a self,
        known: &'a HashMap<String, String>,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.found
            .iter()
            .filter_map(move |(email, found)| match found {
                Found::One(id) if !known.contains_key(email) => Some((email.as_str(), id.as_str())),
                _ => None,
            })
    }
}

/// The first ten ids of a list, and how many more: a message stays short however many contacts
/// share one email.
fn first_ids(ids: &[String]) -> String {
    match ids.len() {
        0..=10 => ids.join(", "),
        n => format!("{} and {} more", ids[..10].join(", "), n - 10),
    }
}

/// The distinct emails of the rows that name their contact by a well-formed email, as
/// [`manifest::email_key`] makes them (so `Ada@X.example` and `ada@x.example` are one).
pub fn emails(rows: &[Row]) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r.contact_id.is_empty() && !r.contact_email.is_empty())
        .filter(|r| manifest::check_email(&r.contact_email).is_ok())
        .map(|r| manifest::email_key(&r.contact_email))
        .collect()
}

/// How many emails of `rows` a run would look up, `known` being resolved already.
pub fn to_look_up(rows: &[Row], known: &HashMap<String, String>) -> usize {
    emails(rows)
        .iter()
        .filter(|e| !known.contains_key(*e))
        .count()
}

/// The contacts that have `email`: every page of the list, each page one API call through the
/// context's limiter, gate and retries.
pub async fn find(ctx: &Context, email: &str) -> Result<Found, RemoteError> {
    let mut ids = Vec::new();
    let mut page = 1;
    loop {
        let (got, max_page) = ctx
            .api_retrying(|| ctx.client.contacts_by_email(email, page))
            .await?;
        let empty = got.is_empty();
        ids.extend(got);
        if empty || page >= max_page || page >= MAX_PAGES {
            break;
        }
        page += 1;
    }
    ids.sort();
    ids.dedup();
    Ok(match ids.len() {
        0 => Found::None,
        1 => Found::One(ids.remove(0)),
        _ => Found::Several(ids),
    })
}

/// Looks up every email of `emails` (as [`emails`] gives them) that `known` (email → contact,
/// from earlier runs) does not resolve, up to `--concurrency` at once (the limiter paces them). The first call that fails
/// for good ends it: a lookup that could not be made says nothing about the email.
pub async fn look_up(
    ctx: &Context,
    emails: &BTreeSet<String>,
    known: &HashMap<String, String>,
) -> Result<Lookups, RemoteError> {
    let mut lookups = Lookups::default();
    let mut ask = Vec::new();
    for email in emails.iter().cloned() {
        lookups.emails += 1;
        match known.get(&email) {
            Some(id) => {
                lookups.known += 1;
                lookups.found.insert(email, Found::One(id.clone()));
            }
            None => ask.push(email),
        }
    }
    let concurrency = ctx.settings.concurrency.max(1);
    let mut answers = futures_util::stream::iter(ask)
        .map(|email| async move {
            let found = find(ctx, &email).await;
            (email, found)
        })
        .buffer_unordered(concurrency);
    while let Some((email, found)) = answers.next().await {
        let found = found?;
        lookups.looked_up += 1;
        match &found {
            Found::One(_) => lookups.resolved += 1,
            Found::None => lookups.not_found += 1,
            Found::Several(_) => lookups.ambiguous += 1,
        }
        lookups.found.insert(email, found);
    }
    Ok(lookups)
}

/// The problems of the rows whose email resolved to no contact or to several, each with its
/// line and the column `contact_email`.
pub fn problems(rows: &[Row], lookups: &Lookups) -> Vec<Problem> {
    let mut problems = Vec::new();
    for row in rows
        .iter()
        .filter(|r| r.contact_id.is_empty() && !r.contact_email.is_empty())
    {
        let email = manifest::email_key(&row.contact_email);
        let (kind, message) = match lookups.found.get(&email) {
            Some(Found::None) => (
                ProblemKind::ContactNotFound,
                format!(
                    "no contact in OnePageCRM has the email {}; fix the email here or add it to the contact, or give the row a contact_id",
                    shown(&row.contact_email)
                ),
            ),
            Some(Found::Several(ids)) => (
                ProblemKind::ContactAmbiguous,
                format!(
                    "{} contacts have the email {} ({}); give the row the contact_id of the right one instead",
                    ids.len(),
                    shown(&row.contact_email),
                    first_ids(ids)
                ),
            ),
            _ => continue,
        };
        problems.push(Problem::error(
            Some(row.line),
            Some("contact_email"),
            kind,
            message,
        ));
    }
    problems
}

/// The counts in one line, for `check` and `run` on stderr.
pub fn describe(l: &Lookups) -> String {
    let mut line = format!(
        "{} {} by email: {} looked up now ({} resolved, {} not found, {} ambiguous)",
        l.emails,
        if l.emails == 1 { "contact" } else { "contacts" },
        l.looked_up,
        l.resolved,
        l.not_found,
        l.ambiguous
    );
    if l.known > 0 {
        line.push_str(&format!(", {} resolved by an earlier run", l.known));
    }
    line
}
