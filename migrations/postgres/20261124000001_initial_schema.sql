-- wa-gateway initial schema (PostgreSQL). Keep in step with ../sqlite/ of the same name.
-- Conventions shared by both backends so one repository layer serves both:
--   * identifiers are TEXT (UUIDv7 strings, or the worker's / customer's own ids);
--   * instants are BIGINT milliseconds since the Unix epoch;
--   * flags are nullable instants (`revoked_at`, `deactivated_at`), never booleans;
--   * enumerations are TEXT guarded by CHECK constraints.

CREATE TABLE users (
    id                  TEXT PRIMARY KEY NOT NULL,
    email               TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    password_hash       TEXT NOT NULL,
    role                TEXT NOT NULL DEFAULT 'USER' CHECK (role IN ('USER', 'ADMINISTRATOR')),
    tier                TEXT NOT NULL DEFAULT 'BASIC' CHECK (tier IN ('BASIC', 'PRO', 'MAX')),
    deactivated_at      BIGINT,
    token_generation    BIGINT NOT NULL DEFAULT 0,
    last_login_at       BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX users_created_at_idx ON users (created_at);

CREATE TABLE refresh_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id    TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    expires_at   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE workers (
    id                 TEXT PRIMARY KEY NOT NULL,
    endpoint           TEXT NOT NULL UNIQUE,
    status             TEXT NOT NULL DEFAULT 'ONLINE' CHECK (status IN ('ONLINE', 'OFFLINE', 'MAINTENANCE')),
    max_sessions       INTEGER NOT NULL DEFAULT 50,
    description        TEXT,
    version            TEXT,
    environment        TEXT CHECK (environment IS NULL OR environment IN ('DEVELOPMENT', 'STAGING', 'TESTING', 'PRODUCTION')),
    cpu_usage          DOUBLE PRECISION,
    memory_usage       DOUBLE PRECISION,
    uptime_seconds     BIGINT,
    active_sessions    INTEGER NOT NULL DEFAULT 0,
    last_heartbeat_at  BIGINT,
    registered_at      BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY NOT NULL CHECK (length(id) BETWEEN 3 AND 50),
    user_id           TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'INIT'
                      CHECK (status IN ('INIT', 'QR_REQUIRED', 'CONNECTED', 'DISCONNECTED', 'RECONNECTING', 'ERROR')),
    worker_id         TEXT REFERENCES workers (id) ON DELETE SET NULL,
    epoch             BIGINT NOT NULL DEFAULT 0,
    phone_number      TEXT,
    display_name      TEXT,
    qr_code           TEXT,
    qr_updated_at     BIGINT,
    logged_out_at     BIGINT,
    last_activity_at  BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    deleted_at        BIGINT
);
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at);
CREATE INDEX sessions_worker_idx ON sessions (worker_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id    TEXT,
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at);

CREATE TABLE messages (
    id                 TEXT PRIMARY KEY NOT NULL,
    user_id            TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id         TEXT NOT NULL,
    direction          TEXT NOT NULL CHECK (direction IN ('INBOUND', 'OUTBOUND')),
    message_type       TEXT NOT NULL
                       CHECK (message_type IN ('TEXT', 'IMAGE', 'DOCUMENT', 'AUDIO', 'VIDEO', 'STICKER', 'LOCATION',
                                               'CONTACT', 'LINK', 'POLL', 'REACTION', 'SEEN', 'TYPING_START', 'TYPING_STOP')),
    remote_jid         TEXT NOT NULL,
    content            TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'DELIVERED', 'READ', 'FAILED')),
    worker_message_id  TEXT,
    idempotency_key    TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    error_message      TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    sent_at            BIGINT,
    delivered_at       BIGINT,
    read_at            BIGINT,
    failed_at          BIGINT
);
CREATE INDEX messages_user_idx ON messages (user_id, created_at, id);
CREATE INDEX messages_session_idx ON messages (session_id, created_at, id);
CREATE INDEX messages_worker_message_idx ON messages (worker_message_id);

CREATE TABLE message_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'DELIVERED', 'READ', 'FAILED')),
    detail      TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX message_events_message_idx ON message_events (message_id, at);

CREATE TABLE worker_metrics (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker_id        TEXT NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    cpu_usage        DOUBLE PRECISION,
    memory_usage     DOUBLE PRECISION,
    uptime_seconds   BIGINT,
    message_count    BIGINT,
    total_sessions   INTEGER,
    active_sessions  INTEGER,
    recorded_at      BIGINT NOT NULL
);
CREATE INDEX worker_metrics_worker_idx ON worker_metrics (worker_id, recorded_at);
CREATE INDEX worker_metrics_recorded_idx ON worker_metrics (recorded_at);

CREATE TABLE webhooks (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id   TEXT,
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL,
    events       TEXT NOT NULL,
    disabled_at  BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX webhooks_user_idx ON webhooks (user_id);

CREATE TABLE webhook_deliveries (
    id                TEXT PRIMARY KEY NOT NULL,
    webhook_id        TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type        TEXT NOT NULL,
    payload           TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED', 'RETRYING')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_status_code  INTEGER,
    last_error        TEXT,
    next_attempt_at   BIGINT,
    delivered_at      BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at);

CREATE TABLE system_logs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    level       TEXT NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARN', 'ERROR')),
    component   TEXT NOT NULL,
    message     TEXT NOT NULL,
    details     TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX system_logs_created_idx ON system_logs (created_at);

CREATE TABLE usage_records (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hour_start  BIGINT NOT NULL,
    messages    BIGINT NOT NULL DEFAULT 0,
    api_calls   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, hour_start)
);

CREATE TABLE idempotency_keys (
    user_id          TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    response_status  INTEGER NOT NULL,
    response_body    TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- The embedded partitioned log (used when KAFKA_BROKERS is unset): one row per record, offsets
-- dense per (topic, partition), and committed consumer-group positions.
CREATE TABLE log_records (
    topic         TEXT NOT NULL,
    partition_id  INTEGER NOT NULL,
    record_offset BIGINT NOT NULL,
    record_key    TEXT NOT NULL,
    record_value  BYTEA NOT NULL,
    appended_at   BIGINT NOT NULL,
    PRIMARY KEY (topic, partition_id, record_offset)
);

CREATE TABLE log_consumer_offsets (
    group_id          TEXT NOT NULL,
    topic             TEXT NOT NULL,
    partition_id      INTEGER NOT NULL,
    committed_offset  BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
);
