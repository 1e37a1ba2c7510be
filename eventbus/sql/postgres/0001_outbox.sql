-- eventbus PostgreSQL outbox, layout version 1.
--
-- The backend runs this itself at start (under an advisory lock, so several
-- processes starting at once are safe, and idempotently). Teams that run
-- their own migrations apply it themselves: replace {schema} with the
-- schema the outbox is configured with (default `eventbus`), then record
-- the version: INSERT INTO {schema}.migrations (version) VALUES (1).

CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The cluster the cursors were written on. Transaction ids start over after
-- a dump and restore, and a reader comparing them would then skip events:
-- the backend refuses to start when this changes.
CREATE TABLE IF NOT EXISTS {schema}.cluster (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    system_identifier text NOT NULL
);

-- Events, read in (tx_id, position) order and only below the oldest
-- transaction still running, so a transaction that commits late is never
-- skipped.
CREATE TABLE IF NOT EXISTS {schema}.events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id uuid NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    payload jsonb NOT NULL,
    appended_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_read ON {schema}.events (tx_id, position);

-- One row per subscription: the last finished event, and which process
-- holds the subscription until when. A subscription that started from
-- "now" keeps the snapshot it started at: it reads only what that snapshot
-- did not see, so an event committed just before the start is not
-- delivered and one still being written at the start is.
CREATE TABLE IF NOT EXISTS {schema}.cursors (
    subscription text PRIMARY KEY,
    tx_id xid8 NOT NULL,
    position bigint NOT NULL,
    start_snapshot pg_snapshot,
    owner uuid,
    lease_until timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events a subscription could not decode, set aside so the stream goes on.
CREATE TABLE IF NOT EXISTS {schema}.quarantine (
    subscription text NOT NULL,
    position bigint NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    payload jsonb NOT NULL,
    reason text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, position)
);

-- Retry schedules of events that failed and wait for their next attempt,
-- by subscription and the subscription's position of the event
-- (transaction id << 24 | rank in the transaction), so the process that
-- takes a subscription over resumes them.
CREATE TABLE IF NOT EXISTS {schema}.retries (
    subscription text NOT NULL,
    position bigint NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    first_failed_at timestamptz NOT NULL,
    PRIMARY KEY (subscription, position)
);

-- Dead letters: any process lists them and asks for a replay, which the
-- process holding the subscription runs.
CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    payload jsonb NOT NULL,
    errors jsonb NOT NULL,
    attempts integer NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at timestamptz NOT NULL,
    replay_requested_at timestamptz
);
CREATE INDEX IF NOT EXISTS dead_letters_subscription ON {schema}.dead_letters (subscription, id);
