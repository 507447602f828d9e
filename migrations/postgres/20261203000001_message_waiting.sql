-- Why a PENDING message waits (issue 16): the delivery consumer records its last failed
-- attempt's reason (a code and the words) and when it tries next; the attempts column counts.
ALTER TABLE messages ADD COLUMN waiting_reason TEXT;
ALTER TABLE messages ADD COLUMN waiting_detail TEXT;
ALTER TABLE messages ADD COLUMN next_attempt_at BIGINT;
