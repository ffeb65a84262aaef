-- The evidence lifecycle (issue 14, point 3; relay/evidence.py, relay/blobs.py).
--
-- Retention per jurisdiction: ``retain_until`` (0003) is the row's keep-until, the
-- longest period its ``jurisdiction`` asks (18 U.S.C. 2258A(h): a year since the REPORT
-- Act of 2024; the UK code at least 90 days). Past it and not held, a purge deletes the
-- blobs and marks the row ``purged_at``; the row stays (metadata, hashes) and so does
-- the activity row pointing at it.
ALTER TABLE evidence ADD COLUMN jurisdiction text;
ALTER TABLE evidence ADD COLUMN purged_at timestamptz;
COMMENT ON COLUMN evidence.retain_until IS
    'keep until: the retention its jurisdiction asks; purged after it unless held';
CREATE INDEX evidence_purgeable ON evidence (retain_until) WHERE purged_at IS NULL;

-- Legal holds: while a row here has no released_at, its evidence is never purged.
-- One open hold per evidence; released holds stay as the record of who held it and why.
CREATE TABLE evidence_hold (
    id            bigserial PRIMARY KEY,
    evidence_id   bigint NOT NULL REFERENCES evidence (id),
    held_by       text NOT NULL,
    held_why      text NOT NULL,
    held_at       timestamptz NOT NULL DEFAULT now(),
    released_by   text,
    released_why  text,
    released_at   timestamptz
);
CREATE UNIQUE INDEX evidence_hold_open ON evidence_hold (evidence_id) WHERE released_at IS NULL;

-- The shared blob store ([evidence] store = "postgresql"): sealed blobs (AES-GCM, as
-- on disk) readable by every Sluice process on this database, on any machine.
CREATE TABLE evidence_blob (
    name       text PRIMARY KEY,         -- <32 hex>.blob, as evidence.blobs[].file names it
    data       bytea NOT NULL,           -- version || nonce || ciphertext || tag
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Sealed bytes do not compress: store them out of line without trying.
ALTER TABLE evidence_blob ALTER COLUMN data SET STORAGE EXTERNAL;
