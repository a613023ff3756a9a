"""Identity stage: crm.touchpoints -> (identity graph in PostgreSQL) -> crm.customer-events.

Decodes and validates each touchpoint and resolves it to a customer with the pure, guarded
resolver (``projections.identity.resolve_evidence``):

* The evidence (per distinct statement "these identifiers are / are not one person", the earliest
  event that made it) is stored with the connected component of identifiers it belongs to.
* A batch that brings nothing new (known identifiers, no earlier first sighting, no new
  statement) resolves each event to the stored customer of its home identifier: one query.
* Otherwise the components the batch touches are loaded whole, joined by the new evidence and
  resolved again; the differences are written as merges and splits with their causes, the graph's
  version is bumped, and identity markers say which identifiers moved where.

Everything happens in the runner's transaction, which also stores the consumed offsets. One
advisory lock serializes graph updates across workers, so resolution is correct with any number
of them; the result depends only on the set of events, never on their order.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime

import orjson

from events.customer_events import IDENTIFIED, MERGED, UNMERGED, IdentityMarker, resolved_cloudevent
from events.envelope import InvalidEvent, Touchpoint, validate
from events.pii import PSEUDONYM
from events.kafka_binding import decode, structured_headers
from projections.identity import (BLOCKED_RULE, MANUAL_MERGE_SOURCE, MANUAL_RULE, Cause, Change, Evidence,
                                  Refusal, changes, event_home, kind_of, link_key, refusals, resolve_evidence)
from prometheus_client import Counter

from services.common.db import lock_id, execute_values
from services.common.vault import Vault
from services.common.topics import CUSTOMER_EVENTS, TOUCHPOINTS
from services.processors.records import Output, Record, deadletter

log = logging.getLogger(__name__)

HEADERS = tuple(structured_headers())
ERASURE = "customer.erasure_requested"
ERASED_SKIPPED = Counter("crm_identity_erased_events_skipped_total",
                         "touchpoints naming a subject that was erased (in flight at the erasure, or read by a rebuild)")


@dataclass(frozen=True, slots=True)
class _Known:
    customer_id: str
    first_seen: datetime
    component: int


@dataclass
class _Facts:
    """What the stage needs of one touchpoint."""

    tp: Touchpoint
    keys: tuple[str, ...]
    home: str
    evidence: Evidence | None
    link: str | None


def _facts(tp: Touchpoint) -> _Facts:
    keys = tuple(i.key for i in tp.identifiers)
    unlink = tp.type == "identity.unlinked"
    if unlink or len(keys) > 1:
        note = ""
        if tp.type == "identity.linked" and tp.source == MANUAL_MERGE_SOURCE:
            note = MANUAL_RULE.format(operator=getattr(tp.data, "operator", None) or "an operator",
                                      reason=tp.data.reason)
        evidence = Evidence(tp.key, tp.id, tp.type, tp.time, keys, unlink, note)
        return _Facts(tp, keys, event_home(tp.type, keys), evidence, link_key(keys, unlink))
    return _Facts(tp, keys, keys[0], None, None)


def _archived_headers(headers) -> str:
    """Kafka headers as JSON text PostgreSQL can store: names and values base64 (a name may hold any
    character, NUL included)."""
    return orjson.dumps([[base64.b64encode(k.encode("utf-8", "surrogatepass")).decode(),
                          base64.b64encode(v or b"").decode()] for k, v in headers]).decode()


class IdentityStage:
    name = "identity"
    topic = TOUCHPOINTS

    def __init__(self, default_region: str, limits: dict[str, int] | None = None, *, archive: bool = True,
                 vault: Vault | None = None, blocked: frozenset[str] | None = None):
        self.default_region = default_region
        self.blocked = blocked  # placeholder values refused as identifiers (CRM_IDENTITY_BLOCKED)
        self.limits = dict(limits or {})
        self.archive = archive  # a rebuild (``crm replay``) reads the archive; it does not write it
        self.vault = vault  # the subjects' keys: erasure shreds them; events of shredded subjects are skipped

    def decode(self, record: Record) -> Touchpoint | Output:
        """The validated touchpoint, or the dead-letter record saying why not."""
        try:
            raw = decode(record.value, record.headers)
            return validate(raw, received_at=record.timestamp, default_region=self.default_region, sealed=True,
                            blocked=self.blocked)
        except InvalidEvent as exc:
            return deadletter(record, stage=self.name, kind=exc.kind, reason=str(exc),
                              errors=[e.as_dict() for e in exc.errors])

    def prepare(self, cur, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        facts: list[_Facts] = []
        accepted: list[tuple[Record, Touchpoint]] = []
        for record in records:
            decoded = self.decode(record)
            if isinstance(decoded, Output):
                outputs.append(decoded)
            else:
                facts.append(_facts(decoded))
                accepted.append((record, decoded))
        facts, accepted = self._unerased(cur, facts, accepted)
        if not facts:
            return outputs
        if self.archive:
            self._archive(cur, accepted)

        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("identity-graph"),))
        cur.execute("SELECT version FROM identity_state")
        version = cur.fetchone()[0]
        keys = sorted({k for f in facts for k in f.keys})
        known = self._load_identifiers(cur, "key = ANY(%s)", keys)

        # the earliest event of each statement and of each identifier in the batch
        statements: dict[str, Evidence] = {}
        for f in facts:
            if f.evidence is not None and (f.link not in statements or f.evidence.order() < statements[f.link].order()):
                statements[f.link] = f.evidence
        first: dict[str, Cause] = {}
        for f in facts:
            for k in f.keys:
                if k not in first or (f.tp.time, f.tp.key) < (first[k].time, first[k].event_key):
                    first[k] = Cause(f.tp.key, f.tp.id, f.tp.time)
        stored_order: dict[str, tuple[datetime, str]] = {}
        if statements:
            cur.execute("SELECT link_key, event_time, event_key FROM identity_link WHERE link_key = ANY(%s)",
                        (sorted(statements),))
            stored_order = {lk: (t, ek) for lk, t, ek in cur.fetchall()}
        new_statements = {lk: ev for lk, ev in statements.items()
                          if lk not in stored_order or ev.order() < stored_order[lk]}
        earlier = {k for k, c in first.items() if k not in known or c.time < known[k].first_seen}

        owner = {k: v.customer_id for k, v in known.items()}
        markers: list[IdentityMarker] = []
        if new_statements or earlier:
            version, markers = self._resolve(cur, version, known, first, earlier, new_statements, owner)

        erased = self._erase(cur, facts, owner)
        self._blocked(cur, facts, owner, erased)
        # resolved events keep their touchpoint's receive time (the Kafka timestamp), so lateness is
        # measured from when the platform received an event, however long processing took; a rebuild
        # sees the same times
        stated: set[str] = set()
        events = []
        received = max(r.timestamp_ms or 0 for r, _ in accepted) or None
        for f, (record, _) in zip(facts, accepted):
            cid = owner[f.home]
            if cid in erased and f.tp.type != ERASURE:  # erased with the customer, in this very batch
                continue
            refused = tuple(k for k in f.keys if k != f.home and (f.evidence is not None and f.evidence.unlink
                                                                  or owner[k] != cid))
            stated.update(k for k in f.keys if k not in refused)
            events.append(Output(CUSTOMER_EVENTS, cid.encode(),
                                 orjson.dumps(resolved_cloudevent(f.tp, cid, refused, version)), HEADERS,
                                 record.timestamp_ms))
        for m in markers:
            if m.customer_id in erased:
                continue
            if m.type == IDENTIFIED:
                m = IdentityMarker(IDENTIFIED, m.customer_id, tuple(k for k in m.identifiers if k not in stated),
                                   m.version, time=m.time)
                if not m.identifiers:
                    continue
            outputs.append(Output(CUSTOMER_EVENTS, m.customer_id.encode(), orjson.dumps(m.to_cloudevent()), HEADERS,
                                  received))
        return outputs + events

    @staticmethod
    def _blocked(cur, facts: list[_Facts], owner: dict[str, str], erased: dict[str, int]) -> None:
        """Explain the placeholder values refused on the batch's events (one row per event and value;
        an event read twice says the same again)."""
        rows = sorted({(f.tp.key, f.tp.id, f.tp.time, f.tp.type, ident.key, f.home, BLOCKED_RULE)
                       for f in facts if owner[f.home] not in erased for ident in f.tp.blocked_identifiers})
        if rows:
            execute_values(cur, """INSERT INTO identity_refusal (event_key, event_id, event_time, type, identifier,
                                                                home, rule) VALUES %s ON CONFLICT DO NOTHING""",
                           rows)

    def _unerased(self, cur, facts: list[_Facts], accepted: list) -> tuple[list[_Facts], list]:
        """Leave out events naming a pseudonym whose subject is gone: erased, with every key it had.
        They were in flight at the erasure, or a rebuild reads them again; either way they are
        skipped, never resolved (a rebuild must not bring the person back)."""
        if self.vault is None:
            return facts, accepted
        named = {i.value for f in facts for i in f.tp.identifiers if PSEUDONYM.match(i.value)}
        live = self.vault.existing(cur, named)
        if len(live) == len(named):
            return facts, accepted
        keep = [all(i.value in live or not PSEUDONYM.match(i.value) for i in f.tp.identifiers) for f in facts]
        ERASED_SKIPPED.inc(keep.count(False))
        return ([f for f, k in zip(facts, keep) if k], [a for a, k in zip(accepted, keep) if k])

    def _erase(self, cur, facts: list[_Facts], owner: dict[str, str]) -> dict[str, int]:
        """Carry out the erasure requests of the batch: every subject (pseudonymous identifier) of
        the customer is shredded and the customer leaves the identity graph. The customer event of
        the request goes on to the view stage, which removes the customer from the read models."""
        erased: dict[str, int] = {}
        for f in facts:
            if f.tp.type != ERASURE or owner[f.home] in erased:
                continue
            cid = owner[f.home]
            cur.execute("SELECT key FROM identity_identifier WHERE customer_id = %s", (cid,))
            keys = [r[0] for r in cur.fetchall()] + list(f.keys)
            subjects = {k.partition(":")[2] for k in keys if PSEUDONYM.match(k.partition(":")[2])}
            shredded = self.vault.shred(cur, subjects) if self.vault is not None else 0
            cur.execute("DELETE FROM identity_identifier WHERE customer_id = %s", (cid,))
            cur.execute("DELETE FROM identity_link WHERE identifiers && %s", (keys,))
            cur.execute("DELETE FROM identity_refusal WHERE identifier = ANY(%s) OR home = ANY(%s)", (keys, keys))
            cur.execute("DELETE FROM identity_change WHERE target = %s OR source = %s OR identifiers && %s",
                        (cid, cid, keys))
            cur.execute("DELETE FROM identity_customer WHERE customer_id = %s OR merged_into = %s", (cid, cid))
            data = f.tp.data
            cur.execute("""INSERT INTO public.privacy_erasure (customer_id, event_key, requested_by, reason, subjects,
                                                        requested_at)
                           VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (customer_id) DO NOTHING""",
                        (cid, f.tp.key, getattr(data, "requested_by", None), getattr(data, "reason", None),
                         len(subjects), f.tp.time))
            erased[cid] = shredded
            log.info("customer erased", extra={"customer_id": cid, "subjects": len(subjects), "event_id": f.tp.id})
        return erased

    @staticmethod
    def _archive(cur, accepted: list[tuple[Record, Touchpoint]]) -> None:
        """Keep every accepted event byte for byte with its position, in the batch's transaction."""
        execute_values(cur, """
            INSERT INTO event_archive (topic, partition, kafka_offset, event_key, type, event_time, key, value,
                                       headers, record_time)
            VALUES %s ON CONFLICT DO NOTHING""",
            [(r.topic, r.partition, r.offset, tp.key, tp.type, tp.time, r.key, r.value,
              _archived_headers(r.headers), r.timestamp)
             for r, tp in accepted],
            template="(%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)", page_size=1000)

    # -- resolution of the touched components -------------------------------------------------------
    @staticmethod
    def _load_identifiers(cur, where: str, arg) -> dict[str, _Known]:
        cur.execute(f"SELECT key, customer_id, first_seen, component FROM identity_identifier WHERE {where}", (arg,))
        return {k: _Known(c, t, comp) for k, c, t, comp in cur.fetchall()}

    def _resolve(self, cur, version: int, known: dict[str, _Known], first: dict[str, Cause], earlier: set[str],
                 new_statements: dict[str, Evidence], owner: dict[str, str]) -> tuple[int, list[IdentityMarker]]:
        dirty = earlier | {k for ev in new_statements.values() for k in ev.identifiers}
        labels = sorted({known[k].component for k in dirty if k in known})
        stored = self._load_identifiers(cur, "component = ANY(%s)", labels) if labels else {}
        stored.update({k: v for k, v in known.items() if k in dirty})
        links: dict[str, tuple[int, Evidence]] = {}
        if labels:
            cur.execute("""SELECT link_key, component, event_key, event_id, type, event_time, identifiers, unlink, note
                           FROM identity_link WHERE component = ANY(%s)""", (labels,))
            for lk, comp, ek, eid, typ, t, ids, unlink, note in cur.fetchall():
                links[lk] = (comp, Evidence(ek, eid, typ, t, tuple(ids), unlink, note))

        # join the components by the new evidence: nodes are stored components and new identifiers
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def node(key: str) -> str:
            return f"c{stored[key].component}" if key in stored else f"k{key}"

        for ev in new_statements.values():
            nodes = [find(node(k)) for k in ev.identifiers]
            for other in nodes[1:]:
                a, b = find(nodes[0]), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        groups: dict[str, dict] = {}
        for key in sorted(set(stored) | dirty):
            g = groups.setdefault(find(node(key)), {"keys": set(), "labels": set(), "evidence": {}, "new": {}})
            g["keys"].add(key)
            if key in stored:
                g["labels"].add(stored[key].component)
        # each statement (stored, or new or made earlier by this batch) to its group, once
        for lk, (_, ev) in links.items():
            groups[find(node(ev.identifiers[0]))]["evidence"][lk] = ev
        for lk, ev in new_statements.items():
            g = groups[find(node(ev.identifiers[0]))]
            g["evidence"][lk] = g["new"][lk] = ev
        fresh = sum(1 for g in groups.values() if not g["labels"])
        if fresh:
            cur.execute("SELECT nextval('identity_component_seq') FROM generate_series(1, %s)", (fresh,))
            spare = [r[0] for r in cur.fetchall()]

        identifier_rows, relabel, link_rows, all_changes, anchors = [], [], [], [], {}
        refused: dict[int, list[Refusal]] = {}  # component -> the links its resolution refuses now
        moved: dict[str, str] = {}
        for g in groups.values():
            label = min(g["labels"]) if g["labels"] else spare.pop()
            relabel += [(old, label) for old in g["labels"] if old != label]
            keys = g["keys"]
            evidence = list(g["evidence"].values())
            link_rows += [(lk, list(ev.identifiers), ev.unlink, ev.time, ev.event_key, ev.event_id, ev.type, label,
                           ev.note) for lk, ev in g["new"].items()]
            seen = {k: min(stored[k].first_seen, first[k].time) if k in stored and k in first
                    else stored[k].first_seen if k in stored else first[k].time for k in keys}
            partition = resolve_evidence(evidence, self.limits, seen)
            refused[label] = refusals(partition, evidence)
            # name an event that lowered a first sighting, else any event of the batch in the group
            lowered = [first[k] for k in keys if k in earlier] or [first[k] for k in keys if k in first]
            cause = min(lowered, key=lambda c: (c.time, c.event_key))
            before = {k: stored[k].customer_id for k in keys if k in stored}
            all_changes += changes(before, partition, evidence, cause)
            anchors.update(partition.anchors)
            for key in keys:
                cid = partition.customer_of[key]
                if before.get(key) != cid:
                    moved[key] = cid
                old = stored.get(key)
                if old is None or old.customer_id != cid or old.first_seen != seen[key] or old.component != label:
                    identifier_rows.append((key, kind_of(key), cid, seen[key], label))
                owner[key] = cid

        if moved:
            version += 1
            cur.execute("UPDATE identity_state SET version = %s", (version,))
        self._write(cur, version, identifier_rows, relabel, link_rows, anchors, all_changes, refused)
        return version, self._markers(cur, version, all_changes, moved, first)

    @staticmethod
    def _write(cur, version, identifier_rows, relabel, link_rows, anchors, all_changes, refused) -> None:
        if relabel:
            for table in ("identity_identifier", "identity_link", "identity_refusal"):
                execute_values(cur, f"""UPDATE {table} t SET component = r.new FROM (VALUES %s) AS r(old, new)
                                        WHERE t.component = r.old""", relabel)
        if identifier_rows:
            execute_values(cur, """
                INSERT INTO identity_identifier (key, kind, customer_id, first_seen, component, version) VALUES %s
                ON CONFLICT (key) DO UPDATE SET customer_id = EXCLUDED.customer_id, first_seen = EXCLUDED.first_seen,
                    component = EXCLUDED.component,
                    version = CASE WHEN identity_identifier.customer_id = EXCLUDED.customer_id
                                   THEN identity_identifier.version ELSE EXCLUDED.version END""",
                [(*row, version) for row in sorted(identifier_rows)],
                page_size=1000)
        if link_rows:
            execute_values(cur, """
                INSERT INTO identity_link (link_key, identifiers, unlink, event_time, event_key, event_id, type, component,
                                           note)
                VALUES %s ON CONFLICT (link_key) DO UPDATE SET event_time = EXCLUDED.event_time,
                    event_key = EXCLUDED.event_key, event_id = EXCLUDED.event_id, type = EXCLUDED.type,
                    component = EXCLUDED.component, note = EXCLUDED.note""", sorted(link_rows), page_size=1000)
        if refused:  # each resolved component's refusals, as its resolution has them now
            cur.execute("DELETE FROM identity_refusal WHERE component = ANY(%s)", (sorted(refused),))
            rows = sorted({(r.event_key, r.identifier): (r.event_key, r.event_id, r.time, r.type, r.identifier, r.home,
                                                          r.rule, label)
                           for label, found in refused.items() for r in found}.values())
            if rows:
                execute_values(cur, """
                    INSERT INTO identity_refusal (event_key, event_id, event_time, type, identifier, home, rule,
                                                  component)
                    VALUES %s ON CONFLICT (event_key, identifier) DO UPDATE SET home = EXCLUDED.home,
                        rule = EXCLUDED.rule, component = EXCLUDED.component""", rows, page_size=1000)
        if anchors:
            execute_values(cur, """
                INSERT INTO identity_customer (customer_id, anchor_time, anchor_key) VALUES %s
                ON CONFLICT (customer_id) DO UPDATE SET anchor_time = EXCLUDED.anchor_time,
                    anchor_key = EXCLUDED.anchor_key, merged_into = NULL""",
                [(cid, a.time, a.key) for cid, a in sorted(anchors.items())], page_size=1000)
        merged = [(c.source, c.target) for c in all_changes if c.kind == "merged"]
        if merged:
            execute_values(cur, """UPDATE identity_customer c SET merged_into = m.target
                                   FROM (VALUES %s) AS m(source, target) WHERE c.customer_id = m.source""", merged)

    @staticmethod
    def _markers(cur, version: int, all_changes: list[Change], moved: dict[str, str], first: dict[str, Cause]
                 ) -> list[IdentityMarker]:
        markers: list[IdentityMarker] = []
        if all_changes:
            # ids are drawn under the graph lock, so their order is the order of the changes
            rows = execute_values(cur, """
                INSERT INTO identity_change (kind, target, source, identifiers, event_key, event_id, identifier,
                                             rule, event_time, version)
                VALUES %s RETURNING id""",
                [(c.kind, c.target, c.source, list(c.identifiers), c.event_key, c.event_id, c.identifier, c.rule,
                  c.time, version) for c in all_changes], fetch=True)
            for c, (seq,) in zip(all_changes, rows):
                markers.append(IdentityMarker(MERGED if c.kind == "merged" else UNMERGED, c.target, c.identifiers,
                                              version, c.source, seq, c.event_key, c.event_id, c.identifier,
                                              c.rule, c.time))
                log.info("customers %s", c.kind, extra={"target": c.target, "source": c.source, "rule": c.rule,
                                                        "event_id": c.event_id, "seq": seq})
        covered = {k for c in all_changes for k in c.identifiers}
        rest: dict[str, list[str]] = {}
        for key, cid in sorted(moved.items()):
            if key not in covered:
                rest.setdefault(cid, []).append(key)
        for cid, keys in sorted(rest.items()):
            markers.append(IdentityMarker(IDENTIFIED, cid, tuple(keys), version,
                                          time=min(first[k].time for k in keys if k in first) if
                                          any(k in first for k in keys) else None))
        return markers
