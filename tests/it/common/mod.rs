//! Helpers shared by the integration tests: the binary, and a scratch folder with a manifest
//! and its files.

pub mod emulator;
pub mod hostile;
pub mod s3s;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A valid OnePageCRM-style id (24 hex digits).
pub const ID: &str = "5a1b2c3d4e5f60718293a4b5";
pub const ID2: &str = "5a1b2c3d4e5f60718293a4b6";
pub const HEADER: &str = "file,contact_id,reference_type,reference_id,name\n";

/// The folder of the committed samples.
pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// The binary under test, with no credentials or API URL inherited from the shell.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
    cmd.env_remove("ONEPAGECRM_USER_ID")
        .env_remove("ONEPAGECRM_API_KEY")
        .env_remove("ONEPAGECRM_API_URL");
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The binary, run as an unprivileged user (uid 65534) when the tests run as root, since root
/// reads and writes anything: a copy of it in the scratch folder (so the build's own folder need
/// not be open to that user), with the scratch folder opened for reading. Otherwise `bin()`.
pub fn unprivileged_bin(s: &Scratch) -> Command {
    if !is_root() {
        return bin();
    }
    let exe = s.path("opcrm-import");
    // A hard link, not a copy, where it can be: a copy is written through a file descriptor
    // that a child forked meanwhile by another test thread may still hold, and exec then fails
    // with "Text file busy".
    if std::fs::hard_link(env!("CARGO_BIN_EXE_opcrm-import"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_opcrm-import"), &exe).unwrap();
    }
    set_mode(&exe, 0o755);
    set_mode(s.dir.path(), 0o755);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .env_remove("ONEPAGECRM_USER_ID")
        .env_remove("ONEPAGECRM_API_KEY")
        .env_remove("ONEPAGECRM_API_URL");
    cmd
}

/// A scratch folder holding a manifest and the files it names.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating its folders) and returns its path.
    pub fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `manifest.csv` and returns its path.
    pub fn manifest(&self, text: impl AsRef<[u8]>) -> PathBuf {
        self.file("manifest.csv", text)
    }
}

/// A scratch copy of the samples' files and of the sample manifest `name` (as `manifest.csv`).
pub fn sample_copy_of(name: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("files")).unwrap();
    for entry in std::fs::read_dir(samples().join("files")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), s.path("files").join(entry.file_name())).unwrap();
    }
    let manifest = s.path("manifest.csv");
    std::fs::copy(samples().join(name), &manifest).unwrap();
    (s, manifest)
}

/// The JSON document a command printed on stdout; panics with its stdout and stderr otherwise.
pub fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `check --json` and returns the exit code and the parsed document.
pub fn check_json(manifest: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = bin()
        .arg("check")
        .arg(manifest)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    (out.status.code().unwrap(), json_stdout(&out))
}

/// (line, column, kind) of each problem in a `check --json` document.
pub fn problems(doc: &serde_json::Value) -> Vec<(Option<u64>, Option<String>, String)> {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64(),
                p["column"].as_str().map(str::to_string),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
