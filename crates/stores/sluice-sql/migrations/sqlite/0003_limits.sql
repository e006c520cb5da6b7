-- Sluice's tables, version 3: the limiter (`LimiterStore`) of global rate limits and global
-- concurrency bounds, for workers on brokers that keep none (RabbitMQ, SQS, Kafka).
-- A rate limit is a token bucket: `tokens` as of `at_ms` (the database's clock, ms).
-- A bound's holders are rows of sluice_slots, each with the slots it holds and the end of
-- its lease; the bound's row of sluice_slot_bounds is what a call locks, so the calls on
-- one bound take turns.
CREATE TABLE IF NOT EXISTS sluice_limits (
    name   TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    at_ms  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sluice_slots (
    name     TEXT   NOT NULL,
    holder   TEXT   NOT NULL,
    held     BIGINT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (name, holder)
);
CREATE TABLE IF NOT EXISTS sluice_slot_bounds (
    name TEXT PRIMARY KEY
);
