"""A downstream system's copy of every customer's state: bootstrap from the compacted snapshot
topic, then follow the change topic. Start it at any time; it converges to the exact current state.

    python examples/downstream_consumer.py --bootstrap 127.0.0.1:9092 [--topic-prefix staging.]

How it stays exact:
  1. note where crm.customer-changes ends now (``read_committed``: only committed feed batches);
  2. read crm.customer-state from the beginning to its end: the latest snapshot of each customer
     (a null value, a tombstone, means merged away or erased);
  3. follow crm.customer-changes from the offsets of step 1. Every change carries ``sequence``
     (the snapshot version it produced) and ``data.state`` (the whole snapshot after it); a change
     older than what step 2 already has is skipped, so nothing is applied twice or out of order.
Snapshots and tombstones carry their version in the ``crm-version`` header.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

from kafka import KafkaConsumer, TopicPartition

STATE_TOPIC = "crm.customer-state"
CHANGES_TOPIC = "crm.customer-changes"


class CustomerMirror:
    def __init__(self, bootstrap: str, topic_prefix: str = ""):
        """``topic_prefix``: the platform's CRM_TOPIC_PREFIX, when it sets one."""
        self.bootstrap = bootstrap
        self.state_topic, self.changes_topic = topic_prefix + STATE_TOPIC, topic_prefix + CHANGES_TOPIC
        self.customers: dict[str, dict[str, Any]] = {}  # customer id -> latest snapshot
        self.versions: dict[str, int] = {}              # customer id -> version known (also of removed ones)
        self._changes: KafkaConsumer | None = None

    def _consumer(self) -> KafkaConsumer:
        # no consumer group: this example keeps its state in memory and rebuilds it at each start
        return KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False, consumer_timeout_ms=1000)

    def bootstrap_from_snapshots(self) -> int:
        """Steps 1 and 2; returns the number of snapshot records read."""
        changes = self._consumer()
        change_parts = [TopicPartition(self.changes_topic, p) for p in changes.partitions_for_topic(self.changes_topic)]
        changes.assign(change_parts)
        start = changes.end_offsets(change_parts)  # step 1
        for tp, offset in start.items():
            changes.seek(tp, offset)
        self._changes = changes

        snapshots = self._consumer()
        parts = [TopicPartition(self.state_topic, p) for p in snapshots.partitions_for_topic(self.state_topic)]
        snapshots.assign(parts)
        snapshots.seek_to_beginning(*parts)
        end = snapshots.end_offsets(parts)
        read = 0
        while any(snapshots.position(tp) < end[tp] for tp in parts):
            for records in snapshots.poll(timeout_ms=500).values():
                for record in records:
                    read += 1
                    headers = dict(record.headers or [])
                    version = int(headers.get("crm-version", b"0") or 0)
                    self._apply(record.key.decode(), version,
                                json.loads(record.value) if record.value is not None else None)
        snapshots.close()
        return read

    def follow(self, until: Callable[["CustomerMirror"], bool] | None = None, timeout_s: float = 3600) -> None:
        """Step 3: apply changes as they come (until ``until`` says stop, or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (until and until(self)):
            for records in self._changes.poll(timeout_ms=200).values():
                for record in records:
                    change = json.loads(record.value)
                    state = None if change["type"] == "customer.merged" else change["data"]["state"]
                    self._apply(record.key.decode(), int(change["sequence"]), state)

    def _apply(self, customer_id: str, version: int, state: dict | None) -> None:
        if version < self.versions.get(customer_id, 0):
            return  # older than what we have
        self.versions[customer_id] = version
        if state is None:
            self.customers.pop(customer_id, None)
        else:
            self.customers[customer_id] = state

    def close(self) -> None:
        if self._changes is not None:
            self._changes.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic-prefix", default="", help="the platform's CRM_TOPIC_PREFIX, if it sets one")
    args = parser.parse_args()
    mirror = CustomerMirror(args.bootstrap, args.topic_prefix)
    n = mirror.bootstrap_from_snapshots()
    print(f"bootstrapped {len(mirror.customers)} customers from {n} snapshot records; following changes")
    seen = 0

    def report(m: CustomerMirror) -> bool:
        nonlocal seen
        if len(m.versions) != seen:
            seen = len(m.versions)
            stages: dict[str, int] = {}
            for s in m.customers.values():
                stages[s["lifecycle"]["stage"]] = stages.get(s["lifecycle"]["stage"], 0) + 1
            print(f"{len(m.customers)} customers: {stages}")
        return False

    try:
        mirror.follow(report)
    except KeyboardInterrupt:
        pass
    finally:
        mirror.close()


if __name__ == "__main__":
    main()
