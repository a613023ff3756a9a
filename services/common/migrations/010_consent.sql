-- Consent (issue 7): segments and webhook subscriptions declare the purpose they serve, and only
-- customers who consent to that purpose reach them (README: Consent).

-- What a subscription's receiver uses the changes for. "service" (serving the customer) needs no
-- consent; for the others a change is delivered only when its snapshot (data.state.profile.consent)
-- grants that purpose on at least one channel.
ALTER TABLE webhook_subscription
    ADD COLUMN purpose text NOT NULL DEFAULT 'service'
        CHECK (purpose IN ('service', 'marketing', 'analytics', 'profiling'));

-- The shipped rules now hold marketing segments to the customer's consent. Customers who are in a
-- segment now are looked at again by the next clock tick (instead of at their next event or
-- review), so a snapshot that lists them in a segment they no longer qualify for is corrected soon.
UPDATE customer_state SET next_review_at = now() WHERE live AND cardinality(segments) > 0;
