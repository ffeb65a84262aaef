-- Deliveries: the instance's own activities, posted through the outbound door to
-- remote inboxes, share the durable hold with inbound ones (same verdicts, evidence,
-- retries, dead letters). ``destination`` is the full URL a delivery goes to; NULL is
-- an inbound activity, delivered to the instance at ``target`` as before. Per-object
-- ordering and cancellation hold within one destination: one slow remote inbox does
-- not hold back the same activity's delivery to the others.
ALTER TABLE activity ADD COLUMN destination text;
