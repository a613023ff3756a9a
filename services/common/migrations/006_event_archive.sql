-- The archive of every accepted event (issue 6): each touchpoint the identity stage consumed and
-- validated, byte for byte with its Kafka position, written in the same transaction as the identity
-- graph and the consumed offsets. With the topics' unlimited retention it makes the log complete
-- twice over, so `crm replay --source archive` can rebuild every projection even if the topic were lost.
CREATE TABLE event_archive (
    topic        text        NOT NULL,
    partition    int         NOT NULL,
    kafka_offset bigint      NOT NULL,
    event_key    text        NOT NULL,    -- CloudEvents source + id
    type         text        NOT NULL,
    event_time   timestamptz NOT NULL,
    key          bytea,
    value        bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '[]',  -- [[base64 name, base64 value], ...]
    record_time  timestamptz NOT NULL,    -- the Kafka timestamp (the receive time)
    archived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, kafka_offset)
);
CREATE INDEX event_archive_event ON event_archive (event_key);

-- One row per projection rebuild (`crm replay`): what was rebuilt from where, how far, and when it
-- was swapped in; the replaced tables stay in the schema named `retired` until dropped.
CREATE TABLE replay_run (
    id          bigserial PRIMARY KEY,
    scope       text        NOT NULL,
    source      text        NOT NULL,
    schema_name text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    swapped_at  timestamptz,
    retired     text,
    records     bigint      NOT NULL DEFAULT 0,
    report      jsonb
);
