-- The operations dashboard (services/api/routes/session.py, services/api/routes/ops.py).

-- An operator of the dashboard. The password is kept as a salted scrypt hash
-- (scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>), never in the clear.
CREATE TABLE operator (
    username      text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT '',
    disabled_at   timestamptz,
    last_sign_in  timestamptz
);

-- A signed-in operator holds a session: an API key of read scopes only that expires, kept by the
-- browser as an HttpOnly cookie (the page's script never sees it). Other keys never expire.
ALTER TABLE api_key ADD COLUMN expires_at timestamptz;
ALTER TABLE api_key ADD COLUMN operator text;
CREATE INDEX api_key_expires ON api_key (expires_at) WHERE expires_at IS NOT NULL;

-- The Kafka timestamp of the newest record each stage applied (the projections' freshness), set
-- with the offset in the read model's transaction.
ALTER TABLE processor_offsets ADD COLUMN last_record_at timestamptz;
