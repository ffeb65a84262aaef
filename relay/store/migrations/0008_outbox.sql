-- The durable outbox (relay/outbox.py): side effects of verdicts (notify, later receipts,
-- reports) and periodic jobs, each run at least once by whichever process claims it.
-- ``key`` is the effect's idempotency key: a verdict recorded twice, or a schedule's
-- slot reached by two processes, adds one row. Rows are claimed with a lease
-- (owner, lease_until) like activities; a lease that runs out (a process killed
-- mid-effect) hands the row to the next runner. ``attempts`` counts claims.
CREATE TABLE effect (
    id bigserial PRIMARY KEY,
    key text NOT NULL UNIQUE,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL DEFAULT now(),
    owner text,
    lease_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz
);

-- Claiming: pending rows whose turn has come, oldest first.
CREATE INDEX effect_due ON effect (next_at, id) WHERE state = 'pending';
-- Listing dead letters (and done ones) for the admin.
CREATE INDEX effect_state ON effect (state, id);
