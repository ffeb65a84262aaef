-- Inbound activities: the durable hold. One row per accepted inbox POST.
CREATE TABLE activity (
    id              bigserial PRIMARY KEY,
    ap_id           text,                 -- the activity's id (NULL for transient ones)
    type            text NOT NULL,
    actor           text NOT NULL,
    signer          text,                 -- key owner that signed the request (NULL: unverified)
    key_id          text,
    object_id       text,                 -- ordering key: later activities on it wait behind pending ones
    state           text NOT NULL DEFAULT 'received',
    target          text NOT NULL,        -- path and query the sender posted to
    headers         jsonb NOT NULL,       -- [[name, value], ...] forwarded unchanged
    body            bytea NOT NULL,       -- exact bytes, forwarded unchanged
    remote          text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    deadline        timestamptz NOT NULL, -- retry 5xx until then, then dead-letter
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    owner           text,                 -- lease: which worker holds the row …
    locked_until    timestamptz,          -- … and until when
    verdict         jsonb,
    last_status     integer,
    last_error      text,
    decided_at      timestamptz,
    finished_at     timestamptz
);

-- Work to pick up: rows still in the hold or waiting for delivery.
CREATE INDEX activity_work ON activity (next_attempt_at, id)
    WHERE state IN ('received', 'queued');
-- Per-object ordering and cancellation look-ups.
CREATE INDEX activity_object ON activity (object_id, id)
    WHERE state IN ('received', 'review', 'queued');
CREATE INDEX activity_ap_id ON activity (ap_id);
CREATE INDEX activity_dead ON activity (id) WHERE state = 'dead';

-- Duplicate suppression: an activity id seen within the window is stored once.
CREATE TABLE seen (
    key     text PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX seen_at ON seen (seen_at);
