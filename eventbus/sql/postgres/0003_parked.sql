-- eventbus PostgreSQL outbox, layout version 3: failed events parked until
-- their next attempt, so a failure does not hold its partition.
--
-- Apply after 0002, replacing {schema} as there, then record the version:
-- INSERT INTO {schema}.migrations (version) VALUES (3).

-- An event that failed and waits for its next attempt. Its subscription
-- counts it as finished and moves on; whichever process reads the
-- subscription claims it once it is due (claimed_until, and a new claim
-- number, so a process whose claim ran out changes nothing), runs it, and
-- then deletes it, parks it again with one attempt more, or dead-letters it.
-- The event is copied here, so retention may prune its row from events.
CREATE TABLE IF NOT EXISTS {schema}.parked (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    payload jsonb NOT NULL,
    errors jsonb NOT NULL,
    attempts integer NOT NULL,
    first_failed_at timestamptz NOT NULL,
    due_at timestamptz NOT NULL,
    claimed_until timestamptz,
    claim bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS parked_due ON {schema}.parked (subscription, due_at);
