-- Customer state and its feed (issue 5).

-- The latest snapshot of each customer id ever seen, as published on crm.customer-state. A customer
-- merged away (or erased) keeps its row with live = false, so its version keeps growing if it is
-- ever revived and downstream consumers can always tell newer from older.
CREATE TABLE customer_state (
    customer_id    text PRIMARY KEY,
    version        bigint      NOT NULL,
    live           boolean     NOT NULL,
    snapshot       jsonb,                    -- null when not live
    as_of          timestamptz NOT NULL,     -- evaluated at (event time, or the clock tick)
    next_review_at timestamptz,              -- when time alone could change the state
    lifecycle      text,
    tier           text,
    segments       text[]      NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_state_review ON customer_state (next_review_at) WHERE live AND next_review_at IS NOT NULL;
CREATE INDEX customer_state_lifecycle ON customer_state (lifecycle) WHERE live;
CREATE INDEX customer_state_segments ON customer_state USING gin (segments) WHERE live;

-- The transactional outbox of the feed: written in the same transaction as customer_state, relayed
-- to Kafka by one relay at a time inside Kafka transactions (services/processors/feed_relay.py).
-- `batch` is set before a relay batch is sent; the relay's committed consumer-group offset (written in
-- the same Kafka transaction) says whether an in-doubt batch made it, so nothing is sent twice.
CREATE TABLE feed_outbox (
    seq        bigserial PRIMARY KEY,
    batch      bigint,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    value      bytea,                        -- null: a tombstone
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feed_outbox_batch ON feed_outbox (batch) WHERE batch IS NOT NULL;
CREATE SEQUENCE feed_relay_batch;
