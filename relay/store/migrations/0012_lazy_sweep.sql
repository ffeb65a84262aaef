-- Lazy checking's sweep: rows handed on before their check ([hold] lazy) whose check was
-- never recorded (a process stopped between the two) are found by this small index, not
-- by a scan of every activity kept. The rule's text is relay.verdict.LAZY.
CREATE INDEX activity_unchecked ON activity (decided_at)
    WHERE checked_after IS NULL AND verdict ->> 'rule' = 'lazy: delivered before its check';
