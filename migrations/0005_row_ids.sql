-- Cheaper writes (issue 20): every row gets an integer id, by which the pipeline's transitions
-- find it (no search of the text key on the hot path), and the index on `state` goes: no query
-- needs it, and every transition rewrote two of its entries. Forward-only: once landed, never
-- edited.
--
-- SQLite changes a table's primary key only by rebuilding the table: a new one, every row copied
-- (keeping its rowid as its id, so the order is the same), the old one dropped (its indexes with
-- it), the new one renamed, its indexes made again. The migration runs in one transaction: a file
-- is migrated whole or not at all.

CREATE TABLE rows_new (
    id             INTEGER PRIMARY KEY,
    -- The row's identity, as before: recording a manifest again matches rows by it.
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
                       ('pending', 'uploading', 'uploaded', 'attaching', 'done', 'failed', 'rejected')),
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
    snapshot_gen   INTEGER
) STRICT;

INSERT INTO rows_new (id, row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
                      reference_id, name, state, s3_key, etag, attachment_id, attempts, error_kind,
                      last_error, retryable, created_at, updated_at, done_at, contact_email,
                      note_group, note_text, note_date, note_key, snapshot_gen)
SELECT rowid, row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
       reference_id, name, state, s3_key, etag, attachment_id, attempts, error_kind,
       last_error, retryable, created_at, updated_at, done_at, contact_email,
       note_group, note_text, note_date, note_key, snapshot_gen
FROM rows;

DROP TABLE rows;
ALTER TABLE rows_new RENAME TO rows;

-- A lost attach answer's check: the attachments other rows hold on one record for one name and
-- size.
CREATE INDEX rows_by_record ON rows (reference_type, reference_id, name, size);
CREATE INDEX rows_by_note_group ON rows (note_group) WHERE note_group IS NOT NULL;
