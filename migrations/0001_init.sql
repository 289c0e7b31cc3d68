-- The checkpoint of one manifest's migration. Forward-only: once landed, never edited.

-- Marks the file as opcrm-import's ("OPCR"), in the same transaction as the tables, so that a
-- reader never sees one without the other.
PRAGMA application_id = 1330660178;

-- What this file is: the tool that owns it and the manifest it belongs to.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- One row per run of `opcrm-import run`.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    pid         INTEGER NOT NULL,
    exit_code   INTEGER,
    rows_done   INTEGER NOT NULL DEFAULT 0,
    rows_failed INTEGER NOT NULL DEFAULT 0,
    api_calls   INTEGER NOT NULL DEFAULT 0,
    retries     INTEGER NOT NULL DEFAULT 0,
    throttles   INTEGER NOT NULL DEFAULT 0
) STRICT;

-- One row per manifest row, keyed by what it means (file, contact, reference, name), not by its line.
CREATE TABLE rows (
    row_key        TEXT PRIMARY KEY,
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
    done_at        TEXT
) STRICT;

CREATE INDEX rows_by_state ON rows (state);
CREATE INDEX rows_by_record ON rows (reference_type, reference_id, name, size);
