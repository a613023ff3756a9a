-- What an outside security review asked for (README: Security and privacy).

-- A dashboard session made from an API key belongs to that key: it is listed with it and ends
-- when the key is revoked (an operator's session belongs to the operator: api_key.operator).
ALTER TABLE api_key ADD COLUMN session_of text REFERENCES api_key (id) ON DELETE CASCADE;
CREATE INDEX api_key_session_of ON api_key (session_of) WHERE session_of IS NOT NULL;

-- A subscription carries personal data (names, emails, phones, addresses in data.state.profile
-- and profile.changed) only when its creator may read it; the others get the changes without it.
-- Subscriptions made before this migration get none until someone allowed to turns it on.
ALTER TABLE webhook_subscription ADD COLUMN personal_data boolean NOT NULL DEFAULT false;
