//! The records a manifest attaches to, read by `check` before anything is sent: a row whose
//! `reference_id` names no record of its type, or a record of another contact, is then an error
//! of the manifest (`record_not_found`, `record_of_other_contact`, on its line) instead of a
//! failure that `run` finds only after the file was uploaded. The reads are `run`'s own (see
//! `pipeline::snapshots`), sent through the context's rate limit, throttle gate and retries.
//!
//! What it costs, per contact and type (a family): one record, one `GET /{type}s/{id}`. Several:
//! the contact's listing, `GET /{type}s?contact_id=`, 100 a page, until it has shown every
//! wanted record or its pages left are no fewer than the wanted records it has not shown (one
//! `GET` each is then no dearer); then one `GET /{type}s/{id}` for each wanted record it did not
//! show, which tells a record that does not exist from another contact's. A listing that does
//! not answer (a 404 from a server without that listing or for no such contact, or any other
//! failure) leaves each record to its own `GET`.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures_util::StreamExt;
use serde::Serialize;

use crate::failure::FailureKind;
use crate::manifest::{self, Problem, ProblemKind, Row};
use crate::onepagecrm::ReferenceType;
use crate::pipeline::Context;
use crate::remote::RemoteError;

/// `GET /{type}s?contact_id=` page size: the API's largest.
const PER_PAGE: u64 = 100;
/// The most pages of one family's listing read: a broken server that always says there is
/// another page must not keep `check` going.
const MAX_PAGES: u64 = 10_000;

/// A contact's records of one type: read together.
type Family = (String, ReferenceType);
/// A record as a row names it: its contact, type and id.
type Named = (String, ReferenceType, String);

/// What the reads found (`records` in `check --json`, with a status).
#[derive(Debug, Default, Serialize)]
pub struct Records {
    /// Distinct records the rows name (a contact, a type and an id), each read.
    pub records: usize,
    /// API calls the reads made (throttled ones included).
    pub calls: u64,
    pub found: usize,
    pub not_found: usize,
    pub of_other_contact: usize,
    /// Rows that name a record but whose contact is not known (their email found no contact,
    /// or several, or was not looked up): their records were not read.
    pub rows_not_checked: usize,
    /// The records that do not exist or are another contact's, and why.
    #[serde(skip)]
    bad: HashMap<Named, (FailureKind, String)>,
}

/// The contact a row names: its `contact_id`, or the one its email resolved to (`resolved`:
/// email as [`manifest::email_key`] makes it → contact id).
pub fn contact_of(row: &Row, resolved: &HashMap<String, String>) -> Option<String> {
    match row.contact_id.is_empty() {
        false => Some(row.contact_id.clone()),
        true => resolved
            .get(&manifest::email_key(&row.contact_email))
            .cloned(),
    }
}

/// The record `row` attaches to, if it names one and its contact is known; `Err(())` when it
/// names one of a contact not known. A row that creates its note names none.
fn named(row: &Row, resolved: &HashMap<String, String>) -> Option<Result<Named, ()>> {
    let reference_type = row.reference_type?;
    if row.note.is_some() || row.reference_id.is_empty() {
        return None;
    }
    Some(
        contact_of(row, resolved)
            .map(|contact| (contact, reference_type, row.reference_id.clone()))
            .ok_or(()),
    )
}

/// Reads every record `rows` name, family by family, up to `--concurrency` families at once
/// (the limiter paces them). The first read that fails for good ends it: a read that could not
/// be made says nothing about the record.
pub async fn read(
    ctx: &Context,
    rows: &[Row],
    resolved: &HashMap<String, String>,
) -> Result<Records, RemoteError> {
    let mut records = Records::default();
    let mut families: HashMap<Family, BTreeSet<String>> = HashMap::new();
    for named in rows.iter().filter_map(|r| named(r, resolved)) {
        match named {
            Ok((contact, reference_type, id)) => {
                families
                    .entry((contact, reference_type))
                    .or_default()
                    .insert(id);
            }
            Err(()) => records.rows_not_checked += 1,
        }
    }
    let calls_before = ctx.counts().api_calls;
    let mut reads = futures_util::stream::iter(families)
        .map(|(family, ids)| async move {
            let bad = read_family(ctx, &family, &ids).await;
            (family, ids.len(), bad)
        })
        .buffer_unordered(ctx.settings.concurrency.max(1));
    while let Some(((contact, reference_type), n, bad)) = reads.next().await {
        let bad = bad?;
        records.records += n;
        records.found += n - bad.len();
        for (id, (kind, message)) in bad {
            match kind {
                FailureKind::RecordOfOtherContact => records.of_other_contact += 1,
                _ => records.not_found += 1,
            }
            let record = (contact.clone(), reference_type, id);
            records.bad.insert(record, (kind, message));
        }
    }
    records.calls = ctx.counts().api_calls - calls_before;
    Ok(records)
}

/// Reads the records `ids` of one family (see the module's note on cost): the ones that do not
/// exist or are another contact's, and why.
async fn read_family(
    ctx: &Context,
    (contact_id, reference_type): &Family,
    ids: &BTreeSet<String>,
) -> Result<Vec<(String, (FailureKind, String))>, RemoteError> {
    let listed = match ids.len() {
        1 => HashSet::new(),
        _ => listed(ctx, contact_id, *reference_type, ids).await?,
    };
    let mut bad = Vec::new();
    for id in ids.iter().filter(|id| !listed.contains(id.as_str())) {
        let read = || ctx.read_record(*reference_type, id, contact_id);
        if let Err(why) = ctx.retrying(read).await? {
            bad.push((id.clone(), why));
        }
    }
    Ok(bad)
}

/// The wanted `ids` that the contact's listing of its records of `reference_type` shows, read
/// a page at a time while that can be cheaper than reading the rest one by one.
async fn listed<'a>(
    ctx: &Context,
    contact_id: &str,
    reference_type: ReferenceType,
    ids: &'a BTreeSet<String>,
) -> Result<HashSet<&'a str>, RemoteError> {
    let mut shown = HashSet::new();
    let mut page = 1;
    loop {
        let list = || {
            ctx.client
                .records_of_contact(reference_type, contact_id, page, PER_PAGE)
        };
        let listing = match ctx.api(list).await {
            Ok(listing) => listing,
            Err(e @ (RemoteError::Unauthorized { .. } | RemoteError::Stopped(_))) => return Err(e),
            // The listing is only a shortcut, so it is not retried: without it (a 404 from a
            // server that has no such listing, whatever its body, or from no such contact; an
            // answer that could not be read) each record is read on its own, with retries,
            // which tells all.
            Err(e) => {
                tracing::debug!("no listing of {reference_type:?}s of {contact_id}: {e}");
                return Ok(shown);
            }
        };
        let empty = listing.records.is_empty();
        // A record the listing shows with another contact is left to its own read, which says so.
        let theirs = listing
            .records
            .iter()
            .filter(|r| r.contact_id.is_empty() || r.contact_id == contact_id);
        shown.extend(theirs.filter_map(|r| ids.get(&r.id).map(String::as_str)));
        let unseen = (ids.len() - shown.len()) as u64;
        let pages_left = listing.max_page.saturating_sub(page);
        let last = empty || pages_left == 0 || page >= MAX_PAGES;
        if last || unseen == 0 || pages_left >= unseen {
            return Ok(shown);
        }
        page += 1;
    }
}

/// The problems of the rows whose record does not exist or is another contact's, each with its
/// line and the column `reference_id`.
pub fn problems(
    rows: &[Row],
    resolved: &HashMap<String, String>,
    records: &Records,
) -> Vec<Problem> {
    let problem = |row: &Row| {
        let named = named(row, resolved)?.ok()?;
        let (kind, message) = records.bad.get(&named)?;
        let kind = match kind {
            FailureKind::RecordOfOtherContact => ProblemKind::RecordOfOtherContact,
            _ => ProblemKind::RecordNotFound,
        };
        Some(Problem::error(
            Some(row.line),
            Some("reference_id"),
            kind,
            message.clone(),
        ))
    };
    rows.iter().filter_map(problem).collect()
}

/// The counts in one line, for `check`'s report.
pub fn describe(r: &Records) -> String {
    let mut line = format!(
        "{} {} read with {} API {}: {} found, {} not found, {} of another contact",
        r.records,
        if r.records == 1 { "record" } else { "records" },
        r.calls,
        if r.calls == 1 { "call" } else { "calls" },
        r.found,
        r.not_found,
        r.of_other_contact
    );
    if r.rows_not_checked > 0 {
        line.push_str(&format!(
            "; {} {} not checked (contact not known)",
            r.rows_not_checked,
            if r.rows_not_checked == 1 {
                "row"
            } else {
                "rows"
            }
        ));
    }
    line
}
