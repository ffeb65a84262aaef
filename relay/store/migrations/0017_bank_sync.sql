-- Banks that fill themselves (issue 16, point 4; relay/banks/sync.py).
--
-- A bank may name a source (NCMEC's hash sharing API, StopNCII, Meta's ThreatExchange)
-- that Sluice fetches from on a schedule. The checkpoint is the source's own (as
-- python-threatexchange writes it, as JSON); it is stored only after the entries it
-- covers are committed, so a failed or cut run starts again from the last good one.
CREATE TABLE bank_sync (
    bank_id      integer NOT NULL REFERENCES bank (id) ON DELETE CASCADE,
    source       text NOT NULL CHECK (source IN ('ncmec', 'stopncii', 'threatexchange')),
    checkpoint   jsonb,                  -- NULL: nothing fetched yet, start from the start
    last_run_at  timestamptz,            -- the last run's start, however it ended
    last_ok_at   timestamptz,            -- the last run's end that stored its progress
    last_error   text,                   -- NULL after a run that ended well
    caught_up    boolean NOT NULL DEFAULT false,  -- the last good run reached the feed's end
    -- Totals since the sync began: records fetched, entries added and removed, and
    -- hashes of kinds Sluice does not know (or values it refused), ignored.
    fetched      bigint NOT NULL DEFAULT 0,
    added        bigint NOT NULL DEFAULT 0,
    removed      bigint NOT NULL DEFAULT 0,
    ignored      bigint NOT NULL DEFAULT 0,
    last_run     jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the last run's own counts
    PRIMARY KEY (bank_id, source)
);

-- Which hashes each upstream record brought in. Deletions upstream name a record (an
-- NCMEC entry id, a ThreatExchange indicator), not always its hashes; a hash leaves the
-- bank when no live record of the bank names it any more.
CREATE TABLE bank_sync_record (
    bank_id integer NOT NULL,
    source  text NOT NULL,
    key     text NOT NULL,               -- the source's record key
    kind    text NOT NULL,
    value   text NOT NULL,
    PRIMARY KEY (bank_id, source, key, kind, value),
    FOREIGN KEY (bank_id, source) REFERENCES bank_sync (bank_id, source) ON DELETE CASCADE
);
CREATE INDEX bank_sync_record_value ON bank_sync_record (bank_id, kind, value);
