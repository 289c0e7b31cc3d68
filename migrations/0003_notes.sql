-- Notes that `run` creates from the manifest (`note_text`), each exactly once. Forward-only:
-- once landed, never edited. (Numbered 0003: 0002 is the contacts-by-email lookups.)

-- One row per note group: the rows of one contact with one `note_key`, or, without a key, with
-- one text and date, share one note.
CREATE TABLE notes (
    group_key  TEXT PRIMARY KEY,
    contact_id TEXT NOT NULL,
    text       TEXT NOT NULL,
    -- `YYYY-MM-DD`, or NULL for the API's default (today).
    date       TEXT,
    note_key   TEXT,
    -- pending: nothing sent. intent: committed before `POST /notes`, whose outcome is unknown
    -- until the note is recorded (a rerun lists the contact's notes before creating again).
    -- created: `note_id` is the group's note.
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'intent', 'created')),
    -- The group's first intent, by the local clock: a note older than this (less the clock skew
    -- allowed) was there before and is never adopted.
    intent_at  TEXT,
    note_id    TEXT UNIQUE,
    -- When the note was recorded as created (or adopted after a lost answer).
    created_at TEXT,
    adopted    INTEGER NOT NULL DEFAULT 0,
    CHECK ((state = 'created') = (note_id IS NOT NULL))
) STRICT;

-- A row that creates a note: its group, and its three note columns as written (so that the
-- failed-rows report gives them back). Its `reference_id` is empty until the group's note is
-- created, then that note's id.
ALTER TABLE rows ADD COLUMN note_group TEXT;
ALTER TABLE rows ADD COLUMN note_text TEXT;
ALTER TABLE rows ADD COLUMN note_date TEXT;
ALTER TABLE rows ADD COLUMN note_key TEXT;

CREATE INDEX rows_by_note_group ON rows (note_group) WHERE note_group IS NOT NULL;
