"""The query API serves the AsyncAPI document with its own settings, and what the running platform
publishes on its topics matches the document's messages."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import orjson
import psycopg2
import yaml
from kafka import KafkaConsumer, KafkaProducer

from events.asyncapi import document
from events.identifiers import normalize
from projections.identity import customer_id_for
from services.common.topics import (CUSTOMER_CHANGES, CUSTOMER_EVENTS, CUSTOMER_STATE, DEADLETTER, INDICATORS,
                                    TOUCHPOINTS)
from services.common.vault import Vault, load_master_key
from tests import http
from tests.unit.test_asyncapi import Contract


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _traffic(u: str, queue: str, email: str, phone: str) -> tuple[list[dict], list[dict]]:
    """Two abandoned calls (an indicator and an alert) and an email of two customers; then a profile that
    joins them (a merge)."""
    now = datetime.now(timezone.utc)
    calls = [{"id": f"{u}-ab{n}", "source": "urn:cti", "type": "call.abandoned",
              "time": _iso(now - timedelta(seconds=60)),
              "data": {"call_id": f"{u}-c{n}", "phone_number": phone, "queue": queue, "wait_seconds": 45}}
             for n in range(2)]
    email_received = {"id": f"{u}-mail", "source": "urn:mail", "type": "email.received",
                      "time": _iso(now - timedelta(seconds=30)),
                      "data": {"message_id": f"<{u}@mail>", "from": email, "to": ["service@example.com"]}}
    profile = {"id": f"{u}-profile", "source": "urn:shop", "type": "profile.updated",
               "time": _iso(now - timedelta(seconds=10)), "data": {"email": email, "phone": phone, "name": "Li Na"}}
    return calls + [email_received], [profile]


class _Topics:
    """Reads the platform's output topics and matches this test's records to the document's messages."""

    def __init__(self, platform, contract: Contract, mine):
        self.prefix = platform.topic_prefix
        self.consumer = KafkaConsumer(*(platform.topic(t) for t in (CUSTOMER_EVENTS, CUSTOMER_STATE, CUSTOMER_CHANGES,
                                                                     INDICATORS, DEADLETTER)),
                                      bootstrap_servers=platform.stack.kafka_bootstrap, auto_offset_reset="earliest")
        self.contract, self.mine = contract, mine
        self.found: dict[str, list[str | None]] = {}

    def read_until(self, wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.found) and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    topic = r.topic.removeprefix(self.prefix)  # the document's channel of the test's topic
                    key = r.key.decode() if r.key is not None else None
                    value = orjson.loads(r.value) if r.value is not None else None
                    if not self.mine(topic, key, value):
                        continue
                    headers = {name: (v or b"").decode() for name, v in r.headers}
                    matches = self.contract.messages(topic, key, value, headers)
                    assert len(matches) == 1, (topic, key, value, headers, matches)
                    self.found.setdefault(matches[0], []).append(key)
        assert wanted <= set(self.found), f"only {sorted(self.found)} seen"


def test_the_api_serves_the_document_and_the_platform_keeps_to_it(platform, unique):
    queue, email = f"q-{unique}", f"asyncapi-{unique}@example.com"
    phone = f"+86137{int(unique[:6], 16) % 10**8:08d}"
    rule = {"name": f"asyncapi-{unique}", "indicator": "abandonment_rate", "window": "5m", "dimension": "queue",
            "member": queue, "above": 50, "min_count": 2}
    _, collector = platform.collector()
    platform.processor(CRM_INDICATOR_ALERTS=json.dumps([rule]))
    _, api = platform.api(CRM_PARTITIONS="6")

    served = http.get(f"{api}/v1/asyncapi.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    served_doc = served.json()
    # the document names the topics the platform really uses (the test's namespace); without it, it is
    # the document of the running settings
    assert {c["address"] for c in served_doc["channels"].values()} == set(platform.topics)
    doc = json.loads(json.dumps(served_doc).replace(platform.topic_prefix, ""))
    assert doc == json.loads(json.dumps(document(6, 1))), "the document of the running settings"
    assert {c["bindings"]["kafka"]["partitions"] for c in doc["channels"].values()} == {6}
    as_yaml = http.get(f"{api}/v1/asyncapi.yaml")
    assert as_yaml.status_code == 200 and as_yaml.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(as_yaml.text) == served_doc

    # identifiers are known by their pseudonyms (sealed by the collector), customers by those
    identifiers: set[str] = set()
    customers: set[str] = set()  # the phone's is older: the email's merges into it

    def learn_pseudonyms() -> None:
        vault = Vault(load_master_key(platform.env()["CRM_MASTER_KEY"], None))
        wanted = [normalize("email", email), normalize("phone", phone)]
        with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
            found = vault.subjects(cur, wanted, create=False)
        identifiers.update(f"{i.kind}:{found[i].subject_id}" for i in wanted)
        customers.update(customer_id_for(k) for k in identifiers)

    def mine(topic: str, key: str | None, value) -> bool:
        if topic == CUSTOMER_EVENTS:
            return value["id"].startswith(f"{unique}-") or bool(identifiers & set(value["data"].get("identifiers", ())))
        if topic in (CUSTOMER_STATE, CUSTOMER_CHANGES):
            return key in customers
        if topic == INDICATORS:
            return value.get("member") == queue or value.get("rule") == rule["name"]
        return key == f"bad-{unique}"

    topics = _Topics(platform, Contract(doc), mine)
    try:
        first, then = _traffic(unique, queue, email, phone)
        http.post(f"{collector}/v1/events", json=first).raise_for_status()
        learn_pseudonyms()
        producer = KafkaProducer(bootstrap_servers=platform.stack.kafka_bootstrap, acks="all")
        producer.send(platform.topic(TOUCHPOINTS), key=f"bad-{unique}".encode(), value=b"{not json")
        producer.flush()
        producer.close()
        topics.read_until({"customer-event.resolved", "indicator.updated", "indicator.alert", "deadletter",
                           "customer-state.snapshot", "change.lifecycle.changed"}, 90)
        http.post(f"{collector}/v1/events", json=then).raise_for_status()
        topics.read_until({"identity-marker.customer.merged", "change.customer.merged", "customer-state.tombstone"},
                          60)
    finally:
        topics.consumer.close()
    assert len(topics.found["customer-event.resolved"]) >= 3


