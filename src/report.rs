//! `opcrm-import report`: the rows of a migration as CSV. The failed-rows report is itself a
//! manifest (plus `error_kind` and `error`, which `check` and `run` ignore), so a person can fix
//! it and run it.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, RowState, StoredRow};
use crate::cli::{ReportArgs, ReportOnly};
use crate::status::open;
use crate::{ExitStatus, fail};

/// `path` as the report's `file` column: relative to the report's folder when the file lies
/// under it, else absolute, so that the report works as a manifest where it is written.
fn file_column(path: &Path, report_dir: &Path) -> String {
    match path.strip_prefix(report_dir) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

pub fn run(args: &ReportArgs) -> anyhow::Result<ExitStatus> {
    let (path, conn) = match open(args.manifest.as_ref(), args.state.as_ref()) {
        Ok(opened) => opened,
        Err((m, status)) => return fail(m, status),
    };
    let rows = match checkpoint::load_rows(&conn) {
        Ok(rows) => rows,
        Err(e) => {
            return fail(
                format!("cannot read state file {}: {e}", path.display()),
                ExitStatus::Stopped,
            );
        }
    };
    let keep = |r: &StoredRow| match args.only {
        ReportOnly::Failed => matches!(r.state, RowState::Failed | RowState::Rejected),
        ReportOnly::Done => r.state == RowState::Done,
        ReportOnly::All => true,
    };
    let report_dir: PathBuf = match &args.output {
        Some(out) => {
            let dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
            std::path::absolute(&dir).unwrap_or(dir)
        }
        None => std::env::current_dir().unwrap_or_default(),
    };
    let sink: Box<dyn std::io::Write> = match &args.output {
        Some(out) => match std::fs::File::create(out) {
            Ok(f) => Box::new(f),
            Err(e) => {
                return fail(
                    format!("cannot write {}: {e}", out.display()),
                    ExitStatus::Stopped,
                );
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let mut csv = csv::Writer::from_writer(sink);
    let mut header = vec![
        "file",
        "contact_id",
        "reference_type",
        "reference_id",
        "name",
    ];
    match args.only {
        ReportOnly::Failed => header.extend(["error_kind", "error"]),
        ReportOnly::Done => header.extend(["attachment_id", "s3_key"]),
        ReportOnly::All => {
            header.extend(["state", "attachment_id", "s3_key", "error_kind", "error"])
        }
    }
    csv.write_record(&header)?;
    let mut count = 0;
    for row in rows.iter().filter(|r| keep(r)) {
        let mut record = vec![
            file_column(&row.path, &report_dir),
            row.contact_id.clone(),
            row.reference_type.as_str().to_string(),
            row.reference_id.clone(),
            row.name.clone(),
        ];
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        match args.only {
            ReportOnly::Failed => record.extend([text(&row.error_kind), text(&row.last_error)]),
            ReportOnly::Done => record.extend([text(&row.attachment_id), text(&row.s3_key)]),
            ReportOnly::All => record.extend([
                row.state.as_str().to_string(),
                text(&row.attachment_id),
                text(&row.s3_key),
                text(&row.error_kind),
                text(&row.last_error),
            ]),
        }
        csv.write_record(&record)?;
        count += 1;
    }
    csv.flush()?;
    if let Some(out) = &args.output {
        eprintln!(
            "wrote {count} {} to {}",
            if count == 1 { "row" } else { "rows" },
            out.display()
        );
    }
    Ok(ExitStatus::Success)
}
