-- Real-time satisfaction indicators (issue 4): per-minute sums of additive measures per slice.
--
-- A slice is one dimension value: ('all', ''), ('channel', 'phone'), ('queue', 'aftersales'),
-- ('agent', 'agent-li'), ('segment', 'repeat'). Indicator values are ratios of sums
-- (projections/indicators.py), so any window is a sum of minutes.

-- The stored history, per minute of event time. `late` rows hold events that arrived later than the
-- configured lateness: they are history (the series shows them) but not part of the live windows.
CREATE TABLE indicator_minute (
    dim    text        NOT NULL,
    member text        NOT NULL,
    minute timestamptz NOT NULL,
    late   boolean     NOT NULL,
    surveys_sent           double precision NOT NULL DEFAULT 0,
    survey_answers         double precision NOT NULL DEFAULT 0,
    csat_answers           double precision NOT NULL DEFAULT 0,
    csat_satisfied         double precision NOT NULL DEFAULT 0,
    nps_answers            double precision NOT NULL DEFAULT 0,
    nps_promoters          double precision NOT NULL DEFAULT 0,
    nps_detractors         double precision NOT NULL DEFAULT 0,
    first_responses        double precision NOT NULL DEFAULT 0,
    first_response_s       double precision NOT NULL DEFAULT 0,
    first_response_bh_s    double precision NOT NULL DEFAULT 0,
    resolutions            double precision NOT NULL DEFAULT 0,
    resolution_s           double precision NOT NULL DEFAULT 0,
    resolution_bh_s        double precision NOT NULL DEFAULT 0,
    calls_offered          double precision NOT NULL DEFAULT 0,
    calls_answered         double precision NOT NULL DEFAULT 0,
    calls_abandoned        double precision NOT NULL DEFAULT 0,
    answer_wait_s          double precision NOT NULL DEFAULT 0,
    answered_in_sl         double precision NOT NULL DEFAULT 0,
    calls_handled          double precision NOT NULL DEFAULT 0,
    handle_s               double precision NOT NULL DEFAULT 0,
    contacts               double precision NOT NULL DEFAULT 0,
    repeat_contacts        double precision NOT NULL DEFAULT 0,
    complaints             double precision NOT NULL DEFAULT 0,
    sentiment_texts        double precision NOT NULL DEFAULT 0,
    sentiment_sum          double precision NOT NULL DEFAULT 0,
    sentiment_negative     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (dim, member, minute, late)
);

-- The same sums per hour (live rows only), so a 7-day window adds up 168 rows, not 10,080.
CREATE TABLE indicator_hour (
    dim    text        NOT NULL,
    member text        NOT NULL,
    hour   timestamptz NOT NULL,
    surveys_sent           double precision NOT NULL DEFAULT 0,
    survey_answers         double precision NOT NULL DEFAULT 0,
    csat_answers           double precision NOT NULL DEFAULT 0,
    csat_satisfied         double precision NOT NULL DEFAULT 0,
    nps_answers            double precision NOT NULL DEFAULT 0,
    nps_promoters          double precision NOT NULL DEFAULT 0,
    nps_detractors         double precision NOT NULL DEFAULT 0,
    first_responses        double precision NOT NULL DEFAULT 0,
    first_response_s       double precision NOT NULL DEFAULT 0,
    first_response_bh_s    double precision NOT NULL DEFAULT 0,
    resolutions            double precision NOT NULL DEFAULT 0,
    resolution_s           double precision NOT NULL DEFAULT 0,
    resolution_bh_s        double precision NOT NULL DEFAULT 0,
    calls_offered          double precision NOT NULL DEFAULT 0,
    calls_answered         double precision NOT NULL DEFAULT 0,
    calls_abandoned        double precision NOT NULL DEFAULT 0,
    answer_wait_s          double precision NOT NULL DEFAULT 0,
    answered_in_sl         double precision NOT NULL DEFAULT 0,
    calls_handled          double precision NOT NULL DEFAULT 0,
    handle_s               double precision NOT NULL DEFAULT 0,
    contacts               double precision NOT NULL DEFAULT 0,
    repeat_contacts        double precision NOT NULL DEFAULT 0,
    complaints             double precision NOT NULL DEFAULT 0,
    sentiment_texts        double precision NOT NULL DEFAULT 0,
    sentiment_sum          double precision NOT NULL DEFAULT 0,
    sentiment_negative     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (dim, member, hour)
);

-- Every message of each email thread and ticket, sorted: the state first response and
-- resolution times are computed from, whatever order the messages arrived in.
CREATE TABLE indicator_thread (
    key        text PRIMARY KEY,
    state      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Threshold alerts: whether each rule fires on each slice, and since when.
CREATE TABLE indicator_alert (
    rule       text NOT NULL,
    dim        text NOT NULL,
    member     text NOT NULL,
    firing     boolean NOT NULL,
    since      timestamptz NOT NULL,
    value      double precision,
    PRIMARY KEY (rule, dim, member)
);

-- The customer's satisfaction index and at-risk flag, for lists of customers who are slipping.
ALTER TABLE customer_view
    ADD COLUMN satisfaction_index real,
    ADD COLUMN at_risk boolean NOT NULL DEFAULT false,
    ADD COLUMN at_risk_reasons text[] NOT NULL DEFAULT '{}';
CREATE INDEX customer_view_at_risk ON customer_view (satisfaction_index, customer_id) WHERE at_risk;
