-- What the upload door decided (issue 15): one row per upload judged, so an admin can
-- answer "why was this upload refused?" as for activities. The signals are kept in
-- outline only (which check found what, no hashes or URLs in clear); the refused files
-- themselves are in the evidence (evidence_id) when a key is set. Pruned with finished
-- activities, after [database] keep_days.
CREATE TABLE upload_record (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    path          text NOT NULL,
    family        text NOT NULL,
    remote        text,
    account       jsonb,
    outcome       text NOT NULL,  -- deliver, review, reject, quarantine, timeout, error
    rule          text,
    signals       jsonb NOT NULL DEFAULT '[]'::jsonb,
    evidence_id   bigint,
    bytes         bigint NOT NULL DEFAULT 0,
    seconds       double precision,
    checked_after boolean NOT NULL DEFAULT false
);
CREATE INDEX upload_record_newest ON upload_record (at DESC, id DESC);
