-- Contacts found by email (issue 13). Forward-only: once landed, never edited.

-- The email a row names its contact by, as the manifest wrote it; empty for a row that gives
-- contact_id. Such a row's contact_id is the contact its email resolved to (empty until then).
ALTER TABLE rows ADD COLUMN contact_email TEXT NOT NULL DEFAULT '';

-- Each email resolved to exactly one contact, so that a rerun looks it up no more. An email that
-- no contact has, or several have, is not recorded: the next run asks again (after the user fixed
-- the contact in OnePageCRM or the email in the manifest).
CREATE TABLE lookups (
    email        TEXT PRIMARY KEY,  -- trimmed and lower-cased
    contact_id   TEXT NOT NULL,
    looked_up_at TEXT NOT NULL
) STRICT;
