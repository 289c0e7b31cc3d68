-- Snapshots (issue 18): what a record held before this state file's attaches to it in a run,
-- and which notes a contact had before the notes this state file created for it in a run. After
-- a lost answer, the one matching attachment or note that is in neither the snapshot its attempt
-- was made after nor claimed by another row or group is the lost attempt's. Forward-only: once
-- landed, never edited.
--
-- Generations: every run reads a record (a contact's notes) again before its first attach (note)
-- there in that run, under a number larger than any before (`generation`). An attachment or note
-- keeps the generation it was first seen in, so the snapshot an attempt was made after is all that
-- was seen up to the attempt's generation: a file attached by hand between two runs is in the
-- later run's snapshot, while an earlier run's lost attempt, seen only later, is not in its own.

-- A record read (or created by this state file: then it held nothing), the contact it belongs to
-- (empty when the answer did not say), and the generation of its latest read.
CREATE TABLE snapshots (
    reference_type TEXT NOT NULL,
    reference_id   TEXT NOT NULL,
    contact_id     TEXT NOT NULL,
    taken_at       TEXT NOT NULL,
    generation     INTEGER NOT NULL,
    PRIMARY KEY (reference_type, reference_id)
) STRICT;

-- The attachments a record was seen holding, from the generation first seen in; those this
-- state file made are added with generation 0 (held by every snapshot: a file attached, then
-- changed and uploaded again, never adopts its own first copy).
CREATE TABLE snapshot_attachments (
    reference_type TEXT NOT NULL,
    reference_id   TEXT NOT NULL,
    attachment_id  TEXT NOT NULL,
    filename       TEXT NOT NULL,
    size           INTEGER NOT NULL,
    generation     INTEGER NOT NULL,
    PRIMARY KEY (reference_type, reference_id, attachment_id)
) STRICT;

-- A contact whose notes were listed before a note was created for it, and the latest listing's
-- generation.
CREATE TABLE note_snapshots (
    contact_id TEXT PRIMARY KEY,
    taken_at   TEXT NOT NULL,
    generation INTEGER NOT NULL
) STRICT;

-- The notes such a contact was seen with, from the generation first seen in.
CREATE TABLE note_snapshot_ids (
    contact_id TEXT NOT NULL,
    note_id    TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (contact_id, note_id)
) STRICT;

-- The generation of the snapshot a row's attach (a group's note) was sent after; NULL when none
-- was taken (the links showed the key) or the attempt came from an earlier version.
ALTER TABLE rows ADD COLUMN snapshot_gen INTEGER;
ALTER TABLE notes ADD COLUMN snapshot_gen INTEGER;
