-- The events table of the ingest contract. Unique on (event_id, time): a redelivered event is
-- stored once. On a hypertable every unique index must include the partitioning column `time`.
CREATE TABLE events (
    time        timestamptz NOT NULL,
    event_id    uuid        NOT NULL,
    name        text        NOT NULL,
    source      text        NOT NULL,
    device_id   text,
    session_id  text,
    user_id     text,
    properties  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    sent_at     timestamptz,
    received_at timestamptz NOT NULL
);

CREATE UNIQUE INDEX events_event_id_time_key ON events (event_id, time);

-- A hypertable when TimescaleDB is installed; a plain table (the flusher logs a warning) otherwise.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('events', 'time', chunk_time_interval => INTERVAL '1 day');
    ELSE
        RAISE WARNING 'TimescaleDB is not installed: events stays a plain table';
    END IF;
END
$$;

CREATE INDEX events_name_time_idx ON events (name, time DESC);
CREATE INDEX events_source_time_idx ON events (source, time DESC);
