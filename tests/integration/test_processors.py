"""The processors on the real broker and database: both CloudEvents bindings, dead letters,
merges, and exactly-once effects across a kill -9 in the middle of the stream."""
from __future__ import annotations

import base64

import orjson
import psycopg2
import psycopg2.extras
from kafka import KafkaProducer

from events.kafka_binding import binary_record
from services.common.topics import DEADLETTER, TOUCHPOINTS
from tests.feed import read_records
from tests.processes import wait_for


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)


def publish(platform, events: list[dict], binary: bool = False) -> None:
    """Publish as a channel system would, straight to ``platform``'s crm.touchpoints."""
    p = producer(platform.stack.kafka_bootstrap)
    topic = platform.topic(TOUCHPOINTS)
    for e in events:
        key = f"{e['type']}:{e['id']}".encode()
        if binary:
            value, headers = binary_record(e)
            p.send(topic, key=key, value=value, headers=headers)
        else:
            p.send(topic, key=key, value=orjson.dumps(e),
                   headers=[("content-type", b"application/cloudevents+json")])
    p.flush()
    p.close()


def query(dsn: str, sql: str, *args):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.register_default_jsonb(cur, loads=orjson.loads)
        cur.execute(sql, args)
        return cur.fetchall()


def customer_of(dsn: str, key: str) -> str | None:
    rows = query(dsn, "SELECT customer_id FROM customer_view_identifier WHERE key = %s", key)
    return rows[0][0] if rows else None


def page(u: str, n: int, minute: int, **data) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:web", "type": "web.page_viewed",
            "time": f"2026-11-01T10:{minute:02d}:00Z", "data": {"url": "https://shop/x", **data}}


def test_structured_and_binary_events_fold_into_one_customer(platform, unique):
    platform.processor()
    publish(platform, [page(unique, 1, 0, anonymous_id=f"ck-{unique}")])
    publish(platform, [page(unique, 2, 1, anonymous_id=f"ck-{unique}")], binary=True)
    wait_for(lambda: query(platform.dsn, "SELECT event_count FROM customer_view WHERE customer_id = %s",
                           customer_of(platform.dsn, f"anonymous_id:ck-{unique}")) == [(2,)], 60, "two events applied")


def test_undecodable_and_invalid_records_go_to_the_dead_letter_topic_and_the_rest_goes_on(platform, unique):
    platform.processor()
    p = producer(platform.stack.kafka_bootstrap)
    p.send(platform.topic(TOUCHPOINTS), key=f"junk-{unique}".encode(), value=b"\xff\xfe not json")
    no_identifier = {"specversion": "1.0", "id": f"{unique}-9", "source": "urn:test:shop", "type": "order.placed",
                     "data": {"order_id": "o9", "items": [{"sku": "A", "quantity": 1, "unit_price": "1"}]}}
    p.send(platform.topic(TOUCHPOINTS), key=f"bad-{unique}".encode(), value=orjson.dumps(no_identifier))
    p.flush()
    publish(platform, [page(unique, 1, 0, anonymous_id=f"ck-{unique}")])
    wait_for(lambda: customer_of(platform.dsn, f"anonymous_id:ck-{unique}"), 60, "the good event applied")

    def dead_letters():
        return {r.key.decode(): orjson.loads(r.value)
                for r in read_records(platform.stack.kafka_bootstrap, [platform.topic(DEADLETTER)],
                                      {f"junk-{unique}", f"bad-{unique}"})}

    dead = wait_for(lambda: (d := dead_letters()) and len(d) == 2 and d, 30, "two dead letters")
    junk, bad = dead[f"junk-{unique}"], dead[f"bad-{unique}"]
    assert junk["kind"] == "undecodable" and junk["stage"] == "identity"
    assert base64.b64decode(junk["value_b64"]) == b"\xff\xfe not json"
    assert junk["source"]["topic"] == platform.topic(TOUCHPOINTS) and junk["source"]["offset"] >= 0
    assert bad["kind"] == "schema_violation" and "no customer identifier" in bad["reason"]


def test_a_login_merges_two_customers_and_the_alias_still_answers(platform, unique):
    platform.processor()
    cookie, account = f"anonymous_id:ck-{unique}", f"account_id:u-{unique}"
    publish(platform, [
        page(unique, 1, 0, anonymous_id=f"ck-{unique}"),
        {"id": f"{unique}-2", "source": "urn:test:shop", "type": "order.placed", "time": "2026-11-01T10:05:00Z",
         "data": {"order_id": f"o-{unique}", "account_id": f"u-{unique}",
                  "items": [{"sku": "A", "quantity": 1, "unit_price": "10"}]}},
    ])
    wait_for(lambda: customer_of(platform.dsn, cookie) and customer_of(platform.dsn, account), 60, "two customers")
    before = customer_of(platform.dsn, account)
    assert customer_of(platform.dsn, cookie) != before
    publish(platform, [page(unique, 3, 10, anonymous_id=f"ck-{unique}", user_id=f"u-{unique}")])
    wait_for(lambda: customer_of(platform.dsn, account) == customer_of(platform.dsn, cookie), 60, "the merge")
    survivor = customer_of(platform.dsn, cookie)
    (state,), = query(platform.dsn, "SELECT state FROM customer_view WHERE customer_id = %s", survivor)
    assert state["event_count"] == 3 and state["orders"]["count"] == 1
    assert query(platform.dsn, """SELECT a.survivor, m.kind, m.rule FROM customer_view_alias a
                                  JOIN customer_view_change m ON m.source = a.alias WHERE a.alias = %s""", before) == \
        [(survivor, "merged", "identifiers shared on one event")]
    assert query(platform.dsn, "SELECT count(*) FROM customer_view WHERE customer_id = %s", before) == [(0,)]
    assert query(platform.dsn, "SELECT count(*) FROM customer_timeline WHERE customer_id = %s", survivor) == [(3,)]


def contact(u: str, n: int, time: str, **ids) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:crm", "type": "profile.updated",
            "time": time, "data": {"name": f"Customer {u}", **ids}}


def test_late_events_re_anchor_a_customer_and_back_and_the_view_follows(platform, unique):
    """Arrival order: a contact at 10:50 (email + phone), then one at 10:05 (phone), then one at
    10:00 (email). Each late event reveals an earlier first contact, so the customer's id moves to
    the phone's and back to the email's: the view must end where the reference fold says."""
    from tests.integration.test_exactly_once import assert_equals_reference

    platform.processor()
    email, phone = f"re.{unique}@example.com", f"+86137{int(unique, 16) % 10**8:08d}"
    events = [contact(unique, 1, "2026-11-01T10:50:00Z", email=email, phone=phone),
              contact(unique, 2, "2026-11-01T10:05:00Z", phone=phone),
              contact(unique, 3, "2026-11-01T10:00:00Z", email=email)]
    for event in events:  # one at a time, so each is resolved in its own batch
        publish(platform, [event])
        wait_for(lambda: query(platform.dsn, "SELECT count(*) FROM customer_timeline WHERE event_id = %s",
                               event["id"]) == [(1,)], 60, f"{event['id']} applied")
    assert_equals_reference(platform.dsn, events)
    survivor = customer_of(platform.dsn, f"email:{email}")
    assert customer_of(platform.dsn, f"phone:{phone}") == survivor
    aliases = query(platform.dsn, """SELECT alias FROM customer_view_alias a WHERE survivor = %s
                                     AND NOT EXISTS (SELECT 1 FROM customer_view WHERE customer_id = a.alias)""",
                    survivor)
    assert len(aliases) == 1  # the phone-anchored id, which still answers


def _marker(version: int, target: str, source: str, identifiers: list[str]) -> dict:
    from datetime import datetime, timezone

    from events.customer_events import MERGED, IdentityMarker

    return IdentityMarker(MERGED, target, tuple(identifiers), version, source, version, f"k{version}",
                          f"e{version}", identifiers[0], "test", datetime(2026, 11, 1, tzinfo=timezone.utc)
                          ).to_cloudevent()


def _resolved_event(u: str, n: int, customer: str, identifier: str) -> dict:
    return {"specversion": "1.0", "id": f"{u}-{n}", "source": "urn:test:direct", "type": "profile.updated",
            "time": f"2026-11-01T10:0{n}:00Z", "channel": "profile", "customerid": customer,
            "identifiers": identifier, "identityversion": 0, "data": {"name": f"n{n}"}}


def test_a_marker_overtaken_by_a_later_one_changes_nothing(platform, unique):
    """Markers travel on their target's partition, so a later change can be processed first."""
    from services.common.topics import CUSTOMER_EVENTS

    platform.processor(CRM_PROCESSOR_STAGES="view")
    x, y = f"c_x{unique}", f"c_y{unique}"
    ex, ey = f"email:x{unique}@example.com", f"email:y{unique}@example.com"
    p = producer(platform.stack.kafka_bootstrap)
    for record in (_resolved_event(unique, 1, x, ex), _resolved_event(unique, 2, y, ey)):
        p.send(platform.topic(CUSTOMER_EVENTS), key=record["customerid"].encode(), value=orjson.dumps(record))
    # history: y was merged into x (version 1), then a re-anchoring merged x into y (version 2);
    # they arrive newest first
    p.send(platform.topic(CUSTOMER_EVENTS), key=y.encode(), value=orjson.dumps(_marker(10**12 + 2, y, x, [ex, ey])))
    p.flush()
    wait_for(lambda: query(platform.dsn, "SELECT event_count FROM customer_view WHERE customer_id = %s", y) == [(2,)],
             60, "x merged into y")
    p.send(platform.topic(CUSTOMER_EVENTS), key=x.encode(), value=orjson.dumps(_marker(10**12 + 1, x, y, [ey])))
    p.flush()
    p.close()
    # a sentinel behind the stale marker on the same partition, itself resolved before both changes
    p = producer(platform.stack.kafka_bootstrap)
    sentinel = _resolved_event(unique, 3, x, ex)
    p.send(platform.topic(CUSTOMER_EVENTS), key=x.encode(), value=orjson.dumps(sentinel))
    p.flush()
    p.close()
    wait_for(lambda: query(platform.dsn, "SELECT count(*) FROM customer_timeline WHERE event_id = %s",
                           sentinel["id"]) == [(1,)], 60, "the sentinel behind the stale marker")
    assert query(platform.dsn, "SELECT customer_id, event_count FROM customer_view WHERE customer_id IN (%s, %s)",
                 x, y) == [(y, 3)]
    assert query(platform.dsn, "SELECT key, customer_id FROM customer_view_identifier WHERE key IN (%s, %s) "
                               "ORDER BY 1", ex, ey) == sorted([(ex, y), (ey, y)])
    assert query(platform.dsn, "SELECT alias, survivor FROM customer_view_alias WHERE alias IN (%s, %s) ORDER BY 1",
                 x, y) == sorted([(x, y), (y, x)])  # y's row is stale, and y answers for itself
