//! Records read before their first attach, so that a lost step-3 answer settles by itself.
//!
//! OnePageCRM's attachment objects carry no key and no creation time, and its documented link
//! (`https://{foo.bar}/mario.jpg`) shows no key. So before a run's first attach to a
//! record, the record's attachments (id, name, size) are kept in the state file; after a lost
//! answer, the one attachment of the row's name and size that is in neither that snapshot nor
//! claimed by another row is the lost attempt's. Where the links do show the key the tool sent (a
//! presigned S3 link; learned from this run's own attach answers), a key match is proof and
//! costs nothing, and no more snapshots are taken. Until the run's first attach answer has told
//! which links the server gives, one row goes ahead (it reads its record, uploads, attaches)
//! while the others wait for its answer before they read theirs: so a server whose links show
//! the key costs one read a run, not one for each row under way at the start. A row that
//! attaches a link (no upload, no key) always has its record read: only its snapshot settles a
//! lost answer.
//!
//! What a snapshot costs: the records of one contact and type that this run attaches to are read
//! together. One record: `GET /{type}s/{id}` (one call). Several: the contact's records of that
//! type, `GET /{type}s?contact_id=`, 100 a page (one call per 100 records the contact has),
//! then one `GET /{type}s/{id}` for each wanted record the listing did not show. The same reads
//! tell a record that does not exist or that belongs to another contact, before any of its bytes
//! is sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{Context, RowError};
use crate::checkpoint::StoredRow;
use crate::checkpoint::{HeldAttachment, RecordSnapshot};
use crate::failure::FailureKind;
use crate::onepagecrm::ReferenceType;
use crate::remote::RemoteError;
use crate::remote::api::RemoteRecord;

/// A record: its type and id.
type RecordId = (ReferenceType, String);
/// A contact's records of one type: read together.
type Family = (String, ReferenceType);

/// `GET /{type}s?contact_id=` page size: the API's largest.
const PER_PAGE: u64 = 100;
/// The most pages read of one contact's records of one type.
const MAX_PAGES: u64 = 10_000;

/// What this run's attach answers told of the server's links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Links {
    /// No answer yet, and no row is finding out.
    #[default]
    Unknown,
    /// One row (holding a [`Probe`]) is on its way to the first answer.
    Probing,
    /// An answer's link showed the key it was sent: a key match is proof.
    ShowKeys,
    /// An answer's link did not: every record is read before its first attach.
    HideKeys,
}

/// What the run knows of records' snapshots.
#[derive(Default)]
pub struct Snapshots {
    links: Mutex<Links>,
    /// Told when `links` leaves `Probing`.
    told: tokio::sync::Notify,
    /// Records read (or created) in this run, and the contact each belongs to (empty when its
    /// answer did not say). Every run reads a record again before its first attach there.
    taken: Mutex<HashMap<RecordId, String>>,
    /// The records of each family this run attaches to.
    wanted: Mutex<HashMap<Family, HashSet<String>>>,
    /// Records that do not exist, for the rows of one contact, and what those rows are told.
    bad: Mutex<HashMap<(RecordId, String), (FailureKind, String)>>,
    /// One read at a time per family.
    slots: Mutex<HashMap<Family, Arc<tokio::sync::Mutex<()>>>>,
    /// This run's generation of reads (see migration 0004), once asked for.
    generation: tokio::sync::OnceCell<i64>,
}

impl Snapshots {
    /// The records `rows` attach to (before they start; the rows of a run come in batches):
    /// read together, family by family.
    pub fn plan<'a>(&self, rows: impl Iterator<Item = &'a StoredRow>) {
        // Links that show keys need no snapshot: nothing is wanted (a run of a million rows
        // would otherwise keep a million record ids).
        if self.links_show_keys() {
            return;
        }
        let taken = lock(&self.taken);
        let mut wanted = lock(&self.wanted);
        for row in rows {
            if row.reference_id.is_empty() || row.contact_id.is_empty() {
                continue;
            }
            if taken.contains_key(&(row.reference_type, row.reference_id.clone())) {
                continue;
            }
            wanted
                .entry((row.contact_id.clone(), row.reference_type))
                .or_default()
                .insert(row.reference_id.clone());
        }
    }

    /// The generation of `row`'s record's snapshot, when it was read (or created) in this run.
    pub fn generation_of(&self, row: &StoredRow) -> Option<i64> {
        let read = lock(&self.taken).contains_key(&(row.reference_type, row.reference_id.clone()));
        read.then(|| self.generation.get().copied()).flatten()
    }

    /// Links showed keys in this run: a key match settles a lost answer.
    pub fn links_show_keys(&self) -> bool {
        *lock(&self.links) == Links::ShowKeys
    }

    /// An attach answer's link showed the key sent (`shows`), or did not. Links that showed a key
    /// once are taken to show every key.
    pub fn learned(&self, shows: bool) {
        let mut links = lock(&self.links);
        *links = match (*links, shows) {
            (_, true) => Links::ShowKeys,
            (Links::ShowKeys, false) => Links::ShowKeys,
            (_, false) => Links::HideKeys,
        };
        let show = *links == Links::ShowKeys;
        drop(links);
        if show {
            lock(&self.wanted).clear();
        }
        self.told.notify_waiters();
    }

    /// A record this state file created (a note of `contact_id`): it held nothing.
    pub fn created(&self, reference_type: ReferenceType, id: &str, contact_id: &str) {
        lock(&self.taken).insert((reference_type, id.to_string()), contact_id.to_string());
    }

    /// Why `row` cannot attach to its record, if that is known: the record does not exist, or
    /// it has a snapshot and is another contact's.
    fn known_bad(&self, row: &StoredRow) -> Option<RemoteError> {
        let record: RecordId = (row.reference_type, row.reference_id.clone());
        if let Some(owner) = lock(&self.taken)
            .get(&record)
            .filter(|owner| !owner.is_empty() && **owner != row.contact_id)
        {
            return Some(RemoteError::Record {
                kind: FailureKind::RecordOfOtherContact,
                message: other_contact(
                    row.reference_type,
                    &row.reference_id,
                    owner,
                    &row.contact_id,
                ),
            });
        }
        lock(&self.bad)
            .get(&(record, row.contact_id.clone()))
            .map(|(kind, message)| RemoteError::Record {
                kind: *kind,
                message: message.clone(),
            })
    }

    fn slot(&self, family: &Family) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.slots).entry(family.clone()).or_default().clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by the row finding out which links the server gives; if it ends without an attach
/// answer (it failed, or was cut short), another row finds out instead.
pub struct Probe<'a>(&'a Snapshots);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let mut links = lock(&self.0.links);
        if *links == Links::Probing {
            *links = Links::Unknown;
            drop(links);
            self.0.told.notify_waiters();
        }
    }
}

impl Context {
    /// This run's generation of reads: larger than any the state file recorded before.
    pub(super) async fn generation(&self) -> Result<i64, RowError> {
        self.snapshots
            .generation
            .get_or_try_init(|| async {
                self.state.next_generation().await.map_err(RowError::Store)
            })
            .await
            .copied()
    }

    /// Waits while another row is finding out which links the server gives; `Some(probe)` when
    /// this row is to find out (it holds the probe until its attach answer).
    async fn links_known(&self) -> Result<Option<Probe<'_>>, RowError> {
        let snaps = &self.snapshots;
        loop {
            let told = snaps.told.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            {
                let mut links = lock(&snaps.links);
                match *links {
                    Links::ShowKeys | Links::HideKeys => return Ok(None),
                    Links::Unknown => {
                        *links = Links::Probing;
                        return Ok(Some(Probe(snaps)));
                    }
                    Links::Probing => {}
                }
            }
            // Waited without a slot: the row finding out may need one back (see `aside`). Nothing
            // of this row was done yet: when no new row may start, it ends as never started.
            let stopping = self.stop_starting.clone();
            let waited = self
                .aside(async {
                    tokio::select! {
                        biased;
                        _ = stopping.cancelled() => false,
                        _ = told => true,
                    }
                })
                .await;
            match waited {
                Some(true) => {}
                Some(false) => return Err(RowError::Cut),
                None => return Err(self.cut(RemoteError::Stopped(self.abort_reason()))),
            }
        }
    }

    /// Before `row`'s first attach to its record: the record's snapshot, unless it has one or
    /// this run's links show keys. Fails the row when the record does not exist or is another
    /// contact's. `Some(probe)` when this row is to find out which links the server gives.
    ///
    /// A row that attaches a link always has its record read first, whatever the links show:
    /// the link it makes shows no key, and the same link may be there already, so only the
    /// snapshot settles a lost answer. Its attach answer tells nothing of the server's links:
    /// it never finds out (no probe).
    pub(super) async fn ensure_snapshot(
        &self,
        row: &StoredRow,
    ) -> Result<Option<Probe<'_>>, RowError> {
        let record: RecordId = (row.reference_type, row.reference_id.clone());
        let snaps = &self.snapshots;
        if let Some(e) = snaps.known_bad(row) {
            return Err(e.into());
        }
        if lock(&snaps.taken).contains_key(&record) {
            return Ok(None);
        }
        let probe = match row.is_link() {
            true => None,
            false => self.links_known().await?,
        };
        if snaps.links_show_keys() && !row.is_link() {
            return Ok(None);
        }
        let family: Family = (row.contact_id.clone(), row.reference_type);
        let slot = snaps.slot(&family);
        let _one_read_at_a_time = slot.lock().await;
        if let Some(e) = snaps.known_bad(row) {
            return Err(e.into());
        }
        if lock(&snaps.taken).contains_key(&record) {
            return Ok(probe);
        }
        // Read now, the family's wanted records are wanted no more (rows of later batches add
        // theirs again).
        let mut ids: HashSet<String> = lock(&snaps.wanted).remove(&family).unwrap_or_default();
        {
            let taken = lock(&snaps.taken);
            ids.retain(|id| !taken.contains_key(&(row.reference_type, id.clone())));
        }
        ids.insert(row.reference_id.clone());
        let (found, bad) = self.read_records(row, &ids).await?;
        let recorded: Vec<RecordSnapshot> = found
            .iter()
            .map(|r| RecordSnapshot {
                reference_type: row.reference_type,
                reference_id: r.id.clone(),
                contact_id: r.contact_id.clone(),
                held: r
                    .attachments
                    .iter()
                    .map(|a| HeldAttachment {
                        id: a.id.clone(),
                        filename: a.filename.clone(),
                        size: a.size,
                    })
                    .collect(),
            })
            .collect();
        let generation = self.generation().await?;
        self.state
            .record_snapshots(recorded, generation)
            .await
            .map_err(RowError::Store)?;
        lock(&snaps.taken).extend(
            found
                .into_iter()
                .map(|r| ((row.reference_type, r.id), r.contact_id)),
        );
        lock(&snaps.bad).extend(
            bad.into_iter()
                .map(|(record, why)| ((record, row.contact_id.clone()), why)),
        );
        match snaps.known_bad(row) {
            Some(e) => Err(e.into()),
            None => Ok(probe),
        }
    }

    /// Reads the records `ids` of `row`'s contact and type (see the module's note on cost): the
    /// ones found, and the ones that are missing or another contact's.
    async fn read_records(
        &self,
        row: &StoredRow,
        ids: &HashSet<String>,
    ) -> Result<(Vec<RemoteRecord>, Vec<(RecordId, (FailureKind, String))>), RowError> {
        let mut found = Vec::new();
        if ids.len() > 1 {
            // Listed by the row's contact: that contact's, whatever the answer says.
            found = self
                .records_of_contact(row)
                .await?
                .into_iter()
                .filter(|r| ids.contains(&r.id))
                .map(|r| RemoteRecord {
                    contact_id: row.contact_id.clone(),
                    ..r
                })
                .collect();
        }
        let listed: HashSet<String> = found.iter().map(|r| r.id.clone()).collect();
        let mut bad = Vec::new();
        for id in ids.iter().filter(|id| !listed.contains(*id)) {
            // Another contact's record is kept too (its own rows attach to it); this row's
            // contact is told apart by `known_bad`.
            match self
                .api(|| self.client.record(row.reference_type, id))
                .await
            {
                Ok(record) => found.push(record),
                Err(RemoteError::Api { status: 404, .. }) => bad.push((
                    (row.reference_type, id.clone()),
                    (
                        FailureKind::RecordNotFound,
                        record_not_found(row.reference_type, id),
                    ),
                )),
                Err(e) => return Err(e.into()),
            }
        }
        Ok((found, bad))
    }

    /// Every page of `row`'s contact's records of its type.
    async fn records_of_contact(&self, row: &StoredRow) -> Result<Vec<RemoteRecord>, RowError> {
        let mut records = Vec::new();
        let mut page = 1;
        loop {
            let listed = self
                .api(|| {
                    self.client.records_of_contact(
                        row.reference_type,
                        &row.contact_id,
                        page,
                        PER_PAGE,
                    )
                })
                .await?;
            let empty = listed.records.is_empty();
            records.extend(listed.records);
            if empty || page >= listed.max_page || page >= MAX_PAGES {
                return Ok(records);
            }
            page += 1;
        }
    }

    /// One record, checked to be `contact_id`'s: `Ok(Err(why))` when it does not exist or is
    /// another contact's.
    pub async fn read_record(
        &self,
        reference_type: ReferenceType,
        id: &str,
        contact_id: &str,
    ) -> Result<Result<RemoteRecord, (FailureKind, String)>, RemoteError> {
        match self.api(|| self.client.record(reference_type, id)).await {
            Ok(r) if !r.contact_id.is_empty() && r.contact_id != contact_id => Ok(Err((
                FailureKind::RecordOfOtherContact,
                other_contact(reference_type, id, &r.contact_id, contact_id),
            ))),
            Ok(r) => Ok(Ok(r)),
            Err(RemoteError::Api { status: 404, .. }) => Ok(Err((
                FailureKind::RecordNotFound,
                record_not_found(reference_type, id),
            ))),
            Err(e) => Err(e),
        }
    }
}

/// What a row whose record does not exist is told (by its snapshot read, or by step 3's 404).
pub fn record_not_found(reference_type: ReferenceType, id: &str) -> String {
    format!(
        "no {} has the id {id} (the API answered 404); fix the row's reference_id or reference_type",
        reference_type.as_str()
    )
}

/// What a row on another contact's record is told.
pub fn other_contact(
    reference_type: ReferenceType,
    id: &str,
    owner: &str,
    contact_id: &str,
) -> String {
    format!(
        "{} {id} belongs to contact {owner}, not to contact {contact_id}; fix the row's contact or reference_id",
        reference_type.as_str()
    )
}
