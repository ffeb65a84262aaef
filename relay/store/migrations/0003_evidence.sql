-- Preserved evidence of quarantined activities (relay/evidence.py).
-- The facts and media live encrypted in files under data_dir/evidence; this table
-- holds only what is safe to show without decrypting: ids, times, sizes, hashes.
CREATE TABLE evidence (
    id           bigserial PRIMARY KEY,  -- reserved with nextval() before the blobs are written
    -- No ON DELETE: the activity row (exact bytes and headers) stays while evidence needs it.
    activity_row bigint REFERENCES activity (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    retain_until timestamptz NOT NULL,   -- legal minimum; nothing deletes evidence yet
    blobs        jsonb NOT NULL,         -- [{name, file, size, sha256}] of the plaintexts
    summary      jsonb NOT NULL          -- {action, rule, banks, media, bytes, sha256: [...]}
);
CREATE INDEX evidence_activity ON evidence (activity_row);
CREATE INDEX evidence_retain ON evidence (retain_until);

-- Every read of evidence, successful or not. No foreign key: the log outlives the
-- evidence it covers, and records attempts on ids that do not exist.
CREATE TABLE evidence_access (
    id          bigserial PRIMARY KEY,
    evidence_id bigint NOT NULL,
    who         text NOT NULL,
    why         text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    what        text NOT NULL,           -- what was read: "read", "extract to DIR", ...
    outcome     text NOT NULL            -- "ok", or the error that stopped the read
);
CREATE INDEX evidence_access_evidence ON evidence_access (evidence_id, at);
