//! The shape of the source: no function in `src/` is so long that a reader loses its thread.
//!
//! Every `fn` of `src/**/*.rs` is measured from its `fn` line to its closing brace at the same
//! indentation (the code is rustfmt's, so that brace is the function's end). A function over
//! [`LONG`] lines needs its reason written above it: a comment line of its doc comment or
//! attributes that says how many lines and why (`/// Long (about 110 lines) for a reason: ...`,
//! any comment with the word "lines"). None may be over [`TOO_LONG`]. Functions of
//! `#[cfg(test)]` modules are measured too: a test is read as often as the code.
//!
//! The measure reads lines, not Rust: a multi-line string literal with a line that is only `}`
//! at a function's own indentation would end that function early.

use std::path::{Path, PathBuf};

/// Longer than this needs a reason written above the function.
const LONG: usize = 100;
/// Longer than this is never right.
const TOO_LONG: usize = 150;

/// One function as found in a file.
#[derive(Debug)]
struct Function {
    file: String,
    name: String,
    /// 1-based line of the `fn`.
    line: usize,
    /// From the `fn` line to the closing brace, both counted.
    length: usize,
    /// A comment directly above it (doc comment or attributes between) mentions "lines".
    has_reason: bool,
}

/// The `.rs` files under `dir`, sorted, at any depth.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The name of the function a line declares, when it does: `fn`, after any of `pub`,
/// `pub(…)`, `const`, `async`, `unsafe`, `extern "…"` and `default`.
fn declared_fn(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("pub(") {
            rest = after.split_once(')')?.1.trim_start();
        } else if let Some(after) = rest.strip_prefix("extern \"") {
            rest = after.split_once('"')?.1.trim_start();
        } else if let Some(after) = ["pub ", "const ", "async ", "unsafe ", "default "]
            .iter()
            .find_map(|q| rest.strip_prefix(q))
        {
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let name = &rest[..end];
    name.starts_with(|c: char| c.is_alphabetic() || c == '_')
        .then_some(name)
}

/// Whether the comments and attributes directly above line `at` hold a comment with the word
/// "lines".
fn reason_above(lines: &[&str], at: usize) -> bool {
    let mut i = at;
    // Inside a multi-line attribute (`#[cfg_attr(\n…\n)]`) until its `#[` line.
    let mut in_attribute = false;
    while i > 0 {
        i -= 1;
        let text = lines[i].trim();
        if in_attribute {
            in_attribute = !text.starts_with("#[");
        } else if text.starts_with("//") {
            let mut words = text.split(|c: char| !c.is_alphanumeric());
            if words.any(|w| w.eq_ignore_ascii_case("lines")) {
                return true;
            }
        } else if text.starts_with("#[") {
            // A whole attribute on one line: look further up.
        } else if text.ends_with(")]") {
            // The last line of a multi-line attribute.
            in_attribute = true;
        } else {
            return false;
        }
    }
    false
}

/// Every function of one file's text (`file` names it in the findings).
fn functions(file: &str, text: &str) -> Vec<Function> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let Some(name) = declared_fn(line) else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        // The signature ends at the first line ending with `{` (a body follows), `;` (a
        // declaration, no body) or `}` (a body on the signature's last line).
        let Some(open) = (at..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        let end = match lines[open].trim_end() {
            t if t.ends_with(';') => continue,
            t if t.ends_with('}') => open,
            _ => {
                let brace = format!("{}}}", &line[..indent]);
                let closing = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == brace);
                closing.unwrap_or_else(|| panic!("{file}:{}: no closing brace", at + 1))
            }
        };
        found.push(Function {
            file: file.to_string(),
            name: name.to_string(),
            line: at + 1,
            length: end - at + 1,
            has_reason: reason_above(&lines, at),
        });
    }
    found
}

/// Every function of `src/`, with its length.
fn source_functions() -> Vec<Function> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let relative = path.strip_prefix(root).unwrap();
        let file = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        found.extend(functions(&file, &text));
    }
    found
}

/// What is wrong with the functions' lengths, one finding a line.
fn findings(functions: &[Function]) -> Vec<String> {
    functions
        .iter()
        .filter_map(|f| {
            let at = format!("{}:{} fn {} is {} lines", f.file, f.line, f.name, f.length);
            if f.length > TOO_LONG {
                Some(format!("{at}, over {TOO_LONG}: split it"))
            } else if f.length > LONG && !f.has_reason {
                Some(format!(
                    "{at}, over {LONG} with no reason written above it (a comment with \"lines\"): split it or say why"
                ))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn no_function_in_src_is_too_long() {
    let functions = source_functions();
    // The walk found the code (a broken walk would find nothing wrong).
    assert!(
        functions
            .iter()
            .any(|f| f.file == "src/lib.rs" && f.name == "run"),
        "lib.rs's run was not found"
    );
    let found = findings(&functions);
    assert!(found.is_empty(), "too long:\n{}", found.join("\n"));
}

#[test]
fn the_measure_counts_from_fn_to_its_brace_and_reads_the_reason_above() {
    let text = "\
impl A {
    /// Long (about 3 lines) for a reason.
    #[allow(
        dead_code
    )]
    pub(crate) async fn long() {
        one();
    }

    const fn short() -> u8 { 1 }
}
trait T {
    fn declared(&self)
        -> u8;
}
/// No reason.
pub unsafe extern \"C\" fn plain(
    a: u8,
) {
    two();
}
";
    let found = functions("x.rs", text);
    let shape: Vec<(&str, usize, usize, bool)> = found
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.length, f.has_reason))
        .collect();
    assert_eq!(
        shape,
        [
            ("long", 6, 3, true),
            ("short", 10, 1, false),
            ("plain", 17, 5, false),
        ]
    );
}
