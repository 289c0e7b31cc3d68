//! One error type for every command: what stopped it (a chain of causes), the exit status it
//! ends with, and what to do next. Commands return it instead of printing and exiting, so that
//! `main` alone prints errors (with their whole chain, as ripgrep does) and a closed stdout is
//! told apart from a real failure.

use std::fmt;

use crate::ExitStatus;

/// What a command ends with when it cannot do its job.
pub struct CommandError {
    status: ExitStatus,
    error: anyhow::Error,
    hint: Option<String>,
    /// More for the `--json` document (the problems of an invalid manifest): what stderr says
    /// above the error, which a script reading stdout would not see otherwise.
    details: serde_json::Map<String, serde_json::Value>,
}

/// What every command returns: the exit status it finished with, or why it stopped.
pub type CommandResult = Result<ExitStatus, CommandError>;

impl CommandError {
    /// Stops the command with `status`, saying `message`.
    pub fn new(status: ExitStatus, message: impl fmt::Display) -> Self {
        Self {
            status,
            error: anyhow::anyhow!("{message}"),
            hint: None,
            details: serde_json::Map::new(),
        }
    }

    /// A usage error or an invalid manifest: nothing was uploaded (exit 2).
    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(ExitStatus::Usage, message)
    }

    /// Credentials, quota, configuration or the state file stopped the command (exit 3).
    pub fn stopped(message: impl fmt::Display) -> Self {
        Self::new(ExitStatus::Stopped, message)
    }

    /// What to do next, printed after the error.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same error, ending the command with `status`.
    pub fn with_status(mut self, status: ExitStatus) -> Self {
        self.status = status;
        self
    }

    /// `key` in the `--json` document, beside the error.
    pub fn with_detail(mut self, key: &str, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.details.insert(key.to_string(), value);
        self
    }

    /// The `--json` document of this error: the whole chain (`error`, and each cause on its own
    /// in `causes`, so that a script sees why, not only what), what to do next, the details and
    /// the exit code.
    pub fn json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("error".into(), self.chain().into());
        let causes: Vec<String> = self.error.chain().map(|c| c.to_string()).collect();
        doc.insert("causes".into(), causes.into());
        if let Some(hint) = &self.hint {
            doc.insert("hint".into(), hint.clone().into());
        }
        for (k, v) in &self.details {
            doc.insert(k.clone(), v.clone());
        }
        doc.insert("exit_code".into(), (self.status as u8).into());
        doc.into()
    }

    pub fn status(&self) -> ExitStatus {
        self.status
    }

    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The message with its causes, `a: b: c`.
    pub fn chain(&self) -> String {
        format!("{:#}", self.error)
    }

    /// Whether this is only stdout closed by its reader (`opcrm-import report | head`): not a
    /// failure of the command, so it is not reported as one.
    pub fn is_broken_pipe(&self) -> bool {
        let pipe = Some(std::io::ErrorKind::BrokenPipe);
        self.error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
                // serde_json keeps the io error of a failed write inside its own, where the
                // chain does not show it (`status --json | head -c 1`).
                || cause
                    .downcast_ref::<serde_json::Error>()
                    .is_some_and(|e| e.io_error_kind() == pipe)
        })
    }
}

impl fmt::Debug for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (exit {})", self.chain(), self.status as u8)
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

/// An unexpected failure (writing the output, starting the runtime): the command could not do
/// its job, and nothing suggests a usage error, so it is a stop (exit 3) unless said otherwise.
impl From<anyhow::Error> for CommandError {
    fn from(error: anyhow::Error) -> Self {
        Self {
            status: ExitStatus::Stopped,
            error,
            hint: None,
            details: serde_json::Map::new(),
        }
    }
}

impl From<std::io::Error> for CommandError {
    fn from(error: std::io::Error) -> Self {
        anyhow::Error::from(error).into()
    }
}

impl From<serde_json::Error> for CommandError {
    fn from(error: serde_json::Error) -> Self {
        anyhow::Error::from(error).into()
    }
}

/// Ignores a closed stdout: what was left to print has no reader.
pub fn ignore_broken_pipe(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdout whose reader has gone.
    struct ClosedPipe;

    impl std::io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_is_told_apart_from_a_failure() {
        let pipe: CommandError =
            anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
                .context("cannot write the summary")
                .into();
        assert!(pipe.is_broken_pipe());
        assert!(!CommandError::stopped("state file is full").is_broken_pipe());
        let json = serde_json::to_writer(ClosedPipe, &serde_json::json!({"a": 1})).unwrap_err();
        assert!(CommandError::from(json).is_broken_pipe());
        assert!(ignore_broken_pipe(Err(std::io::ErrorKind::BrokenPipe.into())).is_ok());
        assert!(ignore_broken_pipe(Err(std::io::ErrorKind::NotFound.into())).is_err());
    }

    #[test]
    fn the_chain_and_hint_are_kept() {
        let e: CommandError = anyhow::anyhow!("disk full")
            .context("cannot write state file s.sqlite")
            .into();
        assert_eq!(e.chain(), "cannot write state file s.sqlite: disk full");
        assert_eq!(e.status(), ExitStatus::Stopped);
        let e = CommandError::usage("bad").with_hint("fix it");
        assert_eq!((e.status(), e.hint()), (ExitStatus::Usage, Some("fix it")));
    }

    #[test]
    fn the_json_document_carries_every_cause() {
        let e: CommandError = anyhow::anyhow!("no such file or directory")
            .context("cannot read manifest m.csv")
            .context("the manifest cannot be read")
            .into();
        let e = e
            .with_status(ExitStatus::Usage)
            .with_detail("problems", [1]);
        let doc = e.json();
        assert_eq!(
            doc["error"],
            "the manifest cannot be read: cannot read manifest m.csv: no such file or directory"
        );
        assert_eq!(
            doc["causes"],
            serde_json::json!([
                "the manifest cannot be read",
                "cannot read manifest m.csv",
                "no such file or directory"
            ])
        );
        assert_eq!(doc["problems"], serde_json::json!([1]));
        assert_eq!(doc["exit_code"], 2);
    }
}
