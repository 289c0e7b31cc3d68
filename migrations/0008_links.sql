-- Links instead of files (issue 21): a row may attach a link to a file in cloud storage
-- (`POST /attachments` with `link_type` and `external_url`, no upload) instead of a file.
-- Forward-only: once landed, never edited. (Numbered 0008: 0007 is the `pin` column's.)
--
-- `link_url` and `link_type` are the row's link columns as the manifest gives them (`link_type`
-- as the API names it for a valid row); both NULL for a row of a file. A link row has no file:
-- its `file` and `path` are empty, its `size` and `mtime_ns` 0, and it never has an `s3_key` or
-- an `etag`. Its attach is in doubt once `snapshot_gen` is set: a link's attach is always sent
-- after a snapshot of its record (the link itself proves nothing: the same link may have been
-- there before), and `attaching` records that snapshot's generation. New columns only (ALTER
-- TABLE ADD COLUMN): no table is rebuilt.

ALTER TABLE rows ADD COLUMN link_url TEXT;
ALTER TABLE rows ADD COLUMN link_type TEXT;
