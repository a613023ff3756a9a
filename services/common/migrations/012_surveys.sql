-- Survey links (services/ingest/adapters/surveys.py): which surveys were answered, so that a link is
-- answered once. Nothing personal: the survey id is a keyed digest of what the survey rates (kind,
-- channel, touchpoint, agent), the link's content travels sealed in its own token. A row is written
-- in the same transaction that publishes survey.answered and committed only once that event is
-- durable. Not a projection: it is not rebuilt from the log, and `crm replay` must keep it.
CREATE TABLE survey_response (
    survey_id   text PRIMARY KEY,
    answered_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL  -- the answered link's expiry
);
