"""Failed events on the real broker and database: what cannot be decoded, validated or processed goes
to crm.deadletter while the rest goes on, ``crm deadletter list`` shows it intact, and
``crm deadletter redrive`` re-publishes it after a fix, each dead letter once, without counting
again what already succeeded."""
from __future__ import annotations

import base64
import subprocess

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.topics import DEADLETTER, TOUCHPOINTS
from services.processors.records import Record, deadletter
from tests.integration.test_exactly_once import assert_equals_reference
from tests.integration.test_processors import customer_of, page, producer, query
from tests.processes import VENV_BIN, wait_for

CE = [("content-type", b"application/cloudevents+json")]


def crm(platform, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """The ``crm`` console script, as an operator runs it, against the test's database and broker."""
    done = subprocess.run([str(VENV_BIN / "crm"), *args], env=platform.env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == expect, f"crm {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def crm_json(platform, *args: str) -> list[dict]:
    return [orjson.loads(line) for line in crm(platform, *args, "--json").stdout.splitlines() if line.strip()]


def listed(platform, keys: set[str], *filters: str) -> list[dict]:
    """The dead letters of these original keys, as ``crm deadletter list --json`` shows them."""
    return [d for d in crm_json(platform, "deadletter", "list", *filters) if d["key"] in keys]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    consumer.close()
    return ends


def record_at(bootstrap: str, topic: str, partition: int, offset: int):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, offset)
    records = wait_for(lambda: consumer.poll(timeout_ms=1000).get(tp), 30, f"{topic}:{partition}:{offset}")
    consumer.close()
    assert records[0].offset == offset
    return records[0]


def send(p: KafkaProducer, topic: str, key: str, value: bytes, headers=(), partition: int | None = None):
    """Publish one record straight to the test's crm.touchpoints; its metadata (partition, offset, timestamp)."""
    return p.send(topic, key=key.encode(), value=value, headers=list(headers), partition=partition).get(30)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def timeline_rows(dsn: str, *event_ids: str) -> int:
    return query(dsn, "SELECT count(*) FROM customer_timeline WHERE event_id = ANY(%s)", list(event_ids))[0][0]


def test_a_batch_with_bad_records_delivers_the_good_ones_once_and_lists_the_bad_ones(platform, unique):
    bootstrap = platform.stack.kafka_bootstrap
    touchpoints = platform.topic(TOUCHPOINTS)
    good = [page(unique, n, n, anonymous_id=f"ck-{unique}") for n in (1, 2, 3)]
    unknown = {**page(unique, 4, 4, anonymous_id=f"ck-{unique}"), "type": "web.teleported"}
    no_identifier = {"specversion": "1.0", "id": f"{unique}-5", "source": "urn:test:shop", "type": "order.placed",
                     "data": {"order_id": "o5", "items": [{"sku": "A", "quantity": 1, "unit_price": "1"}]}}
    bad = {f"junk-{unique}": (b"\xff\xfe not json", []),
           f"invalid-{unique}": (orjson.dumps(no_identifier), CE),
           f"unknown-{unique}": (orjson.dumps(unknown), CE)}
    p = producer(bootstrap)
    # good and bad interleaved on one partition, all waiting before the processor starts: one batch
    sent = {}
    for key, (value, headers) in [(f"good-{unique}-1", (orjson.dumps(good[0]), CE)),
                                  (f"junk-{unique}", bad[f"junk-{unique}"]),
                                  (f"good-{unique}-2", (orjson.dumps(good[1]), CE)),
                                  (f"invalid-{unique}", bad[f"invalid-{unique}"]),
                                  (f"unknown-{unique}", bad[f"unknown-{unique}"]),
                                  (f"good-{unique}-3", (orjson.dumps(good[2]), CE))]:
        sent[key] = send(p, touchpoints, key, value, headers, partition=0)
    p.close()
    platform.processor()

    ids = [e["id"] for e in good]
    wait_for(lambda: timeline_rows(platform.dsn, *ids) == 3, 60, "the three good events applied")
    dead = wait_for(lambda: (d := listed(platform, set(bad))) and len(d) == 3 and d, 60, "three dead letters")
    # each good event once, none of the bad ones
    assert query(platform.dsn, "SELECT event_id, count(*) FROM customer_timeline WHERE event_id LIKE %s "
                               "GROUP BY 1 ORDER BY 1", f"{unique}-%") == [(i, 1) for i in sorted(ids)]
    assert query(platform.dsn, "SELECT event_count FROM customer_view WHERE customer_id = %s",
                 customer_of(platform.dsn, f"anonymous_id:ck-{unique}")) == [(3,)]

    by_key = {d["key"]: d for d in dead}
    expected = {f"junk-{unique}": ("undecodable", "not JSON"),
                f"invalid-{unique}": ("schema_violation", "no customer identifier"),
                f"unknown-{unique}": ("unknown_type", "web.teleported")}
    for key, (kind, why) in expected.items():
        d, (value, headers) = by_key[key], bad[key]
        assert (d["stage"], d["kind"], d["status"]) == ("identity", kind, "new"), d
        assert why in d["reason"], d["reason"]
        assert d["source"] == {"topic": touchpoints, "partition": 0, "offset": sent[key].offset}
        assert base64.b64decode(d["value_b64"]) == value
        assert d["headers"] == [[name, b64(raw)] for name, raw in headers]
        assert d["redrive"] is None and d["redrive_of"] is None
        assert d["deadletter"]["topic"] == platform.topic(DEADLETTER) and d["position"] == \
            f"{d['deadletter']['partition']}:{d['deadletter']['offset']}"
    assert by_key[f"invalid-{unique}"]["errors"]  # field by field

    # the filters
    assert {d["key"] for d in listed(platform, set(bad), "--kind", "undecodable")} == {f"junk-{unique}"}
    assert listed(platform, set(bad), "--stage", "customer_view") == []
    assert listed(platform, set(bad), "--since", "2100-01-01T00:00:00Z") == []
    assert len(listed(platform, set(bad), "--source-topic", touchpoints, "--status", "new")) == 3
    # the table and the summary by stage and kind
    table = crm(platform, "deadletter", "list", "--stage", "identity").stdout
    assert "by stage and kind" in table and "unknown_type" in table and "schema_violation" in table


def test_redrive_after_a_fix_applies_the_event_once_and_each_dead_letter_is_redriven_once(platform, unique):
    """A processor deployed with the wrong default region (US) refuses a mainland mobile number
    written without +86; after the fix (CN, the default) the redrive applies it. An unknown type
    fails again and can be re-driven again."""
    bootstrap = platform.stack.kafka_bootstrap
    touchpoints = platform.topic(TOUCHPOINTS)
    misconfigured = platform.processor(CRM_DEFAULT_REGION="US")
    local = f"139{int(unique, 16) % 10**8:08d}"
    call = {"specversion": "1.0", "id": f"{unique}-call", "source": "urn:test:cti", "type": "call.ended",
            "time": "2026-11-02T09:00:00Z",
            "data": {"call_id": f"c-{unique}", "phone_number": local, "queue": f"q-{unique}", "talk_seconds": 185}}
    unknown = {**page(unique, 2, 0, anonymous_id=f"ck-{unique}"), "type": "web.teleported"}
    originals = {f"call-{unique}": orjson.dumps(call), f"unknown-{unique}": orjson.dumps(unknown)}
    p = producer(bootstrap)
    sent = {key: send(p, touchpoints, key, value, CE) for key, value in originals.items()}
    p.close()
    dead = wait_for(lambda: (d := listed(platform, set(originals))) and len(d) == 2 and d, 60, "two dead letters")
    first = {d["key"]: d for d in dead}
    assert first[f"call-{unique}"]["kind"] == "schema_violation"
    assert "default region US" in first[f"call-{unique}"]["reason"]
    assert first[f"unknown-{unique}"]["kind"] == "unknown_type"
    call_dl, unknown_dl = first[f"call-{unique}"]["position"], first[f"unknown-{unique}"]["position"]

    misconfigured.stop()
    platform.processor()  # the fix: the default region back to CN

    before = end_offsets(bootstrap, touchpoints)
    # nothing selected: refused
    refused = crm(platform, "deadletter", "redrive", expect=2)
    assert "nothing selected" in refused.stderr
    crm(platform, "deadletter", "redrive", "--offset", "0:999999999", expect=2)  # no such dead letter
    # a dry run says what it would do and publishes nothing
    assert [(r["position"], r["action"]) for r in crm_json(platform, "deadletter", "redrive", "--offset", call_dl,
                                                           "--dry-run")] == [(call_dl, "would_redrive")]
    by_filter = crm_json(platform, "deadletter", "redrive", "--stage", "identity", "--kind", "unknown_type",
                         "--dry-run")
    assert unknown_dl in {r["position"] for r in by_filter} and call_dl not in {r["position"] for r in by_filter}
    assert {r["kind"] for r in by_filter} == {"unknown_type"}
    assert end_offsets(bootstrap, touchpoints) == before

    rows = {r["position"]: r for r in crm_json(platform, "deadletter", "redrive", "--offset", call_dl,
                                               "--offset", unknown_dl)}
    assert {pos: r["action"] for pos, r in rows.items()} == {call_dl: "redriven", unknown_dl: "redriven"}
    after = end_offsets(bootstrap, touchpoints)
    assert sum(after.values()) - sum(before.values()) == 2  # exactly the two selected
    for key, dl in ((f"call-{unique}", call_dl), (f"unknown-{unique}", unknown_dl)):
        to = rows[dl]["to"]
        assert to["topic"] == touchpoints and to["partition"] == sent[key].partition
        copy = record_at(bootstrap, touchpoints, to["partition"], to["offset"])
        assert copy.key == key.encode() and copy.value == originals[key]
        assert list(copy.headers) == CE + [("crm-redrive-of", dl.encode())]
        assert copy.timestamp == sent[key].timestamp  # the original receive time

    # the fixed processor applies the call once
    phone = f"phone:+86{local}"
    wait_for(lambda: timeline_rows(platform.dsn, call["id"]) == 1, 60, "the re-driven call applied")
    assert query(platform.dsn, "SELECT event_count FROM customer_view WHERE customer_id = %s",
                 customer_of(platform.dsn, phone)) == [(1,)]
    # the unknown type fails again: a new dead letter at its new source position, naming the old one
    again = wait_for(lambda: [d for d in listed(platform, {f"unknown-{unique}"}) if d["redrive_of"] == unknown_dl],
                     60, "the unknown type dead-lettered again")
    assert len(again) == 1 and again[0]["status"] == "new" and again[0]["kind"] == "unknown_type"
    assert again[0]["source"] == {"topic": touchpoints, **{k: rows[unknown_dl]["to"][k] for k in ("partition",
                                                                                                  "offset")}}
    status = {d["position"]: d for d in listed(platform, set(originals))}
    assert status[call_dl]["status"] == "redriven" and status[call_dl]["redrive"]["offset"] == rows[call_dl]["to"][
        "offset"]
    assert status[unknown_dl]["status"] == "failed_again"
    assert status[unknown_dl]["failed_again_as"] == again[0]["position"]

    # the same redrive again publishes nothing
    before = end_offsets(bootstrap, touchpoints)
    assert {r["position"]: r["action"] for r in crm_json(platform, "deadletter", "redrive", "--offset", call_dl,
                                                         "--offset", unknown_dl)} == \
        {call_dl: "skipped", unknown_dl: "skipped"}
    assert end_offsets(bootstrap, touchpoints) == before
    # the newer dead letter can be re-driven in its turn, naming only itself
    (row,) = crm_json(platform, "deadletter", "redrive", "--offset", again[0]["position"])
    assert row["action"] == "redriven"
    copy = record_at(bootstrap, touchpoints, row["to"]["partition"], row["to"]["offset"])
    assert list(copy.headers) == CE + [("crm-redrive-of", again[0]["position"].encode())]
    assert timeline_rows(platform.dsn, call["id"]) == 1


MEASURES = ("calls_offered", "calls_answered", "calls_handled", "handle_s", "contacts")


def queue_sums(dsn: str, queue: str) -> dict[str, float]:
    (row,) = query(dsn, f"SELECT {', '.join(f'coalesce(sum({m}), 0)' for m in MEASURES)} FROM indicator_minute "
                        "WHERE dim = 'queue' AND member = %s", queue)
    return dict(zip(MEASURES, row))


def test_redriving_an_event_that_already_succeeded_changes_nothing(platform, unique):
    """A dead letter whose event made it anyway (say a batch failed on a database restart, and a
    later copy got through): re-driving it counts the event once, in the view and the indicators."""
    bootstrap = platform.stack.kafka_bootstrap
    touchpoints = platform.topic(TOUCHPOINTS)
    platform.processor()
    phone = f"+86139{int(unique, 16) % 10**8:08d}"
    call = {"specversion": "1.0", "id": f"{unique}-call", "source": "urn:test:cti", "type": "call.ended",
            "time": "2026-11-02T09:00:00Z",
            "data": {"call_id": f"c-{unique}", "phone_number": phone, "queue": f"q-{unique}", "talk_seconds": 185}}
    key, value = f"call-{unique}", orjson.dumps(call)
    p = producer(bootstrap)
    md = send(p, touchpoints, key, value, CE)
    wait_for(lambda: timeline_rows(platform.dsn, call["id"]) == 1, 60, "the call applied")
    sums = wait_for(lambda: (s := queue_sums(platform.dsn, f"q-{unique}")) and s["calls_handled"] and s, 30,
                    "the call in the queue's indicators")

    # its dead letter as the batch runner writes one, twice (the batch ran again after a crash)
    record = Record(touchpoints, md.partition, md.offset, key.encode(), value, tuple(CE), md.timestamp)
    dead = deadletter(record, stage="identity", kind="processing_error",
                      reason="OperationalError: server closed the connection unexpectedly")
    twice = [p.send(platform.topic(DEADLETTER), key=dead.key, value=dead.value, headers=list(dead.headers)).get(30)
             for _ in "12"]
    positions = [f"{dl.partition}:{dl.offset}" for dl in twice]
    before = end_offsets(bootstrap, touchpoints)
    rows = crm_json(platform, "deadletter", "redrive", "--offset", positions[0], "--offset", positions[1])
    assert sorted(r["position"] for r in rows) == sorted(positions) and {r["action"] for r in rows} == {"redriven"}
    assert rows[0]["to"] == rows[1]["to"] and rows[0]["to"]["partition"] == md.partition
    after = end_offsets(bootstrap, touchpoints)
    assert sum(after.values()) - sum(before.values()) == 1  # one record, re-published once
    row = rows[0]

    # a later event of the same customer behind the copy: once it is applied, so is the copy
    sentinel = {"specversion": "1.0", "id": f"{unique}-profile", "source": "urn:test:crm", "type": "profile.updated",
                "time": "2026-11-02T10:00:00Z", "data": {"name": f"Customer {unique}", "phone": phone}}
    send(p, touchpoints, f"profile-{unique}", orjson.dumps(sentinel), CE, partition=md.partition)
    p.close()
    assert_equals_reference(platform.dsn, [call, sentinel])
    assert timeline_rows(platform.dsn, call["id"]) == 1
    assert query(platform.dsn, "SELECT event_count FROM customer_view WHERE customer_id = %s",
                 customer_of(platform.dsn, f"phone:{phone}")) == [(2,)]
    assert queue_sums(platform.dsn, f"q-{unique}") == sums
    (stored,) = query(platform.dsn, "SELECT next_offset FROM processor_offsets WHERE consumer = %s AND topic = %s "
                                    "AND partition = %s", platform.processor_id, touchpoints, md.partition)
    assert stored[0] > row["to"]["offset"]  # the identity stage did take the copy
    listed_rows = [d for d in crm_json(platform, "deadletter", "list") if d["position"] in positions]
    assert len(listed_rows) == 2
    for listed_row in listed_rows:
        assert listed_row["status"] == "redriven" and listed_row["kind"] == "processing_error"
        assert (listed_row["redrive"]["partition"], listed_row["redrive"]["offset"]) == (row["to"]["partition"],
                                                                                         row["to"]["offset"])
