//! `opcrm-import report`: the rows of a migration as CSV. The failed-rows report is itself a
//! manifest (plus `error_kind` and `error`, which `check` and `run` ignore), so a person can fix
//! it and run it.
//!
//! A report is opened in spreadsheets, so a cell that a spreadsheet would run as a formula gets a
//! leading `'` (see [`manifest::formula_escape`]); the manifest reader removes it again from a file
//! with both error columns. `-o` never writes over the state file or the manifest, never replaces
//! a file that is not a report without `--force`, and writes through a temporary file renamed
//! into place, so a failure never leaves half a report.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::ExitStatus;
use crate::checkpoint::{NoteState, RowState, StoredRow};
use crate::cli::{ReportArgs, ReportOnly};
use crate::error::{CommandError, CommandResult};
use crate::manifest;
use crate::status::open;

const KEY_COLUMNS: [&str; 5] = [
    "file",
    "contact_id",
    "reference_type",
    "reference_id",
    "name",
];

/// The header of each kind of report, as written; `by_email` when some row names its contact
/// by email (then `contact_email` follows `contact_id`, so that the failed report stays a
/// manifest; a migration by ids alone gets the header it always had), with the three note
/// columns after `name` when the migration creates notes (`notes`), `pin` after them when some row
/// asks for a pin (`pins`), and the two link columns after those when it attaches links (`links`),
/// for the same reason.
fn header(
    only: ReportOnly,
    by_email: bool,
    notes: bool,
    pins: bool,
    links: bool,
) -> Vec<&'static str> {
    let mut header = KEY_COLUMNS.to_vec();
    if by_email {
        header.insert(2, "contact_email");
    }
    if notes {
        header.extend(manifest::NOTE_COLUMNS);
    }
    if pins {
        header.push("pin");
    }
    if links {
        header.extend(manifest::LINK_COLUMNS);
    }
    match only {
        ReportOnly::Failed => header.extend(["error_kind", "error"]),
        ReportOnly::Done => header.extend(["attachment_id", "s3_key"]),
        ReportOnly::All => {
            header.extend(["state", "attachment_id", "s3_key", "error_kind", "error"])
        }
    }
    header
}

/// `path` as the report's `file` column: relative to the report's folder when the file lies
/// under it, else absolute, so that the report works as a manifest where it is written.
fn file_column(path: &Path, report_dir: &Path) -> Vec<u8> {
    let shown = path.strip_prefix(report_dir).unwrap_or(path);
    shown.as_os_str().as_encoded_bytes().to_vec()
}

/// A row's file as an absolute path (`None`: the row names no file). Paths recorded relative
/// (by versions that took a bare `m.csv` to have no folder) resolve against the manifest's.
fn row_path(row: &StoredRow, manifest_dir: Option<&Path>) -> Option<PathBuf> {
    let bytes = row.field_bytes(&row.path.to_string_lossy());
    if bytes.is_empty() {
        return None;
    }
    let path = path_from_bytes(bytes);
    match (path.is_relative(), manifest_dir) {
        (true, Some(dir)) => Some(dir.join(path)),
        _ => Some(path),
    }
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// The folder a report is written to (the current one for stdout or a bare file name).
fn report_dir(output: Option<&Path>) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    match output.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => std::path::absolute(dir).unwrap_or(cwd),
        _ => cwd,
    }
}

pub fn run(args: &ReportArgs) -> CommandResult {
    let (path, file) = match open(args.manifest.as_ref(), args.state.as_ref()) {
        Ok(opened) => opened,
        Err((m, status)) => return Err(CommandError::new(status, m)),
    };
    let read = || -> rusqlite::Result<_> {
        Ok((file.load_rows()?, file.manifest_of()?, file.load_notes()?))
    };
    let (rows, recorded_manifest, groups) = match read() {
        Ok(read) => read,
        Err(e) => {
            return Err(CommandError::stopped(format!(
                "cannot read state file {}: {e}",
                path.display()
            )));
        }
    };
    drop(file);
    let notes = Notes(
        groups
            .into_iter()
            .map(|g| (g.group, (g.state, g.note_id)))
            .collect(),
    );
    if args.only == ReportOnly::Failed {
        tell_held_back(&rows, &notes, recorded_manifest.as_deref());
    }
    let manifest_dir = recorded_manifest
        .as_deref()
        .and_then(|m| Path::new(m).parent())
        .map(Path::to_path_buf);
    let dir = report_dir(args.output.as_deref());

    let only = args.only;
    let write = |sink: &mut dyn Write| {
        let place = Place {
            manifest_dir: manifest_dir.as_deref(),
            dir: &dir,
        };
        write_rows(sink, &rows, &notes, only, place)
    };

    let Some(out) = &args.output else {
        let mut stdout = io::stdout().lock();
        write(&mut stdout)?;
        return Ok(ExitStatus::Success);
    };
    let mut manifests: Vec<PathBuf> = recorded_manifest.into_iter().map(PathBuf::from).collect();
    manifests.extend(args.manifest.clone());
    let target = match output_target(out, &path, &manifests, args.force) {
        Ok(target) => target,
        Err(message) => return Err(CommandError::usage(message)),
    };
    let count = match write_atomically(&target, write) {
        Ok(count) => count,
        Err(e) => {
            return Err(CommandError::stopped(format!(
                "cannot write {}: {}; nothing was written",
                out.display(),
                manifest::io_reason(&e)
            )));
        }
    };
    crate::say!(
        "wrote {count} {} to {}",
        if count == 1 { "row" } else { "rows" },
        out.display()
    );
    Ok(ExitStatus::Success)
}

/// The note groups of a state file: each one's state and, once made, its note.
struct Notes(std::collections::HashMap<String, (NoteState, Option<String>)>);

impl Notes {
    /// The note a row's group already has, if any (a fix file attaches to it: a new state file
    /// would otherwise create a second note for the group).
    fn made(&self, row: &StoredRow) -> Option<&str> {
        let group = row.note.group.as_deref()?;
        match self.0.get(group) {
            Some((NoteState::Created, Some(id))) => Some(id),
            _ => None,
        }
    }

    /// Whether a failed row is settled only by a rerun of its own state file: its attach may
    /// have taken effect, or its group's note may have been made (an answer lost). A note the
    /// API refused (the row failed for good) was not made: its rows are for the fix file.
    fn held_back(&self, row: &StoredRow) -> bool {
        let note_in_doubt = row.reference_id.is_empty()
            && row.retryable != Some(false)
            && row
                .note
                .group
                .as_deref()
                .and_then(|g| self.0.get(g))
                .is_some_and(|(state, _)| *state == NoteState::Intent);
        matches!(row.state, RowState::Failed | RowState::Rejected)
            && (row.may_be_attached() || note_in_doubt)
    }
}

/// Where the files of a report's rows are, and the folder they are written relative to.
#[derive(Clone, Copy)]
struct Place<'a> {
    manifest_dir: Option<&'a Path>,
    dir: &'a Path,
}

/// Says which failed rows the fix file leaves out, and what settles them instead.
fn tell_held_back(rows: &[StoredRow], notes: &Notes, manifest: Option<&str>) {
    let held: Vec<&StoredRow> = rows.iter().filter(|r| notes.held_back(r)).collect();
    if held.is_empty() {
        return;
    }
    let lines: Vec<String> = held.iter().take(20).map(|r| r.line.to_string()).collect();
    let more = match held.len() > 20 {
        true => format!(" and {} more", held.len() - 20),
        false => String::new(),
    };
    let rerun = manifest.map_or("the run's own command".to_string(), |m| {
        format!(
            "`{} run {m}` (with the run's flags)",
            crate::run::summary::program()
        )
    });
    crate::say!(
        "note: {} failed {} left out of this report (lines {}{more}): step 3 may have attached them already, or their note may have been made with its answer lost, so a fix file (a state file of its own) would attach or create them again. Rerun {rerun} to settle them: it reads their records again and never makes anything twice",
        held.len(),
        if held.len() == 1 {
            "row is"
        } else {
            "rows are"
        },
        lines.join(", "),
    );
}

/// A row's `pin` (as the manifest asks now: whether it is made is `status`'s and the run's
/// summary's) and link columns, those of them the report has.
fn pin_and_link(row: &StoredRow, pins: bool, links: bool) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    if pins {
        fields.push(match row.pin {
            true => b"true".to_vec(),
            false => Vec::new(),
        });
    }
    if links {
        let link = row.link.clone().unwrap_or_default();
        fields.extend([row.field_bytes(&link.url), row.field_bytes(&link.link_type)]);
    }
    fields
}

/// Writes the rows `only` asks for as CSV to `sink`, files relative to `dir` (the report's
/// folder) where they lie under it; returns how many rows it wrote.
fn write_rows(
    sink: &mut dyn Write,
    rows: &[StoredRow],
    groups: &Notes,
    only: ReportOnly,
    Place { manifest_dir, dir }: Place<'_>,
) -> io::Result<usize> {
    let keep = |r: &StoredRow| match only {
        // A row whose attach (or note) may have taken effect is settled by a rerun of its own
        // manifest, never by a fix file (a new state file would do it again).
        ReportOnly::Failed => {
            matches!(r.state, RowState::Failed | RowState::Rejected) && !groups.held_back(r)
        }
        ReportOnly::Done => r.state == RowState::Done,
        ReportOnly::All => true,
    };
    let notes = rows.iter().any(|r| !r.note.is_empty());
    let pins = rows.iter().any(|r| r.pin);
    let mut csv = csv::Writer::from_writer(sink);
    let by_email = rows.iter().any(|r| !r.contact_email.is_empty());
    let links = rows.iter().any(|r| r.link.is_some());
    csv.write_record(header(only, by_email, notes, pins, links))?;
    let mut count = 0;
    for row in rows.iter().filter(|r| keep(r)) {
        let file = row_path(row, manifest_dir)
            .map(|p| file_column(&p, dir))
            .unwrap_or_default();
        // A row by email: the failed report gives it back as written (the email, no id: a
        // manifest row gives one of the two); the others show the contact it resolved to too.
        let contact_id = match only {
            ReportOnly::Failed if !row.contact_email.is_empty() => Vec::new(),
            _ => row.field_bytes(&row.contact_id),
        };
        // A row that creates a note gets its note's id as `reference_id` once the note is made;
        // the failed report gives the row back as written (no id), so that it stays valid.
        // A row whose group's note is made attaches to that note: the fix file names it (and
        // leaves the note columns empty), so that the group keeps one note.
        let made = match only {
            ReportOnly::Failed if !row.is_raw() => groups.made(row),
            _ => None,
        };
        let reference_id = match (only, &row.note.text, made) {
            (_, _, Some(id)) => id.as_bytes().to_vec(),
            (ReportOnly::Failed, Some(_), None) if !row.is_raw() => Vec::new(),
            _ => row.field_bytes(&row.reference_id),
        };
        let mut record = vec![
            file,
            contact_id,
            row.field_bytes(&row.reference_type_text),
            reference_id,
            row.field_bytes(&row.name),
        ];
        if by_email {
            record.insert(2, row.field_bytes(&row.contact_email));
        }
        let text = |v: &Option<String>| v.clone().unwrap_or_default().into_bytes();
        if notes {
            let note = |v: &Option<String>| match made {
                Some(_) => Vec::new(),
                None => row.field_bytes(v.as_deref().unwrap_or_default()),
            };
            record.extend([
                note(&row.note.text),
                note(&row.note.date),
                note(&row.note.key),
            ]);
        }
        record.extend(pin_and_link(row, pins, links));
        let kind = |r: &StoredRow| {
            r.error_kind
                .map_or_else(Vec::new, |k| k.as_str().as_bytes().to_vec())
        };
        match only {
            ReportOnly::Failed => record.extend([kind(row), text(&row.last_error)]),
            ReportOnly::Done => record.extend([text(&row.attachment_id), text(&row.s3_key)]),
            ReportOnly::All => record.extend([
                row.state.as_str().as_bytes().to_vec(),
                text(&row.attachment_id),
                text(&row.s3_key),
                kind(row),
                text(&row.last_error),
            ]),
        }
        csv.write_record(record.iter().map(|f| manifest::formula_escape(f)))?;
        count += 1;
    }
    csv.flush()?;
    Ok(count)
}

/// A file's identity on disk (device and inode), following links.
#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<PathBuf> {
    fs::canonicalize(path).ok()
}

/// The file `-o` may be written to, or why not: never the state file (or its companions) or the
/// manifest, even through a link; never something that is not a regular file; and an existing
/// file only when it is a report (its first line is one of the report headers) or with `--force`.
/// A link is followed: the file it names is replaced, not the link.
fn output_target(
    out: &Path,
    state: &Path,
    manifests: &[PathBuf],
    force: bool,
) -> Result<PathBuf, String> {
    let shown = out.display();
    let Ok(link_meta) = fs::symlink_metadata(out) else {
        return Ok(out.to_path_buf());
    };
    let target = if link_meta.file_type().is_symlink() {
        fs::canonicalize(out).map_err(|_| {
            format!(
                "-o {shown} is a symbolic link to nothing; give the path of the report to write"
            )
        })?
    } else {
        out.to_path_buf()
    };
    let meta = fs::metadata(&target).map_err(|e| {
        format!(
            "cannot write {shown}: {}; give another -o",
            manifest::io_reason(&e)
        )
    })?;
    if meta.is_dir() {
        return Err(format!(
            "-o {shown} is a folder; give the path of the report file to write, e.g. {}",
            out.join("report.csv").display()
        ));
    }
    if !meta.is_file() {
        return Err(format!(
            "-o {shown} is not a regular file (a device, pipe or socket); give a file path, or leave out -o to print the report"
        ));
    }
    let id = identity(&target);
    let mut companions = vec![state.to_path_buf()];
    for suffix in ["-wal", "-shm", ".lock"] {
        let mut name = state.as_os_str().to_os_string();
        name.push(suffix);
        companions.push(PathBuf::from(name));
    }
    if id.is_some() && companions.iter().any(|c| identity(c) == id) {
        return Err(format!(
            "-o {shown} is the state file {} (or one of its companion files); writing the report there would destroy the record of the migration. Give another -o",
            state.display()
        ));
    }
    if id.is_some() && manifests.iter().any(|m| identity(m) == id) {
        return Err(format!(
            "-o {shown} is the manifest itself; writing the report there would replace it. Give another -o, e.g. fix.csv"
        ));
    }
    if !force && !is_report(&target) {
        return Err(format!(
            "-o {shown} exists and is not a report written by opcrm-import (its first line is not a report header); pass --force to replace it, or give another -o"
        ));
    }
    Ok(target)
}

/// Whether a file's first line is exactly one of the headers a report starts with.
fn is_report(path: &Path) -> bool {
    let mut head = Vec::new();
    let Ok(file) = File::open(path) else {
        return false;
    };
    if file.take(4096).read_to_end(&mut head).is_err() {
        return false;
    }
    let Some(end) = head.iter().position(|b| *b == b'\n') else {
        return false;
    };
    let first = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    [ReportOnly::Failed, ReportOnly::Done, ReportOnly::All]
        .iter()
        .any(|only| {
            (0..16u8).any(|bits| {
                let (by_email, notes) = (bits & 1 != 0, bits & 2 != 0);
                let (pins, links) = (bits & 4 != 0, bits & 8 != 0);
                first
                    == header(*only, by_email, notes, pins, links)
                        .join(",")
                        .as_bytes()
            })
        })
}

/// Writes a new file beside `target` with `write` and renames it into place: `target` is either
/// left as it was or replaced whole.
fn write_atomically<T>(
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<T>,
) -> io::Result<T> {
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        // A replaced report keeps its permissions (someone may have made it private).
        if let Ok(old) = fs::metadata(target) {
            file.set_permissions(old.permissions())?;
        }
        let mut buffered = io::BufWriter::new(file);
        let value = write(&mut buffered)?;
        let file = buffered
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&temp, target)?;
        Ok(value)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_recognised_by_its_header_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        for only in [ReportOnly::Failed, ReportOnly::Done, ReportOnly::All] {
            for by_email in [false, true] {
                for notes in [false, true] {
                    for (pins, links) in
                        [(false, false), (false, true), (true, false), (true, true)]
                    {
                        let header = header(only, by_email, notes, pins, links).join(",");
                        fs::write(&p, format!("{header}\r\nx\n")).unwrap();
                        assert!(is_report(&p));
                    }
                }
            }
        }
        fs::write(&p, "file,contact_id,reference_type,reference_id,name\n").unwrap();
        assert!(!is_report(&p), "a manifest is not a report");
        fs::write(
            &p,
            "file,contact_id,reference_type,reference_id,name,error_kind,error",
        )
        .unwrap();
        assert!(!is_report(&p), "no line end: not a whole header line");
    }

    #[test]
    fn an_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        let put = |text: &'static [u8]| move |w: &mut dyn Write| w.write_all(text);
        write_atomically(&p, put(b"a\n")).unwrap();
        write_atomically(&p, put(b"b\n")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"b\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            write_atomically(&p, put(b"b\n")).unwrap();
            let mode = fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "a replaced report keeps its mode");
        }
        // A writer that fails half-way leaves the old file whole, and no temporary file.
        let failing = |w: &mut dyn Write| {
            w.write_all(b"half a rep")?;
            Err::<(), _>(io::Error::other("disk full"))
        };
        assert!(write_atomically(&p, failing).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"b\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no-such-folder").join("r.csv");
        assert!(write_atomically(&missing, put(b"c\n")).is_err());
    }
}
