-- The `pin` column (issue 21): a row's attachment pinned to its contact after the attach
-- (`PATCH /attachments/{id}/pin`), exactly once. Forward-only: once landed, never edited.
--
-- `pin` is what the manifest says now (1: pin it), written again by each run (not part of the
-- row's identity: a pin added to a done row is made by the next run). `pin_state` is where the
-- pin of the row's attachment stands: NULL nothing sent; `pinning` the intent, committed before
-- the PATCH, whose outcome is unknown until recorded (a rerun reads the contact's pinned
-- attachments before sending it again); `pinned` made (or found made); `failed` (the API kept
-- failing: a rerun tries again) or `refused` (a 4xx: only `--retry-failed` tries again), with
-- `pin_error` saying why. The row's own state stays `done`: a failed pin is not a failed
-- attachment. New columns only (ALTER TABLE ADD COLUMN): no table is rebuilt.

ALTER TABLE rows ADD COLUMN pin INTEGER NOT NULL DEFAULT 0 CHECK (pin IN (0, 1));
ALTER TABLE rows ADD COLUMN pin_state TEXT
    CHECK (pin_state IN ('pinning', 'pinned', 'failed', 'refused'));
ALTER TABLE rows ADD COLUMN pin_error TEXT;
