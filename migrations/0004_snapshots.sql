-- Snapshots (issue 18): what a record held before this state file's first attach to it, and
-- which notes a contact had before the first note this state file created for it. After a lost
-- answer, the one matching attachment or note that is in neither the snapshot nor claimed by
-- another row or group is the lost attempt's. Forward-only: once landed, never edited.

-- A record read before its first attach (or created by this state file: then it held nothing).
CREATE TABLE snapshots (
    reference_type TEXT NOT NULL,
    reference_id   TEXT NOT NULL,
    contact_id     TEXT NOT NULL,
    taken_at       TEXT NOT NULL,
    PRIMARY KEY (reference_type, reference_id)
) STRICT;

-- The attachments a snapshot's record held, extended with every attachment this state file made
-- on it (so a file attached, then changed and uploaded again, never adopts its own first copy).
CREATE TABLE snapshot_attachments (
    reference_type TEXT NOT NULL,
    reference_id   TEXT NOT NULL,
    attachment_id  TEXT NOT NULL,
    filename       TEXT NOT NULL,
    size           INTEGER NOT NULL,
    PRIMARY KEY (reference_type, reference_id, attachment_id)
) STRICT;

-- A contact whose notes were listed before the first `POST /notes` for it.
CREATE TABLE note_snapshots (
    contact_id TEXT PRIMARY KEY,
    taken_at   TEXT NOT NULL
) STRICT;

-- The notes such a contact had then.
CREATE TABLE note_snapshot_ids (
    contact_id TEXT NOT NULL,
    note_id    TEXT NOT NULL,
    PRIMARY KEY (contact_id, note_id)
) STRICT;
