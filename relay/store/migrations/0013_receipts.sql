-- Moderation receipts (issue 13): what Sluice published, who follows it, and what peers
-- sent it (relay/store/receipts.py).
--
-- ``receipt``: each receipt Sluice issued, signed, as served at its id (its URL) and in
-- the collection, newest first. ``activity_id`` is the held activity it was about, while
-- that row is kept: retention deletes finished activities, the receipt outlives them.
CREATE TABLE receipt (
    id          text PRIMARY KEY,
    published   timestamptz NOT NULL,
    document    jsonb NOT NULL,
    activity_id bigint REFERENCES activity (id) ON DELETE SET NULL,
    category    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The collection's pages: keyset paging on (published, id), newest first.
CREATE INDEX receipt_newest ON receipt (published DESC, id DESC);
CREATE INDEX receipt_activity ON receipt (activity_id);

-- Peers whose Follow of Sluice's actor was accepted: receipts are pushed to their
-- inboxes (the shared inbox when they have one).
CREATE TABLE follower (
    actor        text PRIMARY KEY,
    inbox        text NOT NULL,
    shared_inbox text,
    follow_id    text,
    accepted_at  timestamptz NOT NULL DEFAULT now()
);

-- Receipts peers sent, as received: the id guards against replay (a receipt is judged
-- once); ``honoured`` and ``reason`` are the trust judge's decision.
CREATE TABLE received_receipt (
    id          text PRIMARY KEY,
    peer        text NOT NULL,
    document    jsonb NOT NULL,
    honoured    boolean NOT NULL,
    reason      text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX received_receipt_peer ON received_receipt (peer, received_at);
