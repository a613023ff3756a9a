-- Positions consumed by each processor, stored in the same transaction as the read model they fed.
CREATE TABLE processor_offsets (
    consumer    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Identity graph: private state of the identity-resolution stage.
CREATE TABLE identity_identifier (
    key         text PRIMARY KEY,             -- kind:value, normalized
    kind        text NOT NULL,
    customer_id text NOT NULL,                -- always a live (not merged) customer
    first_seen  timestamptz NOT NULL          -- earliest event time it was seen at
);
CREATE INDEX identity_identifier_customer ON identity_identifier (customer_id);

CREATE TABLE identity_customer (
    customer_id text PRIMARY KEY,
    anchor_time timestamptz NOT NULL,
    anchor_key  text NOT NULL,
    merged_into text,                         -- set when this id became an alias
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX identity_customer_merged_into ON identity_customer (merged_into);

CREATE TABLE identity_merge (
    id          bigserial PRIMARY KEY,
    survivor    text NOT NULL,
    alias       text NOT NULL,
    event_key   text NOT NULL,
    event_id    text NOT NULL,
    identifier  text NOT NULL,
    rule        text NOT NULL,
    event_time  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (alias, survivor, event_key)
);

-- The unified customer view (read model), fed from crm.customer-events.
CREATE TABLE customer_view (
    customer_id   text PRIMARY KEY,
    state         jsonb NOT NULL,
    display_name  text,
    event_count   int NOT NULL,
    first_seen_at timestamptz,
    last_event_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customer_view_identifier (
    key         text PRIMARY KEY,
    kind        text NOT NULL,
    customer_id text NOT NULL
);
CREATE INDEX customer_view_identifier_customer ON customer_view_identifier (customer_id);

-- What each customer id the identity stage handed out resolves to. One row per id named in a
-- merge marker, last-writer-wins on the marker's sequence number, so markers arriving out of
-- order (they travel on different partitions) converge to the identity graph's final state.
CREATE TABLE customer_view_alias (
    alias       text PRIMARY KEY,
    survivor    text NOT NULL,                -- the latest marker's word: the id it merged into (itself when live)
    seq         bigint NOT NULL,              -- that marker's sequence number
    resolved    text NOT NULL,                -- the live customer at the end of the chain
    merged_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_view_alias_survivor ON customer_view_alias (survivor);
CREATE INDEX customer_view_alias_resolved ON customer_view_alias (resolved);

-- Every merge marker seen, overtaken or not: the explanation of how a customer came together
-- (an alias row's seq names the merge that set it).
CREATE TABLE customer_view_merge (
    seq         bigint PRIMARY KEY,
    survivor    text NOT NULL,
    alias       text NOT NULL,
    event_id    text NOT NULL,
    identifier  text NOT NULL,
    rule        text NOT NULL,
    event_time  timestamptz NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_view_merge_survivor ON customer_view_merge (survivor);
CREATE INDEX customer_view_merge_alias ON customer_view_merge (alias);

-- Search terms (lower-cased name, company and each of their words) for prefix search in any script.
CREATE TABLE customer_view_search (
    term        text NOT NULL,
    customer_id text NOT NULL,
    PRIMARY KEY (term, customer_id)
);
CREATE INDEX customer_view_search_prefix ON customer_view_search (term text_pattern_ops, customer_id);
CREATE INDEX customer_view_search_customer ON customer_view_search (customer_id);

-- One row per applied event: the timeline, and the exactly-once guard (primary key = source+id).
CREATE TABLE customer_timeline (
    event_key   text PRIMARY KEY,
    customer_id text NOT NULL,                -- the live customer that owns the event now
    origin_customer_id text NOT NULL,         -- the customer the identity stage resolved it to
    identifiers text[] NOT NULL,
    event_time  timestamptz NOT NULL,
    event_id    text NOT NULL,
    source      text NOT NULL,
    type        text NOT NULL,
    channel     text NOT NULL,
    summary     text NOT NULL,
    data        jsonb NOT NULL
);
CREATE INDEX customer_timeline_order ON customer_timeline (customer_id, event_time, event_key);
CREATE INDEX customer_timeline_origin ON customer_timeline (origin_customer_id);
