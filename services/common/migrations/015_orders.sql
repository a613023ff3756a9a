-- The order chain (issue 28): each order's state and status history, a fold of its order.* events
-- (projections/orders.py) kept by the view stage in the transaction that stores its offsets.
-- customer_id: the customer whose timeline holds the order's latest event; identity merges and
-- splits move it with the timeline rows.
CREATE TABLE customer_order (
    order_id     text PRIMARY KEY,
    customer_id  text NOT NULL,
    status       text,
    placed_at    timestamptz,
    last_event_at timestamptz,
    late         boolean,
    state        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_order_customer ON customer_order (customer_id, last_event_at DESC);

-- which timeline rows speak of an order: found again when identifiers move
CREATE INDEX customer_timeline_order_id ON customer_timeline ((data->>'order_id')) WHERE type LIKE 'order.%';
