-- `undo` (issue 21): a row's attachment and a created note can be deleted again, each exactly
-- once. Forward-only: once landed, never edited.
--
-- Rows gain two states: `removing` (the intent, committed before `DELETE /attachments/{id}`,
-- whose outcome is unknown until recorded) and `removed` (the attachment is gone; a 404 counts:
-- nothing of it is left). The row keeps its `attachment_id`, so that a removing row is deleted
-- by the same id again, and `removed_at` says when. Notes gain the same two states, keeping their
-- `note_id`. SQLite changes a CHECK constraint only by rebuilding the table: as 0005 did, a new
-- table, every row copied with its id, the old one dropped, the new one renamed, its indexes
-- made again; in one transaction.

CREATE TABLE rows_new (
    id             INTEGER PRIMARY KEY,
    row_key        TEXT NOT NULL UNIQUE,
    line           INTEGER NOT NULL,
    file           TEXT NOT NULL,
    path           TEXT NOT NULL,
    size           INTEGER NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    contact_id     TEXT NOT NULL,
    reference_type TEXT NOT NULL,
    reference_id   TEXT NOT NULL,
    name           TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN
                       ('pending', 'uploading', 'uploaded', 'attaching', 'done', 'failed', 'rejected',
                        'removing', 'removed')),
    s3_key         TEXT UNIQUE,
    etag           TEXT,
    attachment_id  TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    error_kind     TEXT,
    last_error     TEXT,
    retryable      INTEGER,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    done_at        TEXT,
    contact_email  TEXT NOT NULL DEFAULT '',
    note_group     TEXT,
    note_text      TEXT,
    note_date      TEXT,
    note_key       TEXT,
    snapshot_gen   INTEGER,
    removed_at     TEXT,
    CHECK (state NOT IN ('removing', 'removed') OR attachment_id IS NOT NULL)
) STRICT;

INSERT INTO rows_new (id, row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
                      reference_id, name, state, s3_key, etag, attachment_id, attempts, error_kind,
                      last_error, retryable, created_at, updated_at, done_at, contact_email,
                      note_group, note_text, note_date, note_key, snapshot_gen)
SELECT id, row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
       reference_id, name, state, s3_key, etag, attachment_id, attempts, error_kind,
       last_error, retryable, created_at, updated_at, done_at, contact_email,
       note_group, note_text, note_date, note_key, snapshot_gen
FROM rows;

DROP TABLE rows;
ALTER TABLE rows_new RENAME TO rows;

CREATE INDEX rows_by_record ON rows (reference_type, reference_id, name, size);
CREATE INDEX rows_by_note_group ON rows (note_group) WHERE note_group IS NOT NULL;

CREATE TABLE notes_new (
    group_key  TEXT PRIMARY KEY,
    contact_id TEXT NOT NULL,
    text       TEXT NOT NULL,
    date       TEXT,
    note_key   TEXT,
    -- pending, intent, created as before (0003); removing: committed before `DELETE
    -- /notes/{id}`; removed: the note is gone.
    state      TEXT NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'intent', 'created', 'removing', 'removed')),
    intent_at  TEXT,
    note_id    TEXT UNIQUE,
    created_at TEXT,
    adopted    INTEGER NOT NULL DEFAULT 0,
    -- The contact's notes listing its intent was sent after (0004).
    snapshot_gen INTEGER,
    removed_at TEXT,
    CHECK ((state IN ('created', 'removing', 'removed')) = (note_id IS NOT NULL))
) STRICT;

INSERT INTO notes_new (rowid, group_key, contact_id, text, date, note_key, state, intent_at,
                       note_id, created_at, adopted, snapshot_gen)
SELECT rowid, group_key, contact_id, text, date, note_key, state, intent_at, note_id,
       created_at, adopted, snapshot_gen
FROM notes;

DROP TABLE notes;
ALTER TABLE notes_new RENAME TO notes;

-- An attachment a row held before `--reupload-changed` uploaded its changed file again: the row
-- forgets it (its `attachment_id` becomes the new one's), and this table keeps it, so that `undo`
-- deletes it too (the state file made it). Kept by a trigger, in the same statement as the row's
-- change. `state` as the rows': `done`, `removing` (the delete may have been sent), `removed`.
CREATE TABLE replaced_attachments (
    attachment_id TEXT PRIMARY KEY,
    row_id        INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('done', 'removing', 'removed')),
    replaced_at   TEXT NOT NULL,
    removed_at    TEXT
) STRICT;

CREATE TRIGGER rows_keep_replaced_attachments
AFTER UPDATE OF attachment_id ON rows
WHEN OLD.attachment_id IS NOT NULL AND OLD.state NOT IN ('removing', 'removed')
     AND NEW.attachment_id IS NOT OLD.attachment_id
BEGIN
    INSERT OR IGNORE INTO replaced_attachments (attachment_id, row_id, replaced_at)
    VALUES (OLD.attachment_id, OLD.id, NEW.updated_at);
END;
