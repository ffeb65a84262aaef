-- Lazy checking ([hold] lazy = true): an activity is delivered at once and checked
-- after. checked_after is the verdict of that later check, recorded on the row without
-- changing its state (it is already with the instance); NULL: not checked after (the
-- ordinary hold, or a lazy check still to come). A quarantine-grade verdict keeps only
-- its outline here, as a quarantined row does: the details are in its evidence
-- (evidence_id).
ALTER TABLE activity ADD COLUMN checked_after jsonb;
