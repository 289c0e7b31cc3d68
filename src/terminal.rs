//! What reaches a person's terminal: text from a server (error messages) or from a manifest (file
//! names) may hold escape sequences that clear the screen or set the window title, so every line
//! printed for a person goes through [`printable`] (CSV reports keep their bytes: they are data).

use std::borrow::Cow;
use std::io::{self, Write};

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

/// Writes one line for a person on stderr, escaped.
pub fn say(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{}", printable(line));
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
