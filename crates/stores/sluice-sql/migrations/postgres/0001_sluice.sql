-- Sluice's tables on PostgreSQL, version 1. Times are milliseconds since the Unix epoch
-- (BIGINT), read from the database's clock, so consumers on hosts with skewed clocks agree.
-- Applied by `sluice_sql::migrate` (its own version table, `sluice_schema_migrations`);
-- copy it into your own migration tool if you prefer, keeping the table names.

-- Idempotency store: a live claim (token set) or a done marker (token NULL) per
-- (subscription, message id), until expires_at.
CREATE TABLE IF NOT EXISTS sluice_idempotency (
    subscription TEXT   NOT NULL,
    message_id   TEXT   NOT NULL,
    token        TEXT,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (subscription, message_id)
);
CREATE INDEX IF NOT EXISTS sluice_idempotency_expires ON sluice_idempotency (expires_at);

-- Claims of emulated dedup windows, per (topic, message id): pending (token set) while the
-- publish is under way, confirmed (token NULL) until the window ends.
CREATE TABLE IF NOT EXISTS sluice_dedup (
    topic      TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    token      TEXT,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (topic, message_id)
);
CREATE INDEX IF NOT EXISTS sluice_dedup_expires ON sluice_dedup (expires_at);

-- Transactional inbox: one row per handled (subscription, message id), written in the
-- handler's own transaction; removed after the idempotency TTL by the cleanup task.
CREATE TABLE IF NOT EXISTS sluice_inbox (
    subscription TEXT   NOT NULL,
    message_id   TEXT   NOT NULL,
    handled_at   BIGINT NOT NULL,
    PRIMARY KEY (subscription, message_id)
);
CREATE INDEX IF NOT EXISTS sluice_inbox_handled ON sluice_inbox (handled_at);

-- Transactional outbox: messages written in the producer's transaction, published in seq
-- order by the relay, which sets sent_at. A row that can never be published (undecodable,
-- too large for the backend, an invalid name) is parked: parked_at and error are set, the
-- relay goes on, and the row stays until someone fixes it (`SET parked_at = NULL`).
CREATE TABLE IF NOT EXISTS sluice_outbox (
    seq          BIGSERIAL PRIMARY KEY,
    topic        TEXT   NOT NULL,
    message_id   TEXT   NOT NULL,
    message_type TEXT,
    routing_key  TEXT,
    ordering_key TEXT,
    content_type TEXT,
    headers      TEXT   NOT NULL,
    payload      BYTEA  NOT NULL,
    deliver_at   BIGINT,
    created_at   BIGINT NOT NULL,
    sent_at      BIGINT,
    parked_at    BIGINT,
    error        TEXT
);
CREATE INDEX IF NOT EXISTS sluice_outbox_unsent ON sluice_outbox (seq)
    WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX IF NOT EXISTS sluice_outbox_sent ON sluice_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- The relay's lease: one relay publishes at a time per outbox table; the others wait for the
-- lease to be given back or to expire (a relay that died).
CREATE TABLE IF NOT EXISTS sluice_outbox_relay (
    id         INTEGER PRIMARY KEY,
    owner      TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
