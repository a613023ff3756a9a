-- Webhooks: subscriptions of downstream systems that do not speak Kafka (managed through the API,
-- /v1/webhooks), and the delivery log the crm-webhooks dispatchers keep while relaying
-- crm.customer-changes to them.

CREATE TABLE webhook_subscription (
    id                    text PRIMARY KEY,            -- wh_<32 hex digits>
    url                   text NOT NULL,
    event_types           text[],                      -- null: every change type
    segments              text[],                      -- null: no segment filter
    description           text NOT NULL DEFAULT '',
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,                        -- why the dispatcher disabled it (410 Gone)
    active_since          timestamptz NOT NULL DEFAULT now(),  -- changes published from then on match (creation, re-enabling)
    secret                text NOT NULL,               -- whsec_<base64 of 32 bytes>
    previous_secret       text,                        -- a rotated-out secret, still signed with ...
    previous_secret_until timestamptz,                 -- ... until then
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The change events that matched a subscription, with the exact body that is sent and signed.
CREATE TABLE webhook_event (
    event_id     text PRIMARY KEY,                     -- the CloudEvent id (stable per change)
    type         text NOT NULL,
    customer_id  text NOT NULL,
    sequence     bigint,
    body         bytea NOT NULL,
    published_at timestamptz NOT NULL,                 -- the Kafka record's timestamp
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One delivery per subscription and change event: a change consumed twice never makes a second one.
CREATE TABLE webhook_delivery (
    id               bigserial PRIMARY KEY,
    subscription_id  text NOT NULL REFERENCES webhook_subscription (id) ON DELETE CASCADE,
    event_id         text NOT NULL REFERENCES webhook_event (event_id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts         int NOT NULL DEFAULT 0,           -- every attempt made
    tries            int NOT NULL DEFAULT 0,           -- attempts of the current retry schedule (a manual retry resets it)
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_token      uuid,                             -- the dispatcher sending it now ...
    lease_until      timestamptz,                      -- ... has it until then
    last_status_code int,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (subscription_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_delivery_log ON webhook_delivery (subscription_id, id);
CREATE INDEX webhook_delivery_leased ON webhook_delivery (subscription_id) WHERE lease_token IS NOT NULL;

-- Every attempt to send a delivery.
CREATE TABLE webhook_attempt (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES webhook_delivery (id) ON DELETE CASCADE,
    attempt     int NOT NULL,                          -- 1 for the first
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    status_code int,                                   -- null: no HTTP answer (timeout, connection error)
    error       text,                                  -- null: delivered
    response    text,                                  -- the start of the receiver's answer
    dispatcher  text NOT NULL
);
CREATE INDEX webhook_attempt_delivery ON webhook_attempt (delivery_id, id);
