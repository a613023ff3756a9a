-- Dead letters re-driven by `crm deadletter redrive` (services/deadletters.py): one row per record of
-- crm.deadletter re-driven, keyed by its position there, so a dead letter (and any other dead letter
-- of the same source record) is re-driven once. The row is written after Kafka acknowledged the
-- re-published record (acks=all): a crash in between leaves no row and the next redrive publishes
-- the same bytes again, which the processors deduplicate (same event ids). Whether the re-driven
-- record then succeeded is on the log: if it failed again, it is a new dead letter whose
-- crm-redrive-of header names this one.

CREATE TABLE deadletter_redrive (
    deadletter_partition int NOT NULL,
    deadletter_offset    bigint NOT NULL,
    stage                text NOT NULL,
    kind                 text NOT NULL,
    source_topic         text NOT NULL,           -- where the record had been read, and where it went again
    source_partition     int NOT NULL,
    source_offset        bigint NOT NULL,
    target_partition     int NOT NULL,            -- its new position on source_topic
    target_offset        bigint NOT NULL,
    status               text NOT NULL DEFAULT 'published'
                         CHECK (status IN ('published')),  -- acknowledged by Kafka
    redriven_at          timestamptz NOT NULL DEFAULT now(),
    redriven_by          text NOT NULL DEFAULT '',           -- the operator's login
    PRIMARY KEY (deadletter_partition, deadletter_offset)
);

-- a record dead-lettered twice (its batch ran again after a crash) is re-driven once
CREATE INDEX deadletter_redrive_source ON deadletter_redrive (source_topic, source_partition, source_offset);
