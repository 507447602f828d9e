-- Liveness is heartbeats (pushed by the worker) or successful GET /health probes (pulled by
-- the gateway), whichever is later.
ALTER TABLE workers ADD COLUMN last_probe_ok_at BIGINT;
ALTER TABLE workers ADD COLUMN probe_failures INTEGER NOT NULL DEFAULT 0;
CREATE INDEX workers_status_idx ON workers (status);
