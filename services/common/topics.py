"""The one list of Kafka topics the platform uses (design §3).

Partition counts come from ``Settings.partitions``; the per-customer order is the only order relied on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TOUCHPOINTS = "crm.touchpoints"
CUSTOMER_EVENTS = "crm.customer-events"
CUSTOMER_STATE = "crm.customer-state"
CUSTOMER_CHANGES = "crm.customer-changes"
INDICATORS = "crm.indicators"
DEADLETTER = "crm.deadletter"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: str
    config: dict[str, str] = field(default_factory=dict)


# retention.ms=-1: the log is the source of truth; projections are rebuilt from it.
_KEEP_FOREVER = {"retention.ms": "-1"}

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(TOUCHPOINTS, "the kind and pseudonym of the channel's primary identifier, e.g. "
                           "email:psn-3f0c9a1e7b6d4c2a8e5f1b0d9c8a7e6f",
              "CloudEvents JSON (validated touchpoint, sealed: identifiers as pseudonyms, personal fields as "
              "enc1 tokens under the subject's key; dataclassification=restricted, datacategory=personal)",
              _KEEP_FOREVER),
    TopicSpec(CUSTOMER_EVENTS, "customer_id",
              "CloudEvents JSON with the resolved customerid extension; customer.merged markers",
              _KEEP_FOREVER),
    TopicSpec(CUSTOMER_STATE, "customer_id", "latest customer snapshot; tombstone on erasure",
              {"cleanup.policy": "compact"}),
    TopicSpec(CUSTOMER_CHANGES, "customer_id", "state-change CloudEvents", _KEEP_FOREVER),
    TopicSpec(INDICATORS, "indicator + window", "indicator updates", {"retention.ms": str(7 * 24 * 3600 * 1000)}),
    TopicSpec(DEADLETTER, "original key", "raw bytes + reason + source topic/partition/offset", _KEEP_FOREVER),
)
