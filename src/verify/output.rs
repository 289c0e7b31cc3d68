//! `verify`'s report: a short summary and one line per problem for a person (docs/verify.md
//! shows it), or the one JSON document of `--json`.

use std::io::{self, Write};

use super::{Counts, Report};

/// Prints `report` on stdout.
pub fn print(report: &Report, json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        // File names and the server's messages, escaped (see `terminal`).
        write_text(&mut crate::terminal::Printable(&mut out), report)?;
    }
    out.flush()
}

/// The summary lines, each problem on a line of its own, then the result.
fn write_text(out: &mut impl Write, r: &Report) -> io::Result<()> {
    let c = &r.counts;
    writeln!(out, "State file: {}", r.state)?;
    let unread = match r.unread.len() {
        0 => String::new(),
        n => format!(" ({n} not read)"),
    };
    writeln!(
        out,
        "Records:    {}{unread}, read with {} API {} ({} {}, {} throttled)",
        c.records,
        c.api_calls,
        plural(c.api_calls as usize, "call", "calls"),
        c.retries,
        plural(c.retries as usize, "retry", "retries"),
        c.throttles
    )?;
    writeln!(out, "Rows:       {}", rows_line(c))?;
    // Rows `undo` took back are told apart: not done, and not to be.
    let undone = |s: &str| matches!(s, "removing" | "removed");
    let removed: usize = c
        .not_done
        .iter()
        .filter(|(s, _)| undone(s))
        .map(|(_, n)| n)
        .sum();
    if removed > 0 {
        writeln!(
            out,
            "Removed:    {removed} (taken back by `undo`): not verified"
        )?;
    }
    let not_done: usize = c
        .not_done
        .iter()
        .filter(|(s, _)| !undone(s))
        .map(|(_, n)| n)
        .sum();
    if not_done > 0 {
        let states: Vec<String> = c
            .not_done
            .iter()
            .filter(|(s, _)| !undone(s))
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        writeln!(
            out,
            "Not done:   {not_done} ({}): not verified; `{} status` tells more",
            states.join(", "),
            crate::run::summary::program()
        )?;
    }
    let n = &c.notes;
    if n.created > 0 {
        writeln!(
            out,
            "Notes:      {} created: {} ok, {} missing, {} changed{}",
            n.created,
            n.ok,
            n.missing,
            n.changed,
            match n.not_checked {
                0 => String::new(),
                k => format!(", {k} not checked"),
            }
        )?;
    }
    write_problems(out, r)?;
    write_result(out, r)
}

/// The done rows and their verdicts.
fn rows_line(c: &Counts) -> String {
    let mut line = format!(
        "{} ({} done: {} ok, {} missing, {} changed, {} duplicate",
        c.rows, c.done, c.ok, c.missing, c.changed, c.duplicate
    );
    if c.not_checked > 0 {
        line.push_str(&format!(", {} not checked", c.not_checked));
    }
    line.push(')');
    line
}

/// One line per problem: the lines (line, verdict, file, record, why), the notes, the records
/// that could not be read.
fn write_problems(out: &mut impl Write, r: &Report) -> io::Result<()> {
    for p in &r.problems {
        writeln!(
            out,
            "line {}: {}: {} ({} {}): {}",
            p.line,
            p.verdict.as_str(),
            crate::manifest::cut(&p.file),
            p.reference_type.as_str(),
            p.reference_id,
            p.detail
        )?;
    }
    for n in &r.notes {
        writeln!(
            out,
            "note {} of contact {} ({}): {}: {}",
            n.note_id,
            n.contact_id,
            lines(&n.lines),
            n.verdict.as_str(),
            n.detail
        )?;
    }
    for u in &r.unread {
        writeln!(
            out,
            "not read: {} {} ({}): {}",
            u.reference_type.as_str(),
            u.reference_id,
            lines(&u.lines),
            u.error
        )?;
    }
    Ok(())
}

/// What it all comes to, and what to do next.
fn write_result(out: &mut impl Write, r: &Report) -> io::Result<()> {
    let problems = r.problems.len() + r.notes.len();
    if !r.unread.is_empty() {
        let n = r.unread.len();
        writeln!(
            out,
            "Result:     not all checked: {n} {} could not be read (above); run verify again",
            plural(n, "record", "records")
        )
    } else if problems > 0 {
        writeln!(
            out,
            "Result:     {problems} {} (above): the account does not hold what the state file says",
            plural(problems, "problem", "problems")
        )
    } else {
        writeln!(
            out,
            "Result:     ok: every done row's attachment and every created note is as recorded"
        )
    }
}

/// `line 3`, `lines 2, 3, 4`.
fn lines(lines: &[u64]) -> String {
    let shown: Vec<String> = lines.iter().map(u64::to_string).collect();
    match shown.len() {
        0 => "no line".to_string(),
        1 => format!("line {}", shown[0]),
        _ => format!("lines {}", shown.join(", ")),
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
