-- Refused links, explained (issue 25): which event, which identifier, which rule.
--
-- A link the resolver refused (a per-kind limit, an explicit unlink) is a fold of the evidence of
-- its component: the rows of a component are written again whenever it is resolved again (a late
-- event can turn a refusal into a link and back). A placeholder value (CRM_IDENTITY_BLOCKED) is
-- refused when the event is validated: one row per event and value, no component.
CREATE TABLE identity_refusal (
    event_key  text NOT NULL,
    event_id   text NOT NULL,
    event_time timestamptz NOT NULL,
    type       text NOT NULL,
    identifier text NOT NULL,          -- the identifier refused (kind:value; a blocked value as given)
    home       text NOT NULL,          -- the identifier the event stayed with
    rule       text NOT NULL,
    component  bigint,                 -- NULL: a blocked value
    PRIMARY KEY (event_key, identifier)
);
CREATE INDEX identity_refusal_identifier ON identity_refusal (identifier);
CREATE INDEX identity_refusal_home ON identity_refusal (home);
CREATE INDEX identity_refusal_component ON identity_refusal (component);

-- What an operator said when linking by hand (POST /v1/customers/{id}/merge): the rule named by
-- the merge it caused. Empty for every other statement.
ALTER TABLE identity_link ADD COLUMN note text NOT NULL DEFAULT '';
