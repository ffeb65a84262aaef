-- A quarantined activity's body, headers, sender address and the details of its verdict
-- (media URLs, hashes) are kept encrypted in its evidence (relay/evidence.py). The row
-- keeps what the queue and "why was this held?" need, and evidence_id: where the rest
-- is. ActivityStore.quarantine clears the copy in the transaction that records the
-- evidence. (Since then, the comment of evidence.activity_row in 0003 no longer holds:
-- the row keeps no bytes and no headers.)
ALTER TABLE activity ALTER COLUMN body DROP NOT NULL;
ALTER TABLE activity ALTER COLUMN headers DROP NOT NULL;
ALTER TABLE activity ADD COLUMN evidence_id bigint REFERENCES evidence (id);
-- Only a row whose evidence holds them may lose its bytes and headers. NOT VALID: the
-- rows already there all have them, and upgrading should not scan the table.
ALTER TABLE activity ADD CONSTRAINT activity_bytes_or_evidence
    CHECK ((body IS NOT NULL AND headers IS NOT NULL) OR evidence_id IS NOT NULL) NOT VALID;

-- Rows quarantined before this migration: their evidence was sealed and recorded then,
-- with the same facts; clear their copy now. A row cancelled while its quarantine was
-- being sealed is named by its evidence too. Any other row evidence names (its lease
-- lost meanwhile) only gets the pointer: it may still have to be delivered.
UPDATE activity AS a SET
    evidence_id = e.id,
    body = CASE WHEN a.state IN ('quarantined', 'cancelled') THEN NULL ELSE a.body END,
    headers = CASE WHEN a.state IN ('quarantined', 'cancelled') THEN NULL ELSE a.headers END,
    remote = CASE WHEN a.state IN ('quarantined', 'cancelled') THEN NULL ELSE a.remote END,
    -- As relay.store.activities.pointer_verdict: action, rule, timings, each signal's
    -- kind and source, the evidence signal whole.
    verdict = CASE WHEN a.state = 'quarantined' AND a.verdict IS NOT NULL THEN
        jsonb_build_object(
            'action', a.verdict -> 'action',
            'rule', a.verdict -> 'rule',
            'signals', coalesce(
                (SELECT jsonb_agg(
                            CASE WHEN s ->> 'kind' = 'evidence' THEN s
                                 ELSE jsonb_build_object('kind', s -> 'kind',
                                                         'source', s -> 'source',
                                                         'detail', '{}'::jsonb)
                            END ORDER BY n)
                 FROM jsonb_array_elements(
                          CASE WHEN jsonb_typeof(a.verdict -> 'signals') = 'array'
                               THEN a.verdict -> 'signals' ELSE '[]'::jsonb END
                      ) WITH ORDINALITY AS t (s, n)),
                '[]'::jsonb),
            'timings', coalesce(a.verdict -> 'timings', '{}'::jsonb),
            'evidence_id', e.id)
        ELSE a.verdict END
FROM (SELECT activity_row, max(id) AS id FROM evidence
      WHERE activity_row IS NOT NULL GROUP BY activity_row) AS e
WHERE a.id = e.activity_row;
