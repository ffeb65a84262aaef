-- Finished activities, by when they finished: what retention deletes (see
-- ActivityStore.prune_finished) without scanning the rows still in play.
CREATE INDEX activity_finished ON activity (finished_at)
    WHERE state IN ('delivered', 'refused', 'rejected', 'cancelled');
