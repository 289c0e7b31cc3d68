//! `opcrm-import check`: runs preflight and prints what it found, for a person or as JSON.

use std::io::{self, Write};

use serde::Serialize;

use crate::ExitStatus;
use crate::cli::CheckArgs;
use crate::manifest::{Problem, ReadOptions};
use crate::preflight::{self, Checked, Summary, human_bytes};

/// The document `check --json` prints (its shape is documented in README.md).
#[derive(Serialize)]
struct JsonReport<'a> {
    manifest: String,
    valid: bool,
    quota_checked: bool,
    summary: &'a Summary,
    problems: &'a [Problem],
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitStatus> {
    let options = ReadOptions {
        delimiter: args.manifest.delimiter,
    };
    let checked = preflight::check(&args.manifest.manifest, options);
    let mut out = io::stdout().lock();
    if args.json {
        let report = JsonReport {
            manifest: checked.manifest.path.display().to_string(),
            valid: checked.is_valid(),
            quota_checked: false,
            summary: &checked.summary,
            problems: &checked.manifest.problems,
        };
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &checked, args.offline)?;
    }
    out.flush()?;
    Ok(if checked.is_valid() {
        ExitStatus::Success
    } else {
        ExitStatus::Usage
    })
}

fn write_text(out: &mut impl Write, checked: &Checked, offline: bool) -> io::Result<()> {
    for problem in &checked.manifest.problems {
        writeln!(out, "{problem}")?;
    }
    if !checked.manifest.problems.is_empty() {
        writeln!(out)?;
    }
    let s = &checked.summary;
    writeln!(out, "Manifest:  {}", checked.manifest.path.display())?;
    if !checked.manifest.readable {
        writeln!(
            out,
            "Result:    not readable as a manifest; nothing was checked or uploaded"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Rows:      {} ({} valid, {} invalid), {} {}, {} {}",
        s.rows,
        s.valid,
        s.invalid,
        s.errors,
        plural(s.errors, "error", "errors"),
        s.warnings,
        plural(s.warnings, "warning", "warnings")
    )?;
    writeln!(
        out,
        "To upload: {} {}, {} ({} bytes)",
        s.files_to_upload,
        plural(s.files_to_upload, "file", "files"),
        human_bytes(s.bytes_to_upload),
        s.bytes_to_upload
    )?;
    if let Some(l) = &s.largest_file {
        writeln!(
            out,
            "Largest:   {} ({}, line {})",
            l.file,
            human_bytes(l.size),
            l.line
        )?;
    }
    let why = if offline {
        "--offline"
    } else {
        "this version checks offline only; `run` will check it"
    };
    writeln!(out, "Quota:     storage left not checked ({why})")?;
    if checked.is_valid() {
        writeln!(out, "Result:    valid")?;
    } else {
        writeln!(
            out,
            "Result:    invalid; fix the errors above and check again (nothing was uploaded)"
        )?;
    }
    Ok(())
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
