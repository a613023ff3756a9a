-- Identity resolution from the evidence, with guards and unlinking (issue 3).
--
-- The identity graph of 001 kept only the union of identifiers; the guarded resolver needs the
-- evidence itself, which 001 did not store, so a graph built by 001 cannot be carried over.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM identity_identifier) OR EXISTS (SELECT 1 FROM customer_timeline) THEN
        RAISE EXCEPTION 'this database holds an identity graph built before evidence-based resolution '
                        '(migration 001); it cannot be upgraded in place. Drop the database (for the demo: '
                        'make clean) and run the processors again from the start of the topics.';
    END IF;
END $$;

-- The graph's version: bumped by every batch that changes which customer an identifier belongs
-- to. Resolved events and identity markers carry it; projections keep the word of the highest.
CREATE TABLE identity_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO identity_state (version) VALUES (0);

-- Connected components of the evidence (identifiers joined by any link or unlink, accepted or
-- not). Evidence only accumulates, so components only ever join; a batch re-resolves just the
-- components its new evidence touches.
CREATE SEQUENCE identity_component_seq;
ALTER TABLE identity_identifier
    ADD COLUMN component bigint NOT NULL,
    ADD COLUMN version   bigint NOT NULL;     -- graph version at which customer_id was last set
CREATE INDEX identity_identifier_component ON identity_identifier (component);

-- The evidence: per distinct statement (these identifiers are / are not one person), the
-- earliest event that made it. Later events saying the same thing cannot change the outcome.
CREATE TABLE identity_link (
    link_key    text PRIMARY KEY,
    identifiers text[] NOT NULL,
    unlink      boolean NOT NULL,
    event_time  timestamptz NOT NULL,
    event_key   text NOT NULL,
    event_id    text NOT NULL,
    type        text NOT NULL,
    component   bigint NOT NULL
);
CREATE INDEX identity_link_component ON identity_link (component);

-- The log of merges and splits, each with its cause; its id is the change's sequence number.
ALTER TABLE identity_merge RENAME TO identity_change;
ALTER TABLE identity_change RENAME COLUMN survivor TO target;
ALTER TABLE identity_change RENAME COLUMN alias TO source;
ALTER TABLE identity_change DROP CONSTRAINT identity_merge_alias_survivor_event_key_key;
ALTER TABLE identity_change
    ADD COLUMN kind        text NOT NULL CHECK (kind IN ('merged', 'unmerged')),
    ADD COLUMN identifiers text[] NOT NULL,
    ADD COLUMN version     bigint NOT NULL;
CREATE INDEX identity_change_target ON identity_change (target);
CREATE INDEX identity_change_source ON identity_change (source);

-- The view side. Each timeline row belongs to the customer of its home identifier (the event's
-- strongest); the identifier map says, per identifier, which customer as of which graph version.
ALTER TABLE customer_timeline
    DROP COLUMN origin_customer_id,
    ADD COLUMN home    text NOT NULL,
    ADD COLUMN refused text[] NOT NULL DEFAULT '{}';
CREATE INDEX customer_timeline_home ON customer_timeline (home);

ALTER TABLE customer_view_identifier ADD COLUMN version bigint NOT NULL;

-- Ids merged away, answered by their survivor (last-writer-wins on the graph version). A split
-- brings an id back to life: an id with a view of its own is never read through this table.
DROP TABLE customer_view_alias;
CREATE TABLE customer_view_alias (
    alias     text PRIMARY KEY,
    survivor  text NOT NULL,
    version   bigint NOT NULL,
    merged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_view_alias_survivor ON customer_view_alias (survivor);

-- Every merge and split the view has heard of, with its cause.
DROP TABLE customer_view_merge;
CREATE TABLE customer_view_change (
    seq         bigint NOT NULL,               -- identity_change.id
    kind        text NOT NULL,
    target      text NOT NULL,
    source      text NOT NULL,
    identifiers text[] NOT NULL,
    event_id    text NOT NULL,
    identifier  text NOT NULL,
    rule        text NOT NULL,
    event_time  timestamptz NOT NULL,
    version     bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seq, source, target)          -- seq alone would do for one identity graph
);
CREATE INDEX customer_view_change_target ON customer_view_change (target);
CREATE INDEX customer_view_change_source ON customer_view_change (source);
