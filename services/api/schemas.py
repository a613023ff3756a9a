"""Response models of the query API (kept apart from the stored rows)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from events.envelope import NUL_MESSAGE
from projections.indicators import WINDOWS


class RequestBody(BaseModel):
    """A request body: none of its text may hold U+0000 (PostgreSQL and the event log refuse it)."""

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if any(isinstance(v, str) and "\x00" in v for v in (value if isinstance(value, list) else [value])):
            raise ValueError(NUL_MESSAGE)
        return value


class IdentifierIn(RequestBody):
    kind: Literal["account_id", "email", "phone", "anonymous_id"]
    value: str = Field(min_length=1, max_length=254)


class Problem(BaseModel):
    error: str
    detail: Any | None = None


class FieldProblem(BaseModel):
    field: str = Field(description="where: path, query or body, then the parameter or the field's dotted path")
    message: str


class ValidationProblem(BaseModel):
    """A request of the wrong shape: each parameter or body field that is wrong, and why."""

    error: str
    detail: list[FieldProblem]


class StampedValue(BaseModel):
    value: Any
    at: str = Field(description="event time the value was observed at")
    event: str = Field(description="key of the event that set it")
    source: str = Field(description="channel or source of that event")


class Contact(BaseModel):
    at: str
    type: str
    channel: str


class Orders(BaseModel):
    count: int
    counts: dict[str, int] = Field(description="orders per currency")
    revenue: dict[str, str] = Field(description="gross order value per currency")
    average_order_value: dict[str, str] = Field(description="gross order value per order, per currency")
    refunds: int
    refunded: dict[str, str]
    net_revenue: dict[str, str]
    first_at: str | None
    last_at: str | None


class Ticket(BaseModel):
    status: str
    kind: str
    at: str


class RiskReason(BaseModel):
    code: Literal["low_csat", "detractor", "negative_sentiment", "repeat_contacts", "open_complaint"]
    detail: str = Field(description="the reason in English")
    value: float | str | None = Field(None, description="the figure behind it, for a page to word the reason in its "
                                                        "own language: the CSAT or NPS answer, the score, the number "
                                                        "of contacts, the complaint's ticket id")
    at: str = Field(description="event time of the touchpoint that raised it")
    event: str | None = Field(None, description="the touchpoint's key, when one touchpoint raised it")


class SentimentScore(BaseModel):
    at: str
    event: str
    value: float = Field(description="-1 (very negative) .. +1 (very positive)")


class Satisfaction(BaseModel):
    answers: int
    csat: StampedValue | None
    nps: StampedValue | None
    sentiment: list[SentimentScore] = Field(default_factory=list,
                                            description="scores of the latest texts the customer wrote")
    index: float | None = Field(None, description="satisfaction index 0-100 (None: nothing known yet)")
    components: dict[str, float | None] = Field(default_factory=dict,
                                                description="csat, nps and sentiment, each on 0-100")
    at_risk: bool = False
    reasons: list[RiskReason] = Field(default_factory=list, description="why the customer is at risk")


class CustomerOut(BaseModel):
    customer_id: str
    requested_id: str | None = Field(None, description="the id asked for, when it is an alias of this customer")
    aliases: list[str] = Field(description="earlier customer ids merged into this one")
    display_name: str | None
    identities: dict[str, list[str]]
    traits: dict[str, StampedValue]
    contacts: dict[str, int] = Field(description="touchpoints per channel")
    contacts_total: int
    first_contact: Contact | None
    last_contact: Contact | None
    orders: Orders
    tickets: dict[str, Ticket]
    open_tickets: list[str]
    open_complaints: list[str]
    satisfaction: Satisfaction
    consent: dict[str, StampedValue]
    event_count: int
    last_event_at: str | None
    updated_at: datetime
    as_of: datetime | None = Field(None, description="set when the view is as it stood at that time")


class CustomerList(BaseModel):
    items: list[CustomerOut]
    next_cursor: str | None = Field(None, description="for a search: pass as ?cursor= for the next page")


class Merge(BaseModel):
    seq: int = Field(description="position of the change in the identity graph's history")
    kind: Literal["merged", "unmerged"] = Field(
        description="merged: every identifier of `alias` joined `survivor`; unmerged: `alias` was split "
                    "and `identifiers` left it for `survivor`")
    survivor: str = Field(description="the customer the identifiers went to")
    alias: str = Field(description="the customer they came from")
    identifiers: list[str] = Field(description="the identifiers that moved")
    event_id: str = Field(description="the touchpoint that caused it (a link, an unlink, an earlier first contact)")
    identifier: str = Field(description="the identifier the touchpoint named")
    rule: str
    event_time: datetime
    version: int = Field(description="identity-graph version of the change")
    current: bool = Field(description="false when a later change moved some of these identifiers again")


class UnmergeIn(RequestBody):
    """Undo a wrong merge: name the merged-away customer id, or one identifier that is someone else."""

    alias: str | None = Field(None, max_length=100, description="a customer id merged into this one")
    identifier: IdentifierIn | None = Field(None, description="an identifier of this customer that is somebody else")
    reason: str = Field(min_length=1, max_length=200)
    operator: str | None = Field(None, max_length=200, description="who decided it, for the audit trail")

    @model_validator(mode="after")
    def _one_target(self) -> "UnmergeIn":
        if (self.alias is None) == (self.identifier is None):
            raise ValueError("give exactly one of alias or identifier")
        return self


class UnmergeOut(BaseModel):
    status: Literal["accepted"] = "accepted"
    customer_id: str
    event_id: str = Field(description="id of the identity.unlinked touchpoint published for it")
    source: str
    unlinked: list[str] = Field(description="the two identifiers declared different people")


class MergeIn(RequestBody):
    """Merge two customers an operator knows to be one person."""

    with_: str = Field(alias="with", min_length=1, max_length=100,
                       description="the other customer id (an alias answers for its survivor)")
    reason: str = Field(min_length=1, max_length=200)
    operator: str | None = Field(None, max_length=200, description="who decided it, for the audit trail "
                                                                   "(default: the API key's name)")


class MergeOut(BaseModel):
    status: Literal["accepted"] = "accepted"
    customer_id: str = Field(description="the customer asked about")
    merged_with: str = Field(description="the other customer")
    event_id: str = Field(description="id of the identity.linked touchpoint published for it")
    source: str
    linked: list[str] = Field(description="the two identifiers (each customer's anchor) declared one person")


class Refusal(BaseModel):
    event_id: str = Field(description="the touchpoint whose link was refused")
    type: str = Field(description="its event type")
    event_time: datetime
    identifier: str = Field(description="the identifier refused (kind:value; a pseudonym when the collector "
                                        "sealed it, a blocked placeholder value as given)")
    stayed_with: str = Field(description="the identifier the touchpoint stayed with (its home)")
    rule: str = Field(description="refused: at most N kind per customer | refused: explicitly unlinked | "
                                  "refused: blocked placeholder value")
    customer_id: str | None = Field(description="the customer the touchpoint stayed with")
    other_customer_id: str | None = Field(description="the customer of the refused identifier (none for a "
                                                      "blocked value)")


class Merges(BaseModel):
    customer_id: str
    items: list[Merge]
    refusals: list[Refusal] = Field(default_factory=list,
                                    description="links refused on this customer's side or the other's, oldest first")


class TimelineItem(BaseModel):
    event_id: str
    source: str
    type: str
    channel: str
    time: datetime
    summary: str
    data: dict[str, Any]


class Timeline(BaseModel):
    customer_id: str
    items: list[TimelineItem]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null at the end")


class IndicatorValue(BaseModel):
    value: float | None = Field(description="null when there is no sample")
    count: float = Field(description="sample size: the indicator's denominator (answers, calls, contacts, ...)")
    unit: str


WindowName = Literal[tuple(WINDOWS)]  # the one list of windows (projections/indicators.py)


class IndicatorSlice(BaseModel):
    dimension: Literal["all", "channel", "queue", "agent", "segment"]
    member: str = Field(description="the dimension's value ('' for all)")
    window: WindowName
    indicators: dict[str, IndicatorValue]


class IndicatorsOut(BaseModel):
    end: datetime = Field(description="the windows end here (the current minute included)")
    items: list[IndicatorSlice]


class AlertBound(BaseModel):
    """A threshold rule (CRM_INDICATOR_ALERTS) as the dashboard needs it to mark a breached value."""
    rule: str
    window: str
    dimension: str
    member: str | None = None
    below: float | None = None
    above: float | None = None
    min_count: float


class IndicatorDefinition(BaseModel):
    name: str
    unit: str
    better: Literal["higher", "lower"]
    en: str
    zh: str
    numerator: list[str] = Field(description="summed measures (a second one is subtracted)")
    denominator: str
    min_sample: int = Field(description="fewer samples than this make a small sample (CRM_INDICATOR_MIN_SAMPLE)")
    alerts: list[AlertBound] = Field(description="the threshold rules on this indicator")


class FiringAlert(BaseModel):
    rule: str
    indicator: str
    window: str
    dimension: str
    member: str
    bound: Literal["below", "above"]
    threshold: float
    min_count: float
    description: str
    since: datetime = Field(description="when the rule started firing on this slice")
    value_at_start: float | None = Field(description="the value that made it fire")
    value: float | None = Field(description="the value over the rule's window now")
    count: float = Field(description="the sample size over the rule's window now")


class FiringAlerts(BaseModel):
    at: datetime
    items: list[FiringAlert]


class SeriesPoint(BaseModel):
    minute: datetime
    values: dict[str, float | None]
    counts: dict[str, float]
    late: dict[str, float] = Field(description="samples of the minute that arrived after the allowed lateness")


class IndicatorSeries(BaseModel):
    dimension: str
    member: str
    start: datetime
    end: datetime
    indicators: list[str]
    points: list[SeriesPoint]
