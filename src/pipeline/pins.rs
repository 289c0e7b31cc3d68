//! A row's pin: its attachment pinned to its contact (`PATCH /attachments/{id}/pin`) once it is
//! attached, exactly once, as every other side effect. The intent (`pinning`) is committed before
//! the PATCH is sent (in the same write as `done` when the pin follows the attach at once, see
//! `RowRun::attach`), the outcome after (`pinned`, or a failed pin: the row stays done with its
//! attachment). After an answer that may have been lost (a dropped connection, a timeout, a
//! 5xx, a kill) the contact's pinned attachments are read first, and the PATCH is sent again
//! only when they do not list the attachment. Every call goes through `Context::api` (the rate
//! limit, the throttle gate) and the row's retries.

use tracing::info;

use super::{Context, Event, Outcome, RowError, Step};
use crate::checkpoint::{PinState, StoredRow, Transition};
use crate::failure::FailureKind;
use crate::remote::RemoteError;

/// The pinned attachments asked for a page: the API's maximum.
const PINNED_PER_PAGE: u64 = 100;

/// A row's pin as this run knows it.
#[derive(Debug)]
pub(super) struct Pin {
    /// The attachment to pin.
    attachment_id: String,
    /// What the state file holds of the pin now.
    recorded: Option<PinState>,
    /// A PATCH may have been sent and its outcome is unknown: the contact's pinned attachments
    /// are read before another is sent.
    in_doubt: bool,
}

impl Pin {
    /// The pin that follows an attach recorded as done with the pin's intent.
    pub(super) fn after_attach(attachment_id: String) -> Self {
        Self {
            attachment_id,
            recorded: Some(PinState::Pinning),
            in_doubt: false,
        }
    }

    /// The pin of a row done before (`None` when no attachment is recorded). Anything recorded
    /// of it (an intent, a failure) may have followed a PATCH that took effect: in doubt.
    pub(super) fn of_done(row: &StoredRow) -> Option<Self> {
        Some(Self {
            attachment_id: row.attachment_id.clone()?,
            recorded: row.pin_state,
            in_doubt: row.pin_state.is_some(),
        })
    }
}

impl Context {
    /// Pins `row`'s attachment, its retryable failures counted against the row's retries.
    /// A failure is the pin's (see [`RowError::of_pin`]), never the attachment's.
    pub(super) async fn pin(
        &self,
        row: &StoredRow,
        pin: &mut Pin,
        attempts: &mut u32,
    ) -> Result<(), RowError> {
        loop {
            match self.pin_once(row, pin).await {
                Ok(()) => return Ok(()),
                Err(RowError::Remote(e)) if e.is_retryable() => self
                    .retry(e, row, attempts)
                    .await
                    .map_err(RowError::of_pin)?,
                Err(e) => return Err(e.of_pin()),
            }
        }
    }

    /// One attempt: the contact's pinned attachments read first when a PATCH may have taken
    /// effect (listed: recorded as pinned, nothing sent), then the intent committed (unless it
    /// is recorded already) and the PATCH sent.
    async fn pin_once(&self, row: &StoredRow, pin: &mut Pin) -> Result<(), RowError> {
        if pin.in_doubt && self.pinned_now(&row.contact_id, &pin.attachment_id).await? {
            info!(
                "line {}: attachment {} is pinned already (an earlier pin's answer was lost); not pinning again",
                row.line, pin.attachment_id
            );
            self.pinned(row, true);
            return Ok(());
        }
        // Not pinned (or never sent): whatever was sent before did not take effect.
        pin.in_doubt = false;
        if pin.recorded != Some(PinState::Pinning) {
            self.commit(row, Transition::Pinning).await?;
            pin.recorded = Some(PinState::Pinning);
        }
        match self
            .api(|| self.client.pin_attachment(&pin.attachment_id))
            .await
        {
            Ok(()) => {
                self.pinned(row, false);
                Ok(())
            }
            Err(e) => {
                // Unless it certainly never reached the server, it may have taken effect.
                pin.in_doubt = !matches!(&e, RemoteError::Network(n) if !n.maybe_delivered);
                Err(e.into())
            }
        }
    }

    /// Records `row`'s pin as made (`found`: by an earlier attempt whose answer was lost).
    fn pinned(&self, row: &StoredRow, found: bool) {
        self.record_later(row, Transition::Pinned);
        self.events.emit(Event::StepDone {
            row,
            step: Step::Pin { found },
        });
    }

    /// Whether `contact`'s pinned attachments list `attachment`: page after page (100 each)
    /// until it is found or the list ends.
    async fn pinned_now(&self, contact: &str, attachment: &str) -> Result<bool, RemoteError> {
        let mut page = 1;
        loop {
            let listed = self
                .api(|| {
                    self.client
                        .pinned_attachments(contact, page, PINNED_PER_PAGE)
                })
                .await?;
            if listed.ids.iter().any(|id| id == attachment) {
                return Ok(true);
            }
            if listed.ids.is_empty() || page >= listed.max_page {
                return Ok(false);
            }
            page += 1;
        }
    }

    /// Records that `row`'s pin failed with `e` (the row stays done with its attachment): a
    /// retryable failure is tried again by a rerun, a refusal only with `--retry-failed`.
    pub(super) fn pin_failed(&self, row: &StoredRow, e: RemoteError) -> Outcome {
        let retryable = e.is_retryable_later();
        // The kind (`pin_failed`) says that the file is attached and its pin is what failed.
        let message = e.to_string();
        self.record_later(
            row,
            Transition::PinFailed {
                message: message.clone(),
                retryable,
            },
        );
        Outcome::Failed {
            kind: FailureKind::PinFailed,
            retryable,
            message,
        }
    }
}
