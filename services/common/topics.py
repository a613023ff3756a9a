"""The one list of Kafka topics the platform uses (the README's "Topics" section).

Partition counts come from ``Settings.partitions``; the per-customer order is the only order relied on.

``CRM_TOPIC_PREFIX`` puts every topic name under a namespace (e.g. ``staging.``), so several
platforms can share one cluster without reading each other's log; the tests give each test a
namespace of its own. It is read here, once, because the names are constants every module imports.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

NAMESPACE = os.environ.get("CRM_TOPIC_PREFIX", "")
"""The prefix of every topic name of this process (empty by default)."""
if not re.fullmatch(r"[A-Za-z0-9._-]{0,100}", NAMESPACE):
    raise ValueError(f"CRM_TOPIC_PREFIX={NAMESPACE!r}: use at most 100 of the characters Kafka allows in topic "
                     "names (letters, digits, '.', '_', '-')")

TOUCHPOINTS = NAMESPACE + "crm.touchpoints"
CUSTOMER_EVENTS = NAMESPACE + "crm.customer-events"
CUSTOMER_STATE = NAMESPACE + "crm.customer-state"
CUSTOMER_CHANGES = NAMESPACE + "crm.customer-changes"
INDICATORS = NAMESPACE + "crm.indicators"
DEADLETTER = NAMESPACE + "crm.deadletter"


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


def in_namespace(prefix: str) -> tuple[TopicSpec, ...]:
    """The platform's topics under another namespace ``prefix`` (e.g. a test's own)."""
    return tuple(replace(spec, name=prefix + spec.name.removeprefix(NAMESPACE)) for spec in TOPICS)
