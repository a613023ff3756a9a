"""The customer feed: what downstream systems read on ``crm.customer-state`` and ``crm.customer-changes``.

* ``crm.customer-state`` (compacted), key ``customer_id``: the latest ``CustomerSnapshot`` of each
  customer as JSON; a tombstone (null value) when the customer is merged away or erased. Every
  record, tombstones too, carries its version in the ``crm-version`` header.
* ``crm.customer-changes``, key ``customer_id``: one CloudEvent per change, in per-customer order.
  Every change carries ``sequence`` (the snapshot version it produced) and, in ``data.state``, the
  whole snapshot after it (null for ``customer.merged``), so a consumer that keeps, per customer,
  the state of the highest sequence seen is exact whatever it started from.

One snapshot version is produced per customer and processed batch at most; several changes may
share it (a new order can change the lifecycle, a segment and the value at once). The version
grows by one each time the snapshot's content changes, and a content change always comes with at
least one change event, so snapshot and change stream never disagree.

Declared once here; the JSON Schemas and the AsyncAPI document are generated from these models.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SOURCE = "urn:crm:customer-state"
SNAPSHOT_SCHEMA = "urn:crm:schema:customer-state:1"

LIFECYCLE_STAGES = ("prospect", "intent", "customer", "loyal", "at_risk", "churned")


class Lifecycle(BaseModel):
    stage: Literal["prospect", "intent", "customer", "loyal", "at_risk", "churned"]
    since: str = Field(description="when the customer entered this stage (UTC, ISO 8601)")
    rule: str = Field(description="the configured rule that put the customer in this stage")


class Rfm(BaseModel):
    recency: int = Field(ge=1, le=5, description="5: ordered most recently")
    frequency: int = Field(ge=1, le=5, description="5: orders most often")
    monetary: int = Field(ge=1, le=5, description="5: spends most")
    score: str = Field(description="the three digits, e.g. '545'")


class Value(BaseModel):
    orders: int = Field(description="orders placed")
    refunds: int
    net_revenue: dict[str, str] = Field(description="revenue less refunds per currency (decimal strings)")
    monetary: str = Field(description="net revenue in the base currency (decimal string)")
    currency: str = Field(description="the base currency of monetary and ltv")
    average_order_value: str | None = Field(description="in the base currency")
    first_order_at: str | None
    last_order_at: str | None
    rfm: Rfm | None = Field(description="null before the first order")
    tier: Literal["high", "medium", "low", "none"] = Field(description="value tier; 'high' are the 优质客户")
    ltv: str = Field(description="lifetime value estimate in the base currency (decimal string)")


class Satisfaction(BaseModel):
    index: float | None = Field(description="0-100 satisfaction index; null without evidence")
    at_risk: bool
    reasons: list[str] = Field(description="codes: low_csat, detractor, negative_sentiment, repeat_contacts, open_complaint")


class Profile(BaseModel):
    display_name: str | None
    traits: dict[str, Any] = Field(description="latest value of each trait (name, email, phone, company, address, ...)")
    consent: dict[str, bool] = Field(
        description="purpose:channel -> granted, by the customer's latest consent (a later purpose:all event "
                    "overrides an earlier one of a single channel). A channel is consented when its slot, or "
                    "else the purpose's all slot, is true; absent: no consent (opt-in)")


class CustomerSnapshot(BaseModel):
    """The value on ``crm.customer-state`` and ``data.state`` of each change."""

    model_config = ConfigDict(title="customer-state snapshot")

    customer_id: str
    version: int = Field(ge=1, description="grows by one with each content change of this customer")
    as_of: str = Field(description="the time the snapshot was evaluated at (event time or the clock tick)")
    profile: Profile
    lifecycle: Lifecycle
    value: Value
    segments: list[str] = Field(description="configured segments the customer is in, sorted; a segment declared "
                                            "for a purpose that needs consent (e.g. marketing) holds only customers "
                                            "whose profile.consent grants it")
    satisfaction: Satisfaction


# -- change events --------------------------------------------------------------------------------

class LifecycleChanged(BaseModel):
    model_config = ConfigDict(title="lifecycle.changed")
    previous: str | None = Field(alias="from", description="null for a new customer")
    to: str
    rule: str


class SegmentChange(BaseModel):
    model_config = ConfigDict(title="segment.entered / segment.exited")
    segment: str


class AtRisk(BaseModel):
    model_config = ConfigDict(title="satisfaction.at_risk / satisfaction.recovered / satisfaction.changed")
    index: float | None
    reasons: list[str]


class ValueChanged(BaseModel):
    model_config = ConfigDict(title="value.changed")
    changed: list[str] = Field(description="names of the value fields that changed")


class ProfileChanged(BaseModel):
    model_config = ConfigDict(title="profile.changed")
    changed: dict[str, Any] = Field(description="trait (or consent:<slot>, display_name) -> {from, to}")


class Merged(BaseModel):
    model_config = ConfigDict(title="customer.merged")
    into: str | None = Field(description="the surviving customer; lookups by this id answer with it")
    identifiers: list[str] = Field(default_factory=list)
    rule: str | None = None
    event_id: str | None = None


class Unmerged(BaseModel):
    model_config = ConfigDict(title="customer.unmerged")
    split_from: str | None = Field(alias="from", description="the customer this one was split from")
    identifiers: list[str] = Field(default_factory=list)
    rule: str | None = None
    event_id: str | None = None


class Erased(BaseModel):
    model_config = ConfigDict(title="customer.erased")
    erased_at: str = Field(description="when the platform erased the customer (UTC, ISO 8601)")
    event_id: str = Field(description="id of the customer.erasure_requested touchpoint")
    subjects: int = Field(description="personal-data keys shredded: every copy they sealed is unreadable now")


CHANGE_TYPES: dict[str, type[BaseModel]] = {
    "lifecycle.changed": LifecycleChanged,
    "segment.entered": SegmentChange,
    "segment.exited": SegmentChange,
    "satisfaction.at_risk": AtRisk,
    "satisfaction.recovered": AtRisk,
    "satisfaction.changed": AtRisk,
    "value.changed": ValueChanged,
    "profile.changed": ProfileChanged,
    "customer.merged": Merged,
    "customer.unmerged": Unmerged,
    "customer.erased": Erased,
}
"""Every change type on crm.customer-changes and the model of its ``data`` (besides ``state``)."""

CHANGE_DESCRIPTIONS = {
    "lifecycle.changed": "the customer moved to another lifecycle stage (from is null for a new customer)",
    "segment.entered": "the customer entered a configured segment",
    "segment.exited": "the customer left a configured segment (also when it withdrew the consent the segment needs)",
    "satisfaction.at_risk": "the customer became at risk (low CSAT, detractor, negative sentiment, ...)",
    "satisfaction.recovered": "the customer is no longer at risk",
    "satisfaction.changed": "the satisfaction index or reasons changed, the at-risk flag did not",
    "value.changed": "orders, revenue, RFM, value tier or lifetime value changed",
    "profile.changed": "a trait, the display name or a consent changed",
    "customer.merged": "this customer was merged into another (the last event of its id; its snapshot is tombstoned)",
    "customer.unmerged": "this customer was split off another one (an identity unlink or operator unmerge)",
    "customer.erased": "the customer was erased on request (GDPR art. 17, PIPL): delete everything you hold on this "
                       "id; the last event of its id, its snapshot is tombstoned",
}


def change_id(customer_id: str, sequence: int, change_type: str, detail: str = "") -> str:
    """The change's CloudEvent id: the same change always gets the same id (consumers may dedupe on it)."""
    return f"{customer_id}:{sequence}:{change_type}" + (f":{detail}" if detail else "")


def change_event(customer_id: str, sequence: int, change_type: str, time: str, data: dict[str, Any],
                 state: dict[str, Any] | None, detail: str = "") -> dict[str, Any]:
    """A change as a structured CloudEvent."""
    return {
        "specversion": "1.0",
        "id": change_id(customer_id, sequence, change_type, detail),
        "source": SOURCE,
        "type": change_type,
        "time": time,
        "subject": customer_id,
        "customerid": customer_id,
        "sequence": sequence,
        "datacontenttype": "application/json",
        "dataschema": f"urn:crm:schema:{change_type}:1",
        "data": {**data, "state": state},
    }


def change_schema(change_type: str) -> dict[str, Any]:
    """JSON Schema of one change type's CloudEvent (envelope, typed data and the snapshot)."""
    data = CHANGE_TYPES[change_type].model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    snapshot = CustomerSnapshot.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = {**data.pop("$defs", {}), **snapshot.pop("$defs", {}), "CustomerSnapshot": snapshot}
    data.setdefault("properties", {})["state"] = {
        "anyOf": [{"$ref": "#/$defs/CustomerSnapshot"}, {"type": "null"}],
        "description": "the customer's whole snapshot after the change (null for customer.merged and customer.erased)"}
    data.setdefault("required", []).append("state")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:crm:schema:{change_type}:1",
        "title": change_type,
        "description": CHANGE_DESCRIPTIONS[change_type],
        "type": "object",
        "required": ["specversion", "id", "source", "type", "time", "subject", "customerid", "sequence", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "description": "<customer_id>:<sequence>:<type>[:<segment>]"},
            "source": {"const": SOURCE},
            "type": {"const": change_type},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "description": "the customer id"},
            "customerid": {"type": "string"},
            "sequence": {"type": "integer", "minimum": 1, "description": "the snapshot version this change produced"},
            "datacontenttype": {"const": "application/json"},
            "dataschema": {"const": f"urn:crm:schema:{change_type}:1"},
            "data": data,
        },
        "$defs": defs,
    }


WITHHELD = "[withheld]"
"""What a personal value reads as in a change sent or shown without personal data."""


def without_personal_data(change: dict[str, Any]) -> dict[str, Any]:
    """The change event without the personal data it carries (pure): the snapshot's display name
    and traits (name, email, phone, address, birthday, company, ...), the values of a
    ``profile.changed`` (the names of what changed stay; consents are no personal data), and the
    identifiers of a merge or unmerge. Everything else — lifecycle, value, segments, satisfaction,
    consent — is kept. For subscriptions and readers not allowed personal data
    (README: Security and privacy)."""
    out = dict(change)
    data = change.get("data")
    if not isinstance(data, dict):
        return out
    data = dict(data)
    state = data.get("state")
    if isinstance(state, dict) and isinstance(state.get("profile"), dict):
        profile = dict(state["profile"])
        profile["display_name"] = None if profile.get("display_name") is None else WITHHELD
        profile["traits"] = {name: WITHHELD for name in (profile.get("traits") or {})}
        data["state"] = {**state, "profile": profile}
    if change.get("type") == "profile.changed" and isinstance(data.get("changed"), dict):
        data["changed"] = {name: value if name.startswith("consent:") else {"from": WITHHELD, "to": WITHHELD}
                           for name, value in data["changed"].items()}
    if change.get("type") in ("customer.merged", "customer.unmerged") and isinstance(data.get("identifiers"), list):
        data["identifiers"] = []
    out["data"] = data
    return out
