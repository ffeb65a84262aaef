-- The review UI (issue 14, point 2; relay/review/).
--
-- The queue is ordered by severity, then age. Severity is read from the verdict by
-- one function, so the order, the filters and the index agree: 4 for a match in a
-- ``csam`` bank, 3 for ``terrorism`` or ``ncii``, 2 for any other match, 1 for
-- whatever else holds (an error, media that could not be checked).
CREATE FUNCTION review_severity(verdict jsonb) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE
        WHEN verdict @> '{"signals": [{"kind": "match", "detail": {"category": "csam"}}]}' THEN 4
        WHEN verdict @> '{"signals": [{"kind": "match", "detail": {"category": "terrorism"}}]}'
          OR verdict @> '{"signals": [{"kind": "match", "detail": {"category": "ncii"}}]}' THEN 3
        WHEN verdict @> '{"signals": [{"kind": "match"}]}' THEN 2
        ELSE 1
    END)::smallint
$$;
CREATE INDEX activity_review_queue ON activity (review_severity(verdict) DESC, id)
    WHERE state = 'review';

-- A reveal: a moderator chose to see one original file of one item, for a while.
-- The original is served only inside [at, until); every reveal is kept.
CREATE TABLE reveal (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES account (id),
    who          text NOT NULL,
    activity_row bigint NOT NULL,
    evidence_id  bigint NOT NULL REFERENCES evidence (id),
    media        integer NOT NULL CHECK (media >= 0),
    at           timestamptz NOT NULL DEFAULT now(),
    until        timestamptz NOT NULL
);
CREATE INDEX reveal_account_at ON reveal (account_id, at DESC);
CREATE INDEX reveal_evidence ON reveal (evidence_id, media);

-- Exposure per moderator per day (UTC): reveals, and seconds spent in the queue
-- (counted from the gaps between a moderator's pages, each gap at most a minute).
CREATE TABLE exposure (
    account_id bigint NOT NULL REFERENCES account (id),
    day        date NOT NULL,
    reveals    integer NOT NULL DEFAULT 0,
    seconds    integer NOT NULL DEFAULT 0,
    last_seen  timestamptz,
    PRIMARY KEY (account_id, day)
);

-- A moderator's own settings (blur, greyscale, video); absent keys take the
-- instance's defaults ([review]).
ALTER TABLE account ADD COLUMN settings jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Report drafts made when a moderator confirms a case: never sent by themselves.
-- ``kind``: ncmec, uk or sor; the body is rendered when asked for, from the evidence
-- and the reveal log, so a later reveal still counts as a view.
CREATE TABLE report_draft (
    id           bigserial PRIMARY KEY,
    activity_row bigint NOT NULL,
    evidence_id  bigint REFERENCES evidence (id),
    kind         text NOT NULL CHECK (kind IN ('ncmec', 'uk', 'sor')),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'submitted', 'retracted')),
    submitted_by text,
    submitted_at timestamptz,
    external_id  text,  -- NCMEC's report id, the Transparency Database's uuid
    UNIQUE (activity_row, kind)
);

-- The key that seals the review UI's session cookies, shared by every process on this
-- database (a login on one is valid on all).
CREATE TABLE ui_secret (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
