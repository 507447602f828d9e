-- Customer webhook endpoints (issue 17). The signing secret is sealed (crypto::SecretBox), never
-- stored in clear; during a rotation the previous secret keeps signing until
-- previous_secret_until. events and session_ids are JSON arrays (session_ids NULL: every
-- session). disabled_at/disabled_reason: disabled by its owner, by a 410, or after failing
-- for days (failing_since: the first failure of the current run).
ALTER TABLE webhooks DROP COLUMN session_id;
ALTER TABLE webhooks ADD COLUMN session_ids TEXT;
ALTER TABLE webhooks ADD COLUMN description TEXT;
ALTER TABLE webhooks ADD COLUMN disabled_reason TEXT;
ALTER TABLE webhooks ADD COLUMN previous_secret TEXT;
ALTER TABLE webhooks ADD COLUMN previous_secret_until BIGINT;
ALTER TABLE webhooks ADD COLUMN failing_since BIGINT;
