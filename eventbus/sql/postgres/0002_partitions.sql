-- eventbus PostgreSQL outbox, layout version 2: subscriptions split into
-- partitions that several processes share.
--
-- Apply after 0001, replacing {schema} as there, then record the version:
-- INSERT INTO {schema}.migrations (version) VALUES (2).

-- What an event is kept in order with: events of one key go to one
-- partition of every subscription, so one process at a time delivers them,
-- in order. Written by the outbox (the event's correlation id by default);
-- events written before this layout all count as key 0.
ALTER TABLE {schema}.events ADD COLUMN IF NOT EXISTS key_hash bigint NOT NULL DEFAULT 0;

-- One cursor and one lease per (subscription, partition). The subscription's
-- existing cursor becomes partition 0; a process configured with more
-- partitions re-bases the subscription at its first start.
ALTER TABLE {schema}.cursors ADD COLUMN IF NOT EXISTS partition integer NOT NULL DEFAULT 0;
ALTER TABLE {schema}.cursors DROP CONSTRAINT IF EXISTS cursors_pkey;
ALTER TABLE {schema}.cursors ADD PRIMARY KEY (subscription, partition);

-- The processes reading each subscription, seen within their lease: each
-- takes its share of the partitions, and gives up what is over it.
CREATE TABLE IF NOT EXISTS {schema}.members (
    subscription text NOT NULL,
    member uuid NOT NULL,
    seen_until timestamptz NOT NULL,
    PRIMARY KEY (subscription, member)
);
