//! Whole-manifest checks before anything is sent: every file a manifest names is looked at (in
//! parallel, with rayon), duplicates across rows are found, and the result is one report that
//! says which rows are valid and what is wrong with the others.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::manifest::{self, Manifest, Problem, ProblemKind, Row, Severity, io_reason};
use crate::onepagecrm::{MAX_FILE_SIZE, ReferenceType};

/// What preflight learnt about one row's file.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileFacts {
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (0 when the platform gives none), to
    /// notice a file that changed after it was uploaded.
    pub mtime_ns: i64,
    /// Identity of the file on disk (device, inode), so two paths to one file are one file.
    identity: Option<(u64, u64)>,
}

/// A manifest with every row checked.
#[derive(Debug)]
pub struct Checked {
    pub manifest: Manifest,
    /// Facts of each row's file, by index into `manifest.rows`; `None` where the file is unusable.
    pub files: Vec<Option<FileFacts>>,
    /// Whether each row is valid (no error of its own), by index into `manifest.rows`.
    pub valid: Vec<bool>,
    pub summary: Summary,
    /// The contacts the rows' emails resolved to (email as `manifest::email_key` makes it →
    /// contact id), once looked up (see `lookup`); empty before.
    pub resolved: HashMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub rows: usize,
    pub valid: usize,
    pub invalid: usize,
    pub errors: usize,
    pub warnings: usize,
    pub files_to_upload: usize,
    pub bytes_to_upload: u64,
    pub largest_file: Option<LargestFile>,
    /// Valid rows that attach a link (no upload): not in `files_to_upload`.
    pub links_to_attach: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LargestFile {
    pub line: u64,
    pub file: String,
    pub size: u64,
}

impl Summary {
    /// Adds the counts of another chunk of the same manifest.
    fn add(&mut self, other: &Summary) {
        self.rows += other.rows;
        self.valid += other.valid;
        self.invalid += other.invalid;
        self.errors += other.errors;
        self.warnings += other.warnings;
        self.files_to_upload += other.files_to_upload;
        self.bytes_to_upload += other.bytes_to_upload;
        self.links_to_attach += other.links_to_attach;
        if let Some(l) = &other.largest_file
            && self
                .largest_file
                .as_ref()
                .is_none_or(|mine| l.size > mine.size)
        {
            self.largest_file = Some(l.clone());
        }
    }
}

impl Checked {
    /// True when nothing stands in the way of uploading every row.
    pub fn is_valid(&self) -> bool {
        self.summary.errors == 0
    }

    /// Adds problems found after the file checks (the email lookups), and sorts and counts
    /// everything again.
    pub fn add_problems(&mut self, problems: Vec<Problem>) {
        self.manifest.problems.extend(problems);
        let (valid, summary) = settle(&mut self.manifest, &self.files);
        self.valid = valid;
        self.summary = summary;
    }
}

/// Reads and checks a manifest as a whole.
pub fn check(path: &Path, options: manifest::ReadOptions) -> Checked {
    let manifest = manifest::read(path, options);
    check_manifest(manifest)
}

/// Every row's file looked at (in parallel), its problems added to the manifest's: each row's
/// facts, by index into `manifest.rows`.
fn check_files(manifest: &mut Manifest) -> Vec<Option<FileFacts>> {
    let base = manifest.base.clone();
    let results: Vec<(Option<FileFacts>, Vec<Problem>)> = manifest
        .rows
        .par_iter()
        .map(|row| check_file(row, &base))
        .collect();
    let mut files = Vec::with_capacity(results.len());
    for (facts, problems) in results {
        files.push(facts);
        manifest.problems.extend(problems);
    }
    files
}

/// Checks every row's file, then what rows share, and sums it all up.
pub fn check_manifest(mut manifest: Manifest) -> Checked {
    let files = check_files(&mut manifest);
    find_duplicates(&manifest.rows, &files, &mut manifest.problems);
    let (valid, summary) = settle(&mut manifest, &files);
    Checked {
        manifest,
        files,
        valid,
        summary,
        resolved: HashMap::new(),
    }
}

/// Sorts the problems and says, from them, which rows are valid and what the totals are.
fn settle(manifest: &mut Manifest, files: &[Option<FileFacts>]) -> (Vec<bool>, Summary) {
    // Line order, then column order as documented, errors before warnings on one spot.
    manifest.problems.sort_by_key(|p| {
        let column = p
            .column
            .map(|c| manifest::COLUMNS.iter().position(|k| *k == c).unwrap_or(9));
        (p.line, column, p.severity)
    });

    let mut invalid_lines: Vec<u64> = manifest
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .filter_map(|p| p.line)
        .collect();
    invalid_lines.dedup();
    let valid: Vec<bool> = manifest
        .rows
        .iter()
        .map(|r| invalid_lines.binary_search(&r.line).is_err())
        .collect();

    let summary = summarize(manifest, files, &valid);
    (valid, summary)
}

fn summarize(manifest: &Manifest, files: &[Option<FileFacts>], valid: &[bool]) -> Summary {
    let errors = manifest
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = manifest.problems.len() - errors;
    let valid_rows = valid.iter().filter(|v| **v).count();
    let links = (manifest.rows.iter().zip(valid))
        .filter(|(row, ok)| **ok && row.link().is_some())
        .count();
    let mut bytes = 0;
    let mut largest: Option<LargestFile> = None;
    for ((row, facts), ok) in manifest.rows.iter().zip(files).zip(valid) {
        let (true, Some(facts)) = (*ok, facts) else {
            continue;
        };
        bytes += facts.size;
        if largest.as_ref().is_none_or(|l| facts.size > l.size) {
            largest = Some(LargestFile {
                line: row.line,
                file: row.file.clone(),
                size: facts.size,
            });
        }
    }
    // Records the reader could not turn into a row (wrong field count, bad UTF-8) are rows too.
    let rows = manifest.rows.len() + manifest.unparsed.len();
    Summary {
        rows,
        valid: valid_rows,
        invalid: rows - valid_rows,
        errors,
        warnings,
        files_to_upload: valid_rows - links,
        bytes_to_upload: bytes,
        largest_file: largest,
        links_to_attach: links,
    }
}

/// The file of one row: exists, is a regular file, can be read, fits the limit, has a valid name.
///
/// Each check says why the file fails with its own kind and message, in the order a person
/// would look (missing, a dangling link, not a file, unreadable: see `open_regular_file`; then
/// whether it reads as its size, and its size), and stops at the first that makes the rest
/// meaningless.
fn check_file(row: &Row, base: &Path) -> (Option<FileFacts>, Vec<Problem>) {
    let mut problems = Vec::new();
    if row.file.trim().is_empty() || row.file.contains('\0') {
        return (None, problems); // already reported by the reader
    }
    let path = base.join(&row.file);
    let line = Some(row.line);
    let mut error =
        |kind, message| problems.push(Problem::error(line, Some("file"), kind, message));
    let file = &manifest::shown(&row.file);
    let (meta, mut handle) = match open_regular_file(&path, file) {
        Ok(opened) => opened,
        Err((kind, message)) => {
            error(kind, message);
            return (None, problems);
        }
    };
    let size = meta.len();
    if !reads_as_its_size(&mut handle, size) {
        error(
            ProblemKind::NotRegularFile,
            format!(
                "{file} does not read as the {size} bytes its size says (a file of /proc or /sys, or one being written); copy it to a regular file and give that"
            ),
        );
        return (None, problems);
    }
    if size > MAX_FILE_SIZE {
        error(
            ProblemKind::FileTooLarge,
            format!(
                "{file} is {} ({size} bytes); OnePageCRM accepts at most {} ({MAX_FILE_SIZE} bytes) per file",
                human_bytes(size),
                human_bytes(MAX_FILE_SIZE)
            ),
        );
    } else if size == 0 {
        problems.push(Problem::warning(
            row.line,
            "file",
            ProblemKind::EmptyFile,
            format!("{file} is empty (0 bytes); it will be uploaded as an empty attachment"),
        ));
    }
    (
        Some(FileFacts {
            size,
            mtime_ns: mtime_ns(&meta),
            identity: identity(&meta),
        }),
        problems,
    )
}

/// The regular file at `path` (`file` is how messages show it), opened, with its metadata; or
/// the first reason it cannot be read as one, as a problem's kind and message: it is missing
/// (see `missing`), its metadata cannot be read, it is a directory, a device, pipe or socket,
/// or it cannot be opened.
fn open_regular_file(
    path: &Path,
    file: &str,
) -> Result<(fs::Metadata, File), (ProblemKind, String)> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(path, file)),
        Err(e) => {
            return Err((
                ProblemKind::FileUnreadable,
                format!("{file} cannot be read: {}", io_reason(&e)),
            ));
        }
    };
    if meta.is_dir() {
        return Err((
            ProblemKind::NotRegularFile,
            format!("{file} is a directory, not a file"),
        ));
    }
    if !meta.is_file() {
        return Err((
            ProblemKind::NotRegularFile,
            format!("{file} is not a regular file (a device, pipe or socket)"),
        ));
    }
    match File::open(path) {
        Ok(handle) => Ok((meta, handle)),
        Err(e) => Err((
            ProblemKind::FileUnreadable,
            format!("{file} cannot be opened for reading: {}", io_reason(&e)),
        )),
    }
}

/// Why nothing is found at `path`: a symbolic link whose target does not exist, or no file at
/// all (the message names the path looked at).
fn missing(path: &Path, file: &str) -> (ProblemKind, String) {
    if fs::symlink_metadata(path).is_ok() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        (
            ProblemKind::DanglingLink,
            format!(
                "{file} is a symbolic link to {}, which does not exist",
                manifest::shown(&target)
            ),
        )
    } else {
        (
            ProblemKind::FileMissing,
            format!(
                "{file} does not exist (looked for {})",
                manifest::cut(&path.display().to_string())
            ),
        )
    }
}

/// Whether `file` holds exactly the `size` bytes its metadata says: its last byte is there and
/// nothing follows it. Files of /proc say 0 and read more, files of /sys say 4096 and read less;
/// uploaded as their size says, they would arrive cut or padded. Two short reads, not the file.
pub fn reads_as_its_size(file: &mut File, size: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut byte = [0u8; 1];
    let mut read_at = |at: u64| -> io::Result<usize> {
        file.seek(SeekFrom::Start(at))?;
        loop {
            match file.read(&mut byte) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    };
    let last_is_there = size == 0 || matches!(read_at(size - 1), Ok(1));
    last_is_there && matches!(read_at(size), Ok(0))
}

/// A file's modification time in nanoseconds since the epoch; 0 when it cannot be read.
pub fn mtime_ns(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(unix)]
fn identity(meta: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_meta: &fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// A file as the duplicate rule tells files apart: by identity on disk (two paths to one file
/// are one file), else by the path as written; a link by its URL (as a URL: `HTTPS://X.example`
/// is `https://x.example/`).
#[derive(Hash, PartialEq, Eq)]
enum FileKey<'a> {
    Inode(u64, u64),
    Path(&'a str),
    Link(std::borrow::Cow<'a, str>),
}

/// What makes two rows one attachment: their file (or link), and the record they attach to (a
/// row that creates a note attaches to its group's note); `None` for a row that cannot be one.
fn attachment_of<'a>(
    row: &'a Row,
    facts: &Option<FileFacts>,
) -> Option<(FileKey<'a>, ReferenceType, &'a str)> {
    let reference_type = row.reference_type?;
    let record = match &row.note {
        Some(note) => note.group.as_str(),
        None => row.reference_id.as_str(),
    };
    if record.is_empty() {
        return None;
    }
    if let Some(link) = row.link() {
        let url = match url::Url::parse(&link.url) {
            Ok(url) => url.as_str().to_string().into(),
            Err(_) => link.url.as_str().into(),
        };
        return Some((FileKey::Link(url), reference_type, record));
    }
    let file = match facts.as_ref()?.identity {
        Some((dev, ino)) => FileKey::Inode(dev, ino),
        None => FileKey::Path(&row.file),
    };
    Some((file, reference_type, record))
}

/// `row` attaches what line `first` attaches already.
fn duplicate(row: &Row, reference_type: ReferenceType, first: u64) -> Problem {
    let (column, what) = match row.link() {
        Some(link) => ("link_url", &link.url),
        None => ("file", &row.file),
    };
    Problem::error(
        Some(row.line),
        Some(column),
        ProblemKind::DuplicateAttachment,
        format!(
            "{} is already attached to {reference_type} {} on line {first}; remove one of the two rows",
            manifest::shown(what),
            match &row.note {
                Some(_) => "the note this row creates".into(),
                None => manifest::cut(&row.reference_id),
            },
        ),
    )
}

/// The same file attached to the same record twice is an error on every line after the first.
fn find_duplicates(rows: &[Row], files: &[Option<FileFacts>], problems: &mut Vec<Problem>) {
    let mut first: HashMap<(FileKey<'_>, ReferenceType, &str), u64> =
        HashMap::with_capacity(rows.len());
    for (row, facts) in rows.iter().zip(files) {
        let Some(attachment) = attachment_of(row, facts) else {
            continue;
        };
        let reference_type = attachment.1;
        match first.entry(attachment) {
            std::collections::hash_map::Entry::Occupied(seen) => {
                problems.push(duplicate(row, reference_type, *seen.get()))
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(row.line);
            }
        }
    }
}

/// The attachments of a manifest read as a stream, for its duplicates: kept in a private
/// temporary database on disk (SQLite deletes it when it closes), so that a million rows' keys
/// take no memory.
pub struct SeenOnDisk {
    conn: rusqlite::Connection,
}

impl SeenOnDisk {
    pub fn new() -> rusqlite::Result<Self> {
        // An empty name: a private, temporary database on disk.
        let conn = rusqlite::Connection::open("")?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             CREATE TABLE seen (attachment BLOB PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID;",
        )?;
        Ok(Self { conn })
    }

    /// [`find_duplicates`] against every row seen before, in this chunk or an earlier one.
    fn find_duplicates(
        &self,
        rows: &[Row],
        files: &[Option<FileFacts>],
        problems: &mut Vec<Problem>,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO seen (attachment, line) VALUES (?1, ?2)
             ON CONFLICT (attachment) DO NOTHING",
        )?;
        let mut first = tx.prepare_cached("SELECT line FROM seen WHERE attachment = ?1")?;
        let mut key = Vec::new();
        for (row, facts) in rows.iter().zip(files) {
            let Some((file, reference_type, record)) = attachment_of(row, facts) else {
                continue;
            };
            // Each part with its length first: no two attachments make one key.
            key.clear();
            let mut part = |bytes: &[u8]| {
                key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                key.extend_from_slice(bytes);
            };
            match file {
                FileKey::Inode(dev, ino) => {
                    part(&dev.to_le_bytes());
                    part(&ino.to_le_bytes());
                }
                FileKey::Path(path) => part(path.as_bytes()),
                // A path holds no NUL: no file's key starts so.
                FileKey::Link(url) => {
                    part(b"\0link");
                    part(url.as_bytes());
                }
            }
            part(reference_type.as_str().as_bytes());
            part(record.as_bytes());
            if insert.execute(rusqlite::params![key, row.line as i64])? == 0 {
                let line: i64 = first.query_row([&key], |r| r.get(0))?;
                problems.push(duplicate(row, reference_type, line as u64));
            }
        }
        drop((insert, first));
        tx.commit()
    }
}

/// A manifest checked as a stream, chunk by chunk (see [`scan`]): what the whole-manifest
/// check finds, without its rows.
#[derive(Debug)]
pub struct Scan {
    pub problems: Vec<Problem>,
    pub summary: Summary,
    /// False when the manifest could not be read as a whole; `problems` says why.
    pub readable: bool,
    /// The emails the rows name their contacts by (as `manifest::email_key` makes them).
    pub emails: std::collections::BTreeSet<String>,
    /// What was read up to the end of each chunk (`Reader::digest`): [`rescan`] reads the same
    /// manifest, or stops.
    pub digests: Vec<[u8; 32]>,
}

impl Scan {
    /// True when nothing stands in the way of uploading every row.
    pub fn is_valid(&self) -> bool {
        self.summary.errors == 0
    }
}

/// Reads and checks `path` chunk by chunk, as [`check`] does the whole, and hands each checked
/// chunk to `each`, in manifest order; no chunk is kept. Stops at the first error of `each`.
pub fn scan<E>(
    path: &Path,
    options: manifest::ReadOptions,
    mut each: impl FnMut(Checked) -> Result<(), E>,
) -> Result<Scan, E> {
    let mut scan = Scan {
        problems: Vec::new(),
        summary: Summary::default(),
        readable: true,
        emails: Default::default(),
        digests: Vec::new(),
    };
    let unreadable = |scan: &mut Scan, problem: Problem| {
        scan.readable = false;
        scan.summary.errors += 1;
        scan.problems.push(problem);
    };
    let (mut reader, seen) = match (manifest::stream(path, options), SeenOnDisk::new()) {
        (Ok(reader), Ok(seen)) => (reader, seen),
        (Err(problem), _) => {
            unreadable(&mut scan, problem);
            return Ok(scan);
        }
        (_, Err(e)) => {
            let message = format!("cannot check the manifest for duplicate rows: {e}");
            unreadable(
                &mut scan,
                Problem::error(None, None, ProblemKind::ManifestUnreadable, message),
            );
            return Ok(scan);
        }
    };
    loop {
        let chunk = match reader.next_chunk(crate::defaults::batch_rows()) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(scan),
            Err(problem) => {
                unreadable(&mut scan, problem);
                return Ok(scan);
            }
        };
        scan.digests.push(reader.digest());
        let checked = match check_chunk(chunk, &seen) {
            Ok(checked) => checked,
            Err(e) => {
                let message = format!("cannot check the manifest for duplicate rows: {e}");
                unreadable(
                    &mut scan,
                    Problem::error(None, None, ProblemKind::ManifestUnreadable, message),
                );
                return Ok(scan);
            }
        };
        scan.summary.add(&checked.summary);
        scan.problems
            .extend(checked.manifest.problems.iter().cloned());
        scan.emails
            .extend(crate::lookup::emails(&checked.manifest.rows));
        each(checked)?;
    }
}

/// Reads `path` chunk by chunk again after [`scan`] checked it, and hands each chunk to `each`
/// with its files' facts as they are now (one `stat` each, in parallel) and the problems `scan`
/// found on its lines (in line order), not checked again. Says whether the manifest could be
/// read whole again, and was the one `scan` read: a chunk whose bytes differ from the check's
/// (the manifest was edited since) is not handed on, since the check's problems are not its.
pub fn rescan<E>(
    path: &Path,
    options: manifest::ReadOptions,
    scan: &Scan,
    mut each: impl FnMut(Checked) -> Result<(), E>,
) -> Result<bool, E> {
    let Ok(mut reader) = manifest::stream(path, options) else {
        return Ok(false);
    };
    let mut problems = scan.problems.iter().filter(|p| p.line.is_some()).peekable();
    let mut digests = scan.digests.iter();
    loop {
        let mut chunk = match reader.next_chunk(crate::defaults::batch_rows()) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(digests.next().is_none()),
            Err(_) => return Ok(false),
        };
        if digests.next() != Some(&reader.digest()) {
            return Ok(false);
        }
        let last = chunk
            .rows
            .iter()
            .map(|r| r.line)
            .chain(chunk.unparsed.iter().map(|u| u.line))
            .max()
            .unwrap_or(0);
        chunk.problems.clear();
        while let Some(p) = problems.next_if(|p| p.line.is_some_and(|l| l <= last)) {
            chunk.problems.push(p.clone());
        }
        let base = chunk.base.clone();
        let files: Vec<Option<FileFacts>> = chunk
            .rows
            .par_iter()
            .map(|row| {
                // A link (or a row without a file) has no file to look at.
                if row.file.trim().is_empty() {
                    return None;
                }
                let meta = fs::metadata(base.join(&row.file)).ok()?;
                meta.is_file().then(|| FileFacts {
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                    identity: identity(&meta),
                })
            })
            .collect();
        let (valid, summary) = settle(&mut chunk, &files);
        each(Checked {
            manifest: chunk,
            files,
            valid,
            summary,
            resolved: HashMap::new(),
        })?;
    }
}

/// Checks one chunk of a manifest read as a stream, as [`check_manifest`] does a whole one,
/// its duplicates found against every row before it (`seen`).
fn check_chunk(mut manifest: Manifest, seen: &SeenOnDisk) -> rusqlite::Result<Checked> {
    let files = check_files(&mut manifest);
    seen.find_duplicates(&manifest.rows, &files, &mut manifest.problems)?;
    let (valid, summary) = settle(&mut manifest, &files);
    Ok(Checked {
        manifest,
        files,
        valid,
        summary,
        resolved: HashMap::new(),
    })
}

/// Bytes in binary units with one decimal: `512 B`, `3.4 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(MAX_FILE_SIZE), "10.0 MiB");
    }

    #[test]
    fn links_are_never_looked_for_on_disk_and_one_link_twice_on_a_record_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let (id, other) = ("5a1b2c3d4e5f60718293a4b5", "5a1b2c3d4e5f60718293a4b6");
        fs::write(dir.path().join("a.pdf"), b"abc").unwrap();
        let url = "https://www.dropbox.com/s/x/a.pdf";
        let text = format!(
            "file,contact_id,reference_id,link_url,link_type\n\
             a.pdf,{id},{id},,\n\
             ,{id},{id},{url},dropbox\n\
             ,{id},{other},{url},dropbox\n\
             ,{id},{id},HTTPS://WWW.DROPBOX.COM/s/x/a.pdf,dropbox\n"
        );
        fs::write(dir.path().join("m.csv"), text).unwrap();
        let checked = check(&dir.path().join("m.csv"), Default::default());
        let got: Vec<_> = checked
            .manifest
            .problems
            .iter()
            .map(|p| (p.line, p.column, p.kind))
            .collect();
        // The same link on another record is no duplicate; in another letter case of its
        // scheme and host it is the same link.
        assert_eq!(
            got,
            [(Some(5), Some("link_url"), ProblemKind::DuplicateAttachment)]
        );
        assert!(checked.manifest.problems[0].message.contains("on line 3"));
        // Links are no files: nothing looked at, nothing to upload.
        assert!(checked.files[1].is_none() && checked.files[2].is_none());
        let s = &checked.summary;
        assert_eq!((s.valid, s.files_to_upload, s.links_to_attach), (3, 1, 2));
        assert_eq!(s.bytes_to_upload, 3);
        // A stream checks the same, its duplicates against the rows of earlier chunks.
        let seen = SeenOnDisk::new().unwrap();
        let mut problems = Vec::new();
        for row in &checked.manifest.rows {
            seen.find_duplicates(std::slice::from_ref(row), &[None], &mut problems)
                .unwrap();
        }
        let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(5)]);
    }

    #[test]
    fn two_paths_to_one_file_are_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let id = "5a1b2c3d4e5f60718293a4b5";
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("a.pdf"), b"x").unwrap();
        let text =
            format!("file,contact_id,reference_id\na.pdf,{id},{id}\nsub/../a.pdf,{id},{id}\n");
        fs::write(dir.path().join("m.csv"), text).unwrap();
        let checked = check(&dir.path().join("m.csv"), Default::default());
        assert_eq!(checked.summary.invalid, 1);
        let p = &checked.manifest.problems[0];
        assert_eq!(
            (p.line, p.kind),
            (Some(3), ProblemKind::DuplicateAttachment)
        );
        assert!(p.message.contains("on line 2"), "{}", p.message);
        assert_eq!(checked.valid, vec![true, false]);
    }
}
