"""Identity stage: crm.touchpoints -> (identity graph in PostgreSQL) -> crm.customer-events.

Decodes and validates each touchpoint, resolves it with the pure resolver
(``projections.identity``) against the part of the graph the batch touches, writes the graph
changes, and returns the re-keyed events (and merge markers) to publish. All of it happens in
the runner's transaction, which also stores the consumed offsets. One advisory lock serializes
graph updates across workers, so resolution is correct with any number of them.
"""
from __future__ import annotations

import logging

import orjson
from psycopg2.extras import execute_values

from events.customer_events import CustomerMerged, resolved_cloudevent
from events.envelope import InvalidEvent, Touchpoint, validate
from events.kafka_binding import decode, structured_headers
from projections.identity import Anchor, IdentityInput, KnownIdentifier, Snapshot, resolve
from services.common.topics import CUSTOMER_EVENTS, TOUCHPOINTS
from services.processors.records import Output, Record, deadletter

log = logging.getLogger(__name__)

GRAPH_LOCK = 727002
HEADERS = tuple(structured_headers())


class IdentityStage:
    name = "identity"
    topic = TOUCHPOINTS

    def __init__(self, default_region: str):
        self.default_region = default_region

    def decode(self, record: Record) -> Touchpoint | Output:
        """The validated touchpoint, or the dead-letter record saying why not."""
        try:
            raw = decode(record.value, record.headers)
            return validate(raw, received_at=record.timestamp, default_region=self.default_region)
        except InvalidEvent as exc:
            return deadletter(record, stage=self.name, kind=exc.kind, reason=str(exc),
                              errors=[e.as_dict() for e in exc.errors])

    def prepare(self, cur, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        touchpoints: list[Touchpoint] = []
        for record in records:
            decoded = self.decode(record)
            if isinstance(decoded, Output):
                outputs.append(decoded)
            else:
                touchpoints.append(decoded)
        if not touchpoints:
            return outputs

        cur.execute("SELECT pg_advisory_xact_lock(%s)", (GRAPH_LOCK,))
        keys = sorted({i.key for tp in touchpoints for i in tp.identifiers})
        snapshot = Snapshot()
        cur.execute("SELECT key, customer_id, first_seen FROM identity_identifier WHERE key = ANY(%s)", (keys,))
        for key, cid, first_seen in cur.fetchall():
            snapshot.identifiers[key] = KnownIdentifier(cid, first_seen)
        customers = sorted({k.customer_id for k in snapshot.identifiers.values()})
        if customers:
            cur.execute("SELECT customer_id, anchor_time, anchor_key FROM identity_customer "
                        "WHERE customer_id = ANY(%s)", (customers,))
            for cid, anchor_time, anchor_key in cur.fetchall():
                snapshot.anchors[cid] = Anchor(anchor_time, anchor_key)

        inputs = [IdentityInput(tp.key, tp.id, tp.type, tp.time, tuple(i.key for i in tp.identifiers))
                  for tp in touchpoints]
        result = resolve(snapshot, inputs)
        seqs = self._write(cur, result)

        for m in result.merges:
            marker = CustomerMerged(m.survivor, m.alias, m.event_key, m.event_id, m.identifier, m.rule, m.time,
                                    seqs[(m.alias, m.survivor)])
            outputs.append(Output(CUSTOMER_EVENTS, m.survivor.encode(), orjson.dumps(marker.to_cloudevent()), HEADERS))
        for tp in touchpoints:
            cid = result.assignments[tp.key]
            outputs.append(Output(CUSTOMER_EVENTS, cid.encode(), orjson.dumps(resolved_cloudevent(tp, cid)), HEADERS))
        return outputs

    @staticmethod
    def _write(cur, result) -> dict[tuple[str, str], int]:
        """Write the graph changes; returns the sequence number of each merge (alias, survivor)."""
        if result.identifiers:
            execute_values(cur, """
                INSERT INTO identity_identifier (key, kind, customer_id, first_seen) VALUES %s
                ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id,
                    first_seen = LEAST(identity_identifier.first_seen, EXCLUDED.first_seen)""",
                [(k, k.partition(":")[0], v.customer_id, v.first_seen) for k, v in sorted(result.identifiers.items())],
                page_size=1000)
        if result.anchors:
            execute_values(cur, """
                INSERT INTO identity_customer (customer_id, anchor_time, anchor_key) VALUES %s
                ON CONFLICT (customer_id) DO UPDATE SET anchor_time = EXCLUDED.anchor_time,
                    anchor_key = EXCLUDED.anchor_key, merged_into = NULL""",
                [(cid, a.time, a.key) for cid, a in sorted(result.anchors.items())], page_size=1000)
        if result.merges:
            pairs = [(m.alias, m.survivor) for m in result.merges]
            execute_values(cur, """
                UPDATE identity_identifier i SET customer_id = m.survivor
                FROM (VALUES %s) AS m(alias, survivor) WHERE i.customer_id = m.alias""", pairs)
            execute_values(cur, """
                UPDATE identity_customer c SET merged_into = m.survivor
                FROM (VALUES %s) AS m(alias, survivor)
                WHERE c.customer_id = m.alias OR c.merged_into = m.alias""", pairs)
            # ids are drawn under the graph lock, so their order is the order of the merges
            rows = execute_values(cur, """
                INSERT INTO identity_merge (survivor, alias, event_key, event_id, identifier, rule, event_time)
                VALUES %s ON CONFLICT (alias, survivor, event_key) DO UPDATE SET rule = EXCLUDED.rule
                RETURNING alias, survivor, id""",
                [(m.survivor, m.alias, m.event_key, m.event_id, m.identifier, m.rule, m.time) for m in result.merges],
                fetch=True)
            for m in result.merges:
                log.info("customers merged", extra={"survivor": m.survivor, "alias": m.alias, "rule": m.rule,
                                                    "event_id": m.event_id})
            return {(alias, survivor): seq for alias, survivor, seq in rows}
        return {}
