//! The manifest file as CSV records: refused early when it is no text (missing, a directory,
//! UTF-16, binary), read record by record with the line each starts on, the header then the
//! rows handed to `header` and `row`.
//!
//! Also the formula escape of reports ([`formula_escape`]), which the reader takes off again
//! ([`formula_unescape`]) when it reads a failed-rows report back as a manifest.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::header::{columns_named, parse_header};
use super::notes::NoteKeys;
use super::row::{parse_row, unparsed};
use super::{COLUMNS, IGNORED_COLUMNS, Manifest, Problem, ProblemKind, ReadOptions, io_reason};

fn whole(kind: ProblemKind, message: String) -> Problem {
    Problem::error(None, None, kind, message)
}

fn header_problem(kind: ProblemKind, message: String) -> Problem {
    Problem::error(Some(1), None, kind, message)
}

/// A manifest being read, chunk by chunk: its header read and checked, its records as they come.
/// The rules across rows (`note_key` groups) span chunks; duplicates across rows are
/// `preflight`'s.
pub struct Reader {
    records: Records<BufReader<File>>,
    record: csv::ByteRecord,
    unescaped: csv::ByteRecord,
    columns: Vec<Option<&'static str>>,
    /// A failed-rows report (it has both error columns): formulas are unescaped.
    report: bool,
    delimiter: u8,
    shown: String,
    path: PathBuf,
    base: PathBuf,
    note_keys: NoteKeys,
    /// A row or a problem was seen (a header without either is an error of its own).
    any: bool,
    done: bool,
}

/// Opens `path` as a manifest: refused when it is no text (missing, a directory, UTF-16,
/// binary) or its header is wrong.
pub(super) fn open(path: &Path, options: ReadOptions, base: PathBuf) -> Result<Reader, Problem> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot read manifest {shown}: {}", io_reason(&e)),
        )
    })?;
    if meta.is_dir() {
        return Err(whole(
            ProblemKind::ManifestUnreadable,
            format!("{shown} is a directory; give the path of the CSV manifest file"),
        ));
    }
    let file = File::open(path).map_err(|e| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot open manifest {shown}: {}", io_reason(&e)),
        )
    })?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let head = input.fill_buf().map_err(|e| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot read manifest {shown}: {}", io_reason(&e)),
        )
    })?;
    if is_utf16(head) {
        return Err(whole(
            ProblemKind::NotText,
            format!(
                "{shown} is UTF-16 text, not UTF-8; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 in.csv > out.csv) or save it from the spreadsheet as \"CSV UTF-8\""
            ),
        ));
    }
    if head.contains(&0) {
        return Err(whole(
            ProblemKind::NotText,
            format!("{shown} is a binary file, not a CSV manifest (it holds NUL bytes)"),
        ));
    }
    Reader::start(path, options, input, base)
}

impl Reader {
    /// Reads the header: the first record that is not blank.
    fn start(
        path: &Path,
        options: ReadOptions,
        input: BufReader<File>,
        base: PathBuf,
    ) -> Result<Self, Problem> {
        let shown = path.display().to_string();
        let mut records = Records::new(input, options.delimiter);
        let mut record = csv::ByteRecord::new();
        let header_line = loop {
            let Some(line) = records
                .next(&mut record)
                .map_err(|e| io_problem(&shown, e))?
            else {
                return Err(whole(
                    ProblemKind::ManifestEmpty,
                    format!(
                        "manifest {shown} is empty; it needs a header row ({})",
                        COLUMNS.join(", ")
                    ),
                ));
            };
            if !is_blank(&record) {
                break line;
            }
        };
        let columns = parse_header(&record, header_line, options.delimiter)?;
        // A failed-rows report (it has both error columns) neutralizes spreadsheet formulas with
        // a leading `'`; reading it back undoes exactly that (see `formula_unescape`).
        let report = IGNORED_COLUMNS.iter().all(|c| columns_named(&record, c));
        Ok(Self {
            records,
            record,
            unescaped: csv::ByteRecord::new(),
            columns,
            report,
            delimiter: options.delimiter,
            shown,
            path: path.to_path_buf(),
            base,
            note_keys: NoteKeys::default(),
            any: false,
            done: false,
        })
    }

    /// The next `rows` rows (and the records between them that are not rows), with their
    /// problems, as a [`Manifest`] of their own; `None` at the end. An error: the manifest
    /// cannot be read on (or it had a header and nothing else).
    pub fn next_chunk(&mut self, rows: usize) -> Result<Option<Manifest>, Problem> {
        if self.done {
            return Ok(None);
        }
        let mut chunk = Manifest {
            path: self.path.clone(),
            base: self.base.clone(),
            rows: Vec::new(),
            unparsed: Vec::new(),
            problems: Vec::new(),
            readable: true,
        };
        while chunk.rows.len() < rows {
            let Some(line) = self
                .records
                .next(&mut self.record)
                .map_err(|e| io_problem(&self.shown, e))?
            else {
                self.done = true;
                break;
            };
            self.take(line, &mut chunk);
        }
        self.note_keys.check(&chunk.rows, &mut chunk.problems);
        self.any |= !chunk.rows.is_empty() || !chunk.problems.is_empty();
        if self.done && !self.any {
            return Err(header_problem(
                ProblemKind::NoRows,
                format!(
                    "manifest {} has a header but no rows; add one row per file to upload",
                    self.shown
                ),
            ));
        }
        let empty = chunk.rows.is_empty() && chunk.unparsed.is_empty() && chunk.problems.is_empty();
        Ok((!empty || !self.done).then_some(chunk))
    }

    /// A digest of the manifest's bytes read so far (the header's and every chunk's): two
    /// reads that give one digest at the end of a chunk read the same bytes up to there.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        self.records.digest.clone().finalize().into()
    }

    /// The record just read, on `line`: a row, or a record that is not one (its problems said).
    fn take(&mut self, line: u64, chunk: &mut Manifest) {
        if is_blank(&self.record) {
            return;
        }
        let record = if self.report {
            self.unescaped.clear();
            for field in self.record.iter() {
                self.unescaped.push_field(formula_unescape(field));
            }
            &self.unescaped
        } else {
            &self.record
        };
        let columns = &self.columns;
        if record.len() != columns.len() {
            chunk.problems.push(Problem::error(
                Some(line),
                None,
                ProblemKind::FieldCount,
                format!(
                    "{} fields, but the header has {}; quote any field that holds the delimiter {:?}",
                    record.len(),
                    columns.len(),
                    self.delimiter as char
                ),
            ));
            chunk.unparsed.push(unparsed(record, columns, line));
            return;
        }
        match parse_row(record, columns, line, &mut chunk.problems) {
            Some(row) => chunk.rows.push(row),
            None => chunk.unparsed.push(unparsed(record, columns, line)),
        }
    }
}

fn io_problem(shown: &str, e: io::Error) -> Problem {
    whole(
        ProblemKind::ManifestUnreadable,
        format!("cannot read manifest {shown}: {}", io_reason(&e)),
    )
}

/// CSV records with the line each starts on, on csv's own parser (csv_core).
///
/// csv's `Reader` stamps a record with the position where the previous one ended, before blank
/// lines are skipped and before a CRLF's `\n` is consumed, so its line numbers drift; every message
/// here names a line, so the lines are counted from the bytes the parser consumes.
struct Records<R> {
    core: csv_core::Reader,
    input: R,
    /// The line the next unconsumed byte is on.
    line: u64,
    consumed: u64,
    /// The last byte consumed was a CR (so an LF now ends no new line).
    after_cr: bool,
    output: Vec<u8>,
    ends: Vec<usize>,
    /// Of every byte consumed (see `Reader::digest`).
    digest: sha2::Sha256,
}

impl<R: BufRead> Records<R> {
    fn new(input: R, delimiter: u8) -> Self {
        let core = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
        Self {
            core,
            input,
            line: 1,
            consumed: 0,
            after_cr: false,
            output: vec![0; 4096],
            ends: vec![0; 16],
            digest: Default::default(),
        }
    }

    /// Reads the next record into `record`; returns the line it starts on, `None` at the end.
    fn next(&mut self, record: &mut csv::ByteRecord) -> io::Result<Option<u64>> {
        let (mut nout, mut nends) = (0, 0);
        let mut start = None;
        loop {
            let input = self.input.fill_buf()?;
            let (result, nin, out, end) =
                self.core
                    .read_record(input, &mut self.output[nout..], &mut self.ends[nends..]);
            for (i, &b) in input[..nin].iter().enumerate() {
                let in_bom = self.consumed + (i as u64) < 3 && matches!(b, 0xEF | 0xBB | 0xBF);
                if start.is_none() && !matches!(b, b'\r' | b'\n') && !in_bom {
                    start = Some(self.line);
                }
                // A line ends at LF, CRLF, or a lone CR (old Mac exports): the parser takes all
                // three as record ends, so the count must too. A CR counts at once; the LF of a
                // CRLF then does not, even when the two arrive in separate reads.
                match b {
                    b'\r' => self.line += 1,
                    b'\n' if !self.after_cr => self.line += 1,
                    _ => {}
                }
                self.after_cr = b == b'\r';
            }
            sha2::Digest::update(&mut self.digest, &input[..nin]);
            self.consumed += nin as u64;
            self.input.consume(nin);
            nout += out;
            nends += end;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    let len = self.output.len() * 2;
                    self.output.resize(len, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    record.clear();
                    let mut from = 0;
                    for &to in &self.ends[..nends] {
                        record.push_field(&self.output[from..to]);
                        from = to;
                    }
                    return Ok(Some(start.unwrap_or(self.line)));
                }
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }
}

/// A record whose fields are all empty or whitespace (a blank line, or one made of delimiters).
fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP's list).
const FORMULA_STARTS: [u8; 6] = [b'=', b'+', b'-', b'@', b'\t', b'\r'];

/// Whether `value` is some `'`s (maybe none) and then a formula character.
fn quotes_then_formula(value: &[u8]) -> Option<usize> {
    let quotes = value.iter().take_while(|b| **b == b'\'').count();
    value
        .get(quotes)
        .is_some_and(|b| FORMULA_STARTS.contains(b))
        .then_some(quotes)
}

/// A report cell that a spreadsheet will not run as a formula: a value that starts with
/// `= + - @`, TAB or CR, after any number of `'`, gets one more `'` in front (OWASP's advice;
/// the extra `'`s keep the escape reversible for a value that itself starts with `'=`).
pub fn formula_escape(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match quotes_then_formula(value) {
        Some(_) => {
            let mut escaped = Vec::with_capacity(value.len() + 1);
            escaped.push(b'\'');
            escaped.extend_from_slice(value);
            escaped.into()
        }
        None => value.into(),
    }
}

/// Undoes [`formula_escape`]: one `'` is removed from a value that is one or more `'`s and then
/// a formula character. Applied only to files with both error columns (failed-rows reports).
pub fn formula_unescape(value: &[u8]) -> &[u8] {
    match quotes_then_formula(value) {
        Some(quotes) if quotes > 0 => &value[1..],
        _ => value,
    }
}

/// Text in UTF-16 (a BOM, or ASCII with a NUL in every other byte), as some spreadsheets save
/// "Unicode text".
pub(super) fn is_utf16(head: &[u8]) -> bool {
    if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        return true;
    }
    let sample = &head[..head.len().min(4096) & !1];
    if sample.len() < 4 {
        return false;
    }
    let (mut even, mut odd) = (0, 0);
    for (i, b) in sample.iter().enumerate() {
        if *b == 0 {
            if i % 2 == 0 {
                even += 1;
            } else {
                odd += 1;
            }
        }
    }
    // Most code units of a CSV are ASCII: their high byte is NUL, their low byte never is.
    let half = sample.len() / 2;
    (odd * 2 >= half && even == 0) || (even * 2 >= half && odd == 0)
}
