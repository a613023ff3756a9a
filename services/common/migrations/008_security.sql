-- Security: the API keys the collector and the query API accept, and the append-only audit log of
-- who looked at or changed what (services/common/apikeys.py, services/common/audit.py).

-- An API key. The key itself (crm_sk_<prefix>_<secret>) is shown once when it is created and never
-- stored: only its SHA-256 hash is. The prefix is public and names the key in lists and logs.
CREATE TABLE api_key (
    id              text PRIMARY KEY,                    -- key_<32 hex digits>
    name            text NOT NULL,
    prefix          text NOT NULL UNIQUE,                -- the key's public part
    kind            text NOT NULL CHECK (kind IN ('secret', 'publishable')),
    secret_hash     text NOT NULL,                       -- sha256 hex of the whole key
    scopes          text[] NOT NULL,
    allowed_origins text[] NOT NULL DEFAULT '{}',        -- publishable keys: scheme://host[:port] accepted
    rate_per_s      double precision CHECK (rate_per_s > 0),   -- null: CRM_RATE_LIMIT_PER_S
    burst           integer CHECK (burst >= 1),                -- null: CRM_RATE_LIMIT_BURST
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL DEFAULT '',            -- cli:<login> or the admin key that made it
    revoked_at      timestamptz,
    revoked_by      text,
    last_used_at    timestamptz,                         -- noted at most once a minute
    -- a publishable key is public: write-only, and only from the origins it names
    CHECK (kind = 'secret' OR (scopes = ARRAY['events:write'] AND cardinality(allowed_origins) > 0))
);

-- Who did what: customer lookups, unmerges, key and webhook changes, erasures and exports. Append-only:
-- a trigger refuses UPDATE, DELETE and TRUNCATE (a guard against mistakes and compromised application
-- code; the table's owner could still drop the trigger, so the database role is the last line).
-- It holds customer ids, never identifier values (an append-only table cannot honour an erasure).
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_key_id text,                                   -- the API key (no foreign key: the log outlives anything)
    actor_name   text NOT NULL,                          -- the key's prefix and name, or cli:<login>
    action       text NOT NULL,                          -- customer.read, key.create, webhook.update, ...
    target       text NOT NULL DEFAULT '',               -- a customer id, key id, subscription id, ...
    details      jsonb NOT NULL DEFAULT '{}',
    request_ip   inet
);
CREATE INDEX audit_log_at ON audit_log (at, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE INDEX audit_log_actor ON audit_log (actor_key_id, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
