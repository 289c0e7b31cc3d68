//! Every example output in README.md and docs/ is what the binary prints today: each fenced block
//! after a marker is compared with the output of the marker's command, so that the text cannot go
//! stale again. The markers (HTML comments, invisible on a rendered page):
//!
//! - `<!-- output of: CMD -->`: CMD's stdout, run in the repository's folder (the samples are
//!   there), without credentials;
//! - `<!-- output after a run of the sample: CMD -->`: CMD's stdout against a fresh emulator
//!   (throttle off), in a folder holding a copy of `samples/` after `run samples/manifest.csv`;
//! - `<!-- first line of: CMD -->`: the first line CMD prints (a server: then it is stopped); a
//!   `--listen` port is taken as 0 and shown as written.
//!
//! Compared after masking what differs from run to run: the ids the emulator makes (which row
//! gets which depends on the order the uploads end, and they open with its clock) and loopback
//! ports.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::Scratch;
use crate::common::emulator::{API_KEY, Emulator, USER_ID};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    AfterRun,
    FirstLine,
}

#[derive(Debug)]
struct Example {
    place: String,
    kind: Kind,
    command: String,
    expected: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The marked examples of README.md and every page of docs/.
fn examples() -> Vec<Example> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut found = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some((kind, command)) = marker(line) else {
                continue;
            };
            let place = format!("{}:{}", page.display(), i + 1);
            assert!(
                lines.get(i + 1).is_some_and(|l| l.starts_with("```")),
                "{place}: a marker must be followed by a fenced block"
            );
            let body: Vec<&str> = lines[i + 2..]
                .iter()
                .take_while(|l| !l.starts_with("```"))
                .copied()
                .collect();
            found.push(Example {
                place,
                kind,
                command,
                expected: body.join("\n"),
            });
        }
    }
    found
}

fn marker(line: &str) -> Option<(Kind, String)> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    for (prefix, kind) in [
        ("output of:", Kind::Plain),
        ("output after a run of the sample:", Kind::AfterRun),
        ("first line of:", Kind::FirstLine),
    ] {
        if let Some(command) = inner.strip_prefix(prefix) {
            return Some((kind, command.trim().to_string()));
        }
    }
    None
}

/// The command's words, its first (`opcrm-import`) this binary.
fn command(words: &str, cwd: &Path) -> Command {
    let mut words = words.split_whitespace();
    assert_eq!(words.next(), Some("opcrm-import"), "{words:?}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
    cmd.args(words)
        .current_dir(cwd)
        .env_remove("ONEPAGECRM_API_KEY")
        .env_remove("ONEPAGECRM_USER_ID")
        .env_remove("ONEPAGECRM_API_URL")
        .env_remove("OPCRM_LOG");
    cmd
}

fn stdout_of(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(example: &Example) -> String {
    match example.kind {
        Kind::Plain => stdout_of(command(&example.command, &repo())),
        Kind::AfterRun => {
            let s = Scratch::new();
            copy_samples(&s.path("samples"));
            let emu = Emulator::start(&["--rate-limit", "off"]);
            let with_emulator = |words: &str| {
                let mut cmd = command(words, &s.path(""));
                cmd.env("ONEPAGECRM_API_URL", &emu.api)
                    .env("ONEPAGECRM_USER_ID", USER_ID)
                    .env("ONEPAGECRM_API_KEY", API_KEY);
                cmd
            };
            let ran =
                with_emulator("opcrm-import run samples/manifest.csv --rate off --no-progress")
                    .output()
                    .unwrap();
            assert_eq!(ran.status.code(), Some(0), "{}", example.place);
            stdout_of(with_emulator(&example.command))
        }
        Kind::FirstLine => {
            let mut child = command(&example.command.replace(":8787", ":0"), &repo())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let _ = child.kill();
            let _ = child.wait();
            line
        }
    }
}

fn copy_samples(to: &Path) {
    std::fs::create_dir_all(to.join("files")).unwrap();
    for dir in ["", "files"] {
        for entry in std::fs::read_dir(repo().join("samples").join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file() && !name.contains(".sqlite") {
                std::fs::copy(&path, to.join(dir).join(name)).unwrap();
            }
        }
    }
}

/// `text` with what differs from run to run masked, and no trailing blanks: ids the emulator made
/// (24 hex digits: its clock's seconds, then a counter, so `6b1520bc0000000000000001`; the
/// seed's ids are random and stay) and the ports after `127.0.0.1:`.
fn masked(text: &str) -> String {
    let mut out = String::new();
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let made = token.len() == 24
            && token.bytes().all(|b| b.is_ascii_hexdigit())
            && &token[8..14] == "000000";
        out.push_str(if made { "<id>" } else { token.as_str() });
        token.clear();
    };
    for c in text.trim_end().chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    let mut ports = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find("127.0.0.1:") {
        ports.push_str(&rest[..at + "127.0.0.1:".len()]);
        rest = &rest[at + "127.0.0.1:".len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        ports.push_str("PORT");
        rest = &rest[digits..];
    }
    ports.push_str(rest);
    ports
}

#[test]
fn every_example_output_in_the_docs_is_what_the_binary_prints() {
    let examples = examples();
    assert!(examples.len() >= 5, "{examples:#?}");
    let mut stale = Vec::new();
    for example in &examples {
        let (expected, got) = (masked(&example.expected), masked(&output(example)));
        if expected != got {
            stale.push(format!(
                "{} ({}):\n--- the docs say:\n{expected}\n--- the binary prints:\n{got}\n",
                example.place, example.command
            ));
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

#[test]
fn masking_hides_only_what_differs_from_run_to_run() {
    assert_eq!(
        masked(
            "a 6b1520bc0000000000000049 (ce6ec0cdddd720161b4cbd15) http://127.0.0.1:40123/api  \n"
        ),
        "a <id> (ce6ec0cdddd720161b4cbd15) http://127.0.0.1:PORT/api"
    );
}
