//! What reaches a person's terminal: text from a server (error messages) or from a manifest (file
//! names) may hold escape sequences that clear the screen or set the window title, so every line
//! printed for a person goes through [`printable`] (CSV reports keep their bytes: they are data).
//! And a run's progress bar owns the terminal's last line: every line for a person and every
//! log line goes above it ([`above_bar`]), never glued to it.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;

/// The progress bar on screen, if any: lines written meanwhile clear it, go out, and it is drawn
/// again below them.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the one lines go above (`None` when it is gone).
pub fn set_bar(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Runs `write` with the bar, if one is on screen, taken off it meanwhile.
pub fn above_bar<T>(write: impl FnOnce() -> T) -> T {
    // A clone (the bar is shared), so that the lock is not held while writing.
    let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// Whether colours may be used: `NO_COLOR` set to anything but the empty string turns every
/// colour off (https://no-color.org), whatever the terminal.
pub fn colour_allowed() -> bool {
    colour_allowed_by(std::env::var_os("NO_COLOR").as_deref())
}

fn colour_allowed_by(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

/// stderr for the log: each event (tracing writes one whole event at a time) goes above the bar.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        above_bar(|| io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `text` with each control character but the line end written as an escape (`\u{1b}`, `\r`,
/// `\t`), so that nothing in it acts on the terminal. C1 controls (U+0080 to U+009F, which some
/// terminals also obey) and DEL included.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match is_unsafe(c) {
            true => out.extend(c.escape_debug()),
            false => out.push(c),
        }
    }
    out.into()
}

fn is_unsafe(c: char) -> bool {
    c.is_control() && c != '\n'
}

/// A writer that passes what it is given through [`printable`]: the readable output of a command
/// (`status`, `check`, a run's summary) is written through it whole, so that no line is missed.
pub struct Printable<W: Write>(pub W);

impl<W: Write> Write for Printable<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // `write!` hands over whole `str` pieces; bytes that are not UTF-8 (none of ours) are
        // shown as lossy text rather than passed raw.
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(printable(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes one line for a person on stderr, escaped, above the bar.
pub fn say(line: &str) {
    above_bar(|| {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{}", printable(line));
    });
}

/// `eprintln!` for a person: the line is escaped as [`printable`] does.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::terminal::say(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_with_any_value_turns_colour_off() {
        use std::ffi::OsStr;
        assert!(colour_allowed_by(None));
        assert!(colour_allowed_by(Some(OsStr::new(""))));
        assert!(!colour_allowed_by(Some(OsStr::new("1"))));
        assert!(!colour_allowed_by(Some(OsStr::new("false"))));
    }

    /// A terminal that notes what is done to it, in one list with the lines written above it.
    #[derive(Debug, Clone, Default)]
    struct Recorder(std::sync::Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn note(&self, what: String) -> io::Result<()> {
            self.0.lock().unwrap().push(what);
            Ok(())
        }
    }

    impl indicatif::TermLike for Recorder {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, n: usize) -> io::Result<()> {
            self.note(format!("up {n}"))
        }
        fn move_cursor_down(&self, n: usize) -> io::Result<()> {
            self.note(format!("down {n}"))
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.note(format!("bar {s}"))
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.note(format!("bar {s}"))
        }
        fn clear_line(&self) -> io::Result<()> {
            self.note("clear".into())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_written_during_the_bar_goes_above_it() {
        let term = Recorder::default();
        let bar = ProgressBar::with_draw_target(
            Some(10),
            indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        bar.set_message("rows");
        bar.tick();
        set_bar(Some(bar.clone()));
        above_bar(|| term.note("line".into())).unwrap();
        set_bar(None);
        let seen = term.0.lock().unwrap().clone();
        let line = seen.iter().position(|s| s == "line").unwrap();
        let before = &seen[..line];
        let last_drawn = before.iter().rposition(|s| s.starts_with("bar "));
        let last_cleared = before.iter().rposition(|s| s == "clear");
        // Drawn, then cleared, the line, then drawn again below it.
        assert!(last_drawn.is_some(), "{seen:?}");
        assert!(
            last_cleared > last_drawn,
            "cleared before the line: {seen:?}"
        );
        assert!(
            seen[line + 1..].iter().any(|s| s.starts_with("bar ")),
            "{seen:?}"
        );
        drop(bar);
    }

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b\u{1b}[2J"),
            "a\\u{1b}]0;pwned\\u{7}b\\u{1b}[2J"
        );
        assert_eq!(printable("x\r\ty\u{9b}z\u{7f}"), "x\\r\\ty\\u{9b}z\\u{7f}");
        // Line ends, and text with nothing to escape, stay as they are.
        assert_eq!(printable("one\ntwo é"), "one\ntwo é");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_escapes_everything_written_through_it() {
        let mut out = Printable(Vec::new());
        let (file, message) = ("a\u{1b}[31m.txt", "ok\n");
        write!(out, "file {file}: {message}").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "file a\\u{1b}[31m.txt: ok\n"
        );
    }
}
