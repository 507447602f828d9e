-- The SENT step of a message's timeline is read from messages.sent_at (as PENDING is read from
-- created_at): a worker's 2xx is recorded in one statement on the delivery's hot path, without a
-- timeline row. The SENT rows written before are the same facts twice.
DELETE FROM message_events WHERE status = 'SENT';
