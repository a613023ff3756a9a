"""Bad input, end to end: the collector and the query API fuzzed through their OpenAPI documents
(schemathesis) and with hypothesis. Nothing bad gets a 5xx or crashes a process: every refusal is a
4xx naming what is wrong, hostile but legal text is stored verbatim, and a record no schema
accepts, published straight to Kafka, goes to crm.deadletter with its reason while the records
behind it on the partition are applied.

One collector, processor and query API serve the whole module, on a database of its own. No
webhook dispatcher (``crm-webhooks``) is started: the query API only stores the subscriptions the
fuzzer registers, so no request ever goes to a URL the fuzzer made up.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import itertools
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from kafka import KafkaProducer

from events import pii
from events.envelope import NUL_MESSAGE, Touchpoint, validate
from events.identifiers import InvalidIdentifier, normalize
from events.kafka_binding import binary_record
from events.touchpoints import EVENT_TYPES
from services.common.settings import Settings
from services.common.topics import DEADLETTER, TOUCHPOINTS
from tests import http as keyed_http
from tests.feed import read_records
from tests.processes import VENV_BIN, Platform, wait_for


RUN = uuid.uuid4().hex[:6]
_serial = itertools.count(1)
MAX_EVENT_BYTES = Settings.model_fields["max_event_bytes"].default
MAX_BATCH_BYTES = Settings.model_fields["max_batch_bytes"].default
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck))

HOSTILE_TEXT = ("Robert'); DROP TABLE customer_view;-- <script>alert('x')</script> \" OR 1=1 #"
                " \x01\x07\x1b[31m\x7f\x85 😀 𠀀 👩‍👩‍👧 \u202eevil\u202c \u200f\u200e ﷽ \\u0000 %00 ${jndi:x}")
"""Legal everywhere free text is: SQL and HTML injection, C0 and C1 controls, non-BMP characters
(emoji, CJK extension B), a ZWJ sequence, bidirectional overrides and marks, an escaped NUL."""
HOSTILE_WORD = "".join(HOSTILE_TEXT.split())
"""The same without white space: legal in account and anonymous ids, too."""

HOSTILE = [
    "' OR '1'='1' --", "'; DROP TABLE customer_view; --", "1; SELECT pg_sleep(10)", "$$ || chr(0) || $$",
    "%' AND 1=1 --", "\\", "\\'", "\"", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
    "\"><svg/onload=alert(1)>", "{{7*7}}", "${jndi:ldap://127.0.0.1/x}", "../../etc/passwd", "%s%s%n",
    "\x00", "a\x00b", "\x00\x00", "\x01\x02\x03\x1b[2J", "\t\n\r\x0b\x0c", "\x7f\x80\x9f", "\u2028\u2029",
    "\ufeff", "\ufffd", "\uffff", "\U0010ffff", "😀", "𠀀", "👨‍👩‍👧‍👦", "🇨🇳", "\u202eevil\u202c", "\u200f\u200e",
    "Z̴̡̪͎a̸l̷g̵o̶", "海尔冰箱", "١٢٣", "null", "None", "undefined", "0", "-1", "true", "[]", "{}", "%00", "\\u0000",
    " ", "", HOSTILE_TEXT, HOSTILE_TEXT + "\x00", "x" * 201, "é" * 300,
]
hostile = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40),
                    st.tuples(st.sampled_from(HOSTILE), st.text(max_size=8)).map("".join))
"""Hostile strings: a fixed list plus any Unicode text (NUL and controls included; hypothesis never
makes lone surrogates, which JSON cannot carry unescaped anyway)."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | hostile,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile, inner, max_size=4), max_leaves=12)

TIME_EDGES = ["0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00",
              "9999-12-31T23:59:59Z", "1899-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "2026-11-01T10:00:00",
              "2026-11-01", "2026-13-01T00:00:00Z", "2026-11-01T25:00:00Z", "yesterday", "1e10", "-1", "nan",
              "99999999999999999999", "2026-11-01T10:00:00+24:00", "2026-11-01T10:00:00.1234567890Z"]
times = st.one_of(st.sampled_from(TIME_EDGES), hostile, st.integers().map(str),
                  st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m))))
                  .map(lambda d: d.isoformat()))


# -- the platform under test -------------------------------------------------------------------------

@dataclass
class Fuzzed:
    platform: Platform
    collector: str
    api: str

    def alive(self) -> None:
        """No process crashed."""
        for svc in self.platform.services:
            assert svc.proc.poll() is None, f"{svc.name} exited with {svc.proc.returncode}:\n{svc.log_tail()}"


@contextlib.contextmanager
def platform_to_fuzz(stack, name: str) -> Iterator[Fuzzed]:
    """A collector, processor and query API on a database and topics of their own."""
    plat = Platform(stack, stack.new_database(), stack.home / "logs" / name)
    try:
        _, collector = plat.collector()
        plat.processor()
        _, api = plat.api()
        yield Fuzzed(plat, collector, api)
    finally:
        plat.stop_all()


@pytest.fixture(scope="module")
def fuzzed(stack) -> Iterator[Fuzzed]:
    with platform_to_fuzz(stack, "test_fuzz") as plat:
        yield plat


@pytest.fixture(scope="module")
def http(fuzzed) -> Iterator[httpx.Client]:
    """A client sending the platform's admin key."""
    with keyed_http.Client(timeout=30, key=fuzzed.platform.admin_key) as client:
        yield client


# -- events ------------------------------------------------------------------------------------------

def valid_events() -> dict[str, dict[str, Any]]:
    """One valid event of each of several types, every kind of field filled, with identifiers (and
    ids and sources) of their own, so that whatever is accepted can be found again."""
    n = next(_serial)
    u = f"{RUN}-{n}"
    phone = f"+86 139 {n // 10000 % 10000:04d} {n % 10000:04d}"
    t = "2026-11-01T10:00:00Z"

    def event(kind: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"specversion": "1.0", "id": f"{kind}-{u}", "source": f"urn:fuzz:{u}", "type": kind, "time": t,
                **extra, "data": data}

    return {e["type"]: e for e in (
        event("web.page_viewed", {
            "anonymous_id": f"ck-{u}", "session_id": f"s-{u}", "url": "https://shop.example.com/p/1",
            "referrer": "https://search.example.com/?q=fridge", "title": "Fridge",
            "campaign": {"source": "newsletter", "medium": "email", "name": "spring"},
            "properties": {"note": "first visit", "tags": ["a", "b"]}}, subject="page", partnerid="p-1"),
        event("order.placed", {
            "order_id": f"o-{u}", "account_id": f"acct-{u}", "email": f"buyer-{u}@example.com", "currency": "CNY",
            "items": [{"sku": "HAIER-1", "name": "海尔冰箱", "quantity": 1, "unit_price": "3999.00"}]}),
        event("call.ended", {
            "call_id": f"c-{u}", "phone_number": phone, "direction": "inbound", "queue": "delivery",
            "agent": "agent-li", "talk_seconds": 185, "disposition": "solved", "notes": "about the delivery"}),
        event("email.received", {
            "message_id": f"m-{u}", "thread_id": f"t-{u}", "from": f"writer-{u}@example.com",
            "to": ["support@shop.example.com"], "subject": "Where is my order?", "body_text": "Hello"}),
        event("ticket.opened", {
            "ticket_id": f"tk-{u}", "account_id": f"acct-t-{u}", "kind": "complaint", "subject": "Broken",
            "body_text": "It broke", "priority": "high", "queue": "aftersales"}),
        event("survey.answered", {
            "survey_id": f"sv-{u}", "account_id": f"acct-s-{u}", "csat": 4, "nps": 9, "comment": "Good service",
            "agent": "agent-li", "rated_channel": "phone"}),
        event("profile.updated", {
            "account_id": f"acct-p-{u}", "name": "Li Na", "company": "Haier", "language": "zh",
            "birthday": "1990-05-01", "address": {"line1": "1 Road", "city": "Qingdao", "country": "CN"}},
              sentat=t),
    )}


Where = tuple[str | int, ...]
"""Where in a JSON value: member names and item indexes."""


def nodes(value: Any, path: Where = ()) -> Iterator[tuple[Where, Any]]:
    """Every member and item of a JSON value (not the value itself), depth first."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*path, key), child
        yield from nodes(child, (*path, key))


def string_paths(event: dict[str, Any]) -> list[Where]:
    return [p for p, v in nodes(event) if isinstance(v, str)]


def dotted(path: Where) -> str:
    return ".".join(str(p) for p in path)


def replaced(event: dict[str, Any], path: Where, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(event)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def unsearchable(path: Where, text: str) -> str:
    """``text``, but where it is a name or a company (searched by word prefix) with no word starting
    with "%": the test session shares one log, every later test's processor folds these events
    too, and test_customer_api expects no customer found by the prefix "%"."""
    return text.replace("%", "x%") if path in (("data", "name"), ("data", "company")) else text


def at(value: Any, path: Where) -> Any:
    for key in path:
        value = value[key]
    return value


# -- the collector's answers -------------------------------------------------------------------------

def post(fuzzed: Fuzzed, http: httpx.Client, body: Any, raw: bool = False) -> httpx.Response:
    """POST /v1/events; never a 5xx, and every refusal explains itself."""
    content = body if raw else orjson.dumps(body)
    r = http.post(f"{fuzzed.collector}/v1/events", content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, f"{r.status_code} for {content[:300]!r}: {r.text[:500]}"
    answer = r.json()
    if r.status_code >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"], answer
    for rejected in answer.get("rejected", []):
        assert rejected["reason"] and rejected["errors"], rejected
        for e in rejected["errors"]:
            assert isinstance(e["field"], str) and isinstance(e["message"], str) and e["message"], rejected
    return r


def errors_of(r: httpx.Response) -> list[tuple[str, str]]:
    (rejected,) = r.json()["rejected"]
    return [(e["field"], e["message"]) for e in rejected["errors"]]


def names(r: httpx.Response, path: Where) -> bool:
    """The refusal names the field: itself, something inside it, or the object it is a member of
    (model-level rules such as "a survey answer needs csat or nps", or "no customer identifier")."""
    where = dotted(path)
    return any(f == where or f.startswith(where + ".") or (f and where.startswith(f + "."))
               for f, _ in errors_of(r))


def same_number(kept: Any, text: str) -> bool:
    """A money field keeps the amount, not the digits as written: "١٢٣" (Arabic-Indic digits) is
    stored as "123", which is the same number."""
    try:
        return Decimal(str(kept)) == Decimal(text.strip())
    except (ArithmeticError, ValueError):
        return False


def decimals(value: Any) -> Any:
    """A JSON value with its numbers as the decimals they are: jsonb keeps the float 1e16 as
    10000000000000000, an int when read back."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Decimal(str(value))
    if isinstance(value, list):
        return [decimals(v) for v in value]
    if isinstance(value, dict):
        return {k: decimals(v) for k, v in value.items()}
    return value


def as_stored(tp: Touchpoint) -> dict[str, Any]:
    """The event's data as the API shows it back: every identity field that is one of the event's
    identifiers is stored as its pseudonym, which reads as the normalized identifier (events.pii)."""
    data = tp.to_cloudevent()["data"]
    keys = {i.key for i in tp.identifiers}
    for where, kind in pii.identity_paths(tp, data):
        try:
            ident = normalize(kind, pii.get_path(data, where))
        except (InvalidIdentifier, KeyError, IndexError, TypeError):
            continue
        if ident.key in keys:
            pii.set_path(data, where, ident.value)
    return data


@dataclass
class Accepted:
    """Events the collector accepted, to be found in the read model exactly as validated."""

    events: list[tuple[Touchpoint, Where | None, str | None]] = field(default_factory=list)

    def add(self, event: dict[str, Any], path: Where | None = None, text: str | None = None) -> None:
        tp = validate(orjson.loads(orjson.dumps(event)), received_at=datetime.now(timezone.utc))
        self.events.append((tp, path, text))

    def verify(self, fuzzed: Fuzzed, http: httpx.Client) -> None:
        """Wait until every accepted event is on its customer's timeline with its data as validated,
        and the hostile text, where it was put, verbatim (the data models trim outer white space)."""
        pending = list(self.events)

        def stored(tp: Touchpoint) -> dict[str, Any] | None:
            ident = tp.primary_identifier
            found = http.get(f"{fuzzed.api}/v1/customers", params={ident.kind: ident.value})
            assert found.status_code == 200, found.text
            for customer in found.json()["items"]:
                timeline = http.get(f"{fuzzed.api}/v1/customers/{quote(customer['customer_id'], safe='')}/timeline",
                                    params={"limit": 500})
                assert timeline.status_code == 200, timeline.text
                for item in timeline.json()["items"]:
                    if (item["event_id"], item["source"]) == (tp.id, tp.source):
                        return item
            return None

        def all_stored() -> bool:
            for entry in list(pending):
                tp, path, text = entry
                item = stored(tp)
                if item is None:
                    return False
                assert decimals(item["data"]) == decimals(as_stored(tp)), (tp.type, path, item["data"])
                if path and path[0] == "data":
                    kept = at(item["data"], path[1:])
                    assert (kept in text and kept.strip() == text.strip()) or same_number(kept, text), \
                        (path, text, kept)
                elif path in (("id",), ("source",)):
                    assert item["event_id" if path == ("id",) else "source"] == text
                pending.remove(entry)
            return True

        try:
            wait_for(all_stored, 120, "the accepted events in the read model")
        except AssertionError as exc:
            missing = [(tp.type, tp.primary_identifier.key, path) for tp, path, _ in pending]
            raise AssertionError(f"{exc}; missing {len(missing)}: {missing[:10]}") from None


# -- the collector: property tests ---------------------------------------------------------------------

def test_every_string_field_refuses_nul_by_name_and_keeps_hostile_text_verbatim(fuzzed, http):
    accepted = Accepted()
    kept: set[tuple[str, str, str]] = set()
    for kind, template in valid_events().items():
        for path in string_paths(template):
            with_nul = replaced(valid_events()[kind], path, HOSTILE_TEXT + "\x00")
            r = post(fuzzed, http, with_nul)
            assert r.status_code == 400 and (dotted(path), NUL_MESSAGE) in errors_of(r), (kind, path, r.text)

            for hostile_text in (HOSTILE_TEXT, HOSTILE_WORD):
                text = unsearchable(path, hostile_text)
                event = replaced(valid_events()[kind], path, text)
                r = post(fuzzed, http, event)
                if r.status_code == 202:
                    accepted.add(event, path, text)
                    kept.add((kind, dotted(path), hostile_text))
                else:
                    assert r.status_code == 400 and names(r, path), (kind, path, r.text)
    # free text keeps it all; account and anonymous ids all but white space (customer events carry
    # identifier keys space separated)
    assert {(kind, path, text) for kind, path in [
        ("web.page_viewed", "id"), ("web.page_viewed", "source"), ("web.page_viewed", "data.title"),
        ("web.page_viewed", "data.properties.tags.1"), ("web.page_viewed", "data.campaign.name"),
        ("order.placed", "data.items.0.name"), ("call.ended", "data.notes"), ("email.received", "data.body_text"),
        ("survey.answered", "data.comment"), ("profile.updated", "data.name"), ("profile.updated", "data.address.city"),
    ] for text in (HOSTILE_TEXT, HOSTILE_WORD)} <= kept
    assert {("web.page_viewed", "data.anonymous_id", HOSTILE_WORD), ("order.placed", "data.account_id", HOSTILE_WORD),
            ("survey.answered", "data.account_id", HOSTILE_WORD)} <= kept
    r = post(fuzzed, http, replaced(valid_events()["web.page_viewed"], ("data", "anonymous_id"), HOSTILE_TEXT))
    assert ("data.anonymous_id", f"anonymous_id {HOSTILE_TEXT!r} has white space inside, which no identifier may hold"
            ) in errors_of(r)
    accepted.verify(fuzzed, http)

    name = unsearchable(("data", "name"), HOSTILE_TEXT)
    profile = replaced(valid_events()["profile.updated"], ("data", "name"), name)
    assert post(fuzzed, http, profile).status_code == 202
    account = profile["data"]["account_id"]
    customer = wait_for(lambda: http.get(f"{fuzzed.api}/v1/customers", params={"account_id": account})
                        .json()["items"], 60, "the profile applied")[0]
    assert customer["traits"]["name"]["value"] == name
    assert customer["display_name"] == name
    fuzzed.alive()


def path_index(kind: str, path: tuple) -> int:
    """The ``pick`` that chooses ``path`` among the strings of the valid ``kind`` event."""
    return string_paths(valid_events()[kind]).index(path)


def test_hostile_strings_in_any_field_are_stored_verbatim_or_refused_by_name(fuzzed, http):
    accepted = Accepted()

    @settings(FUZZ, max_examples=300)
    @given(kind=st.sampled_from(sorted(valid_events())), pick=st.integers(min_value=0), text=hostile)
    # found before and kept: a price in Arabic-Indic digits (kept as the same number), a birthday "0"
    # (once read as 1970-01-01), NUL in a name
    @example(kind="order.placed", pick=path_index("order.placed", ("data", "items", 0, "unit_price")), text="١٢٣")
    @example(kind="profile.updated", pick=path_index("profile.updated", ("data", "birthday")), text="0")
    @example(kind="profile.updated", pick=path_index("profile.updated", ("data", "name")), text="a\x00b")
    def one(kind: str, pick: int, text: str) -> None:
        event = valid_events()[kind]
        paths = string_paths(event)
        path = paths[pick % len(paths)]
        text = unsearchable(path, text)
        event = replaced(event, path, text)
        r = post(fuzzed, http, event)
        if r.status_code == 202:
            assert "\x00" not in text
            accepted.add(event, path, text)
        else:
            assert r.status_code == 400 and names(r, path), (path, text, r.text)
            if "\x00" in text:
                assert (dotted(path), NUL_MESSAGE) in errors_of(r)

    one()
    accepted.verify(fuzzed, http)
    fuzzed.alive()


def test_wrong_types_are_refused_naming_the_field(fuzzed, http):
    accepted = Accepted()
    kinds_of_json = {
        "null": st.none(), "boolean": st.booleans(), "integer": st.integers(min_value=-2**63, max_value=2**64 - 1),
        "number": st.floats(allow_nan=False, allow_infinity=False), "string": hostile,
        "array": st.lists(st.integers(-2**63, 2**63 - 1) | st.text(max_size=3), max_size=3),
        "object": st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1) | st.text(max_size=3),
                                  max_size=3),
    }

    def json_kind(value: Any) -> str:
        return ("null" if value is None else "boolean" if isinstance(value, bool) else "integer"
                if isinstance(value, int) else "number" if isinstance(value, float) else "string"
                if isinstance(value, str) else "array" if isinstance(value, list) else "object")

    @settings(FUZZ, max_examples=300)
    @given(kind=st.sampled_from(sorted(valid_events())), pick=st.integers(min_value=0), data=st.data())
    def one(kind: str, pick: int, data) -> None:
        event = valid_events()[kind]
        paths = [p for p, _ in nodes(event)]
        path = paths[pick % len(paths)]
        other = data.draw(st.sampled_from(sorted(set(kinds_of_json) - {json_kind(at(event, path))})))
        value = data.draw(kinds_of_json[other])
        event = replaced(event, path, unsearchable(path, value) if isinstance(value, str) else value)
        r = post(fuzzed, http, event)
        if r.status_code == 202:  # lax where JSON is ambiguous: 185 for 185.0, a number for a time
            accepted.add(event)
        else:
            assert r.status_code == 400 and names(r, path), (path, at(event, path), r.text)

    one()
    accepted.verify(fuzzed, http)
    fuzzed.alive()


def test_unknown_event_types_are_refused_naming_the_type(fuzzed, http):
    @settings(FUZZ, max_examples=60)
    @given(name=hostile.filter(lambda s: s not in EVENT_TYPES)
           | st.sampled_from(sorted(EVENT_TYPES)).map(lambda s: s.upper())
           | st.sampled_from(sorted(EVENT_TYPES)).map(lambda s: s + " "))
    def one(name: str) -> None:
        r = post(fuzzed, http, replaced(valid_events()["web.page_viewed"], ("type",), name))
        assert r.status_code == 400 and names(r, ("type",)), r.text
        if 1 <= len(name) <= 200 and "\x00" not in name:
            assert r.json()["rejected"][0]["reason"] == "unknown_type"

    one()
    fuzzed.alive()


def test_arbitrary_json_is_refused_with_reasons(fuzzed, http):
    @settings(FUZZ, max_examples=200)
    @given(value=json_values | st.lists(json_values, max_size=3) | st.builds(lambda v: {"batch": v}, json_values))
    def one(value: Any) -> None:
        r = post(fuzzed, http, value)
        assert r.status_code in (202, 400), r.text

    one()
    fuzzed.alive()


def test_malformed_json_bytes_are_refused_as_such(fuzzed, http):
    good = orjson.dumps(valid_events()["order.placed"])

    def mutated(position: int, op: str, byte: int) -> bytes:
        i = position % len(good)
        return {"cut": good[:i], "drop": good[:i] + good[i + 1:], "insert": good[:i] + bytes([byte]) + good[i:],
                "flip": good[:i] + bytes([good[i] ^ byte]) + good[i + 1:]}[op]

    @settings(FUZZ, max_examples=200)
    @given(body=st.binary(max_size=300)
           | st.builds(mutated, st.integers(min_value=0), st.sampled_from(["cut", "drop", "insert", "flip"]),
                       st.integers(1, 255))
           | st.sampled_from([b"", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"[" * 2000 + b"]" * 2000, b"NaN",
                              b'{"a": Infinity}', b'{"a": 1e400}', b"{'id': 1}", b'{"a":1,}', b'{"a"', b"\x00"]))
    def one(body: bytes) -> None:
        r = post(fuzzed, http, body, raw=True)
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON"), r.text

    one()
    fuzzed.alive()


def test_surrogates_escaped_in_json_lone_are_malformed_and_paired_are_text(fuzzed, http):
    for lone in ("\\ud800", "\\udfff", "x\\ud83dy", "\\ude00\\ud83d"):
        body = orjson.dumps(valid_events()["web.page_viewed"]).replace(b'"Fridge"', f'"{lone}"'.encode())
        r = post(fuzzed, http, body, raw=True)
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"] and "surrogate" in r.json()["error"]
    event = valid_events()["web.page_viewed"]
    body = orjson.dumps(event).replace(b'"Fridge"', b'"\\ud83d\\ude00 \\ud840\\udc00"')
    assert post(fuzzed, http, body, raw=True).status_code == 202
    accepted = Accepted()
    accepted.add(replaced(event, ("data", "title"), "😀 𠀀"), ("data", "title"), "😀 𠀀")
    accepted.verify(fuzzed, http)


def test_oversize_bodies_and_events_get_413_or_an_oversize_rejection(fuzzed, http):
    def big(size: int) -> dict[str, Any]:
        return replaced(valid_events()["web.page_viewed"], ("data", "properties", "note"), "x" * size)

    # a body over the limit, announced by Content-Length
    body = orjson.dumps([big(20_000) for _ in range(MAX_BATCH_BYTES // 20_000 + 2)])
    r = post(fuzzed, http, body, raw=True)
    assert r.status_code == 413 and str(MAX_BATCH_BYTES) in r.json()["error"]

    # the same, chunked (no Content-Length): refused once the limit is passed
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 16_384):
            yield body[i:i + 16_384]
    r = http.post(f"{fuzzed.collector}/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and str(MAX_BATCH_BYTES) in r.json()["error"], r.text

    # one event over its limit, alone and in a batch beside a good one
    r = post(fuzzed, http, big(MAX_EVENT_BYTES))
    assert r.status_code == 413 and str(MAX_EVENT_BYTES) in r.json()["error"]
    assert r.json()["rejected"][0]["reason"] == "oversize"
    good = valid_events()["call.ended"]
    r = post(fuzzed, http, [big(MAX_EVENT_BYTES), good])
    assert r.status_code == 202 and r.json()["accepted"] == [good["id"]]
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [(0, "oversize")]
    fuzzed.alive()


@pytest.mark.parametrize("path, value, field_name", [
    (("time",), "0001-01-01T00:00:00+01:00", "time"),          # was a 500: the UTC conversion overflowed
    (("time",), "9999-12-31T23:59:59-01:00", "time"),          # was a 500
    (("time",), "9999-12-31T23:59:59Z", "time"),               # was accepted; every fold then dead-lettered it
    (("time",), "0001-01-01T00:00:00Z", "time"),               # likewise
    (("time",), "1899-12-31T23:59:59Z", "time"),
    (("time",), "2200-01-01T00:00:00Z", "time"),
    (("sentat",), "9999-12-31T00:00:00Z", "sentat"),           # was a 500: the clock correction overflowed
    (("sentat",), "2199-12-31T00:00:00Z", "time"),             # the corrected time is out of range
])
def test_times_no_fold_can_use_are_refused_naming_the_field(fuzzed, http, path, value, field_name):
    event = replaced(valid_events()["profile.updated"], path, value)
    if field_name == "time" and path == ("sentat",):
        event["time"] = "1901-01-01T00:00:00Z"
    r = post(fuzzed, http, event)
    assert r.status_code == 400 and any(f == field_name and "1900-01-01" in m for f, m in errors_of(r)), r.text


def test_nesting_is_refused_naming_where_it_goes_too_deep(fuzzed, http):
    def nested(depth: int) -> bytes:
        event = replaced(valid_events()["web.page_viewed"], ("data", "properties", "deep"), "DEEP")
        return orjson.dumps(event).replace(b'"DEEP"', b"[" * depth + b"1" + b"]" * depth)

    for depth in (40, 300, 900):  # 300 and 900 were 500s: the collector could not encode them again
        r = post(fuzzed, http, nested(depth), raw=True)
        assert r.status_code == 400 and names(r, ("data", "properties", "deep")), r.text
        assert any("levels deep" in m for _, m in errors_of(r))
    r = post(fuzzed, http, nested(1100), raw=True)  # deeper than any JSON the collector parses
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")
    shallow: Any = 1
    for _ in range(20):
        shallow = {"x": shallow}
    event = replaced(valid_events()["web.page_viewed"], ("data", "properties", "deep"), shallow)
    assert post(fuzzed, http, event).status_code == 202
    accepted = Accepted()
    accepted.add(event)
    accepted.verify(fuzzed, http)


# -- the processor: records published straight to Kafka ----------------------------------------------

def test_records_no_schema_accepts_are_dead_lettered_with_the_reason_and_the_partition_goes_on(fuzzed, http):
    bootstrap = fuzzed.platform.stack.kafka_bootstrap
    prefix = f"fuzz-{uuid.uuid4().hex[:8]}"
    structured = [("content-type", b"application/cloudevents+json")]

    def web(**changes: Any) -> dict[str, Any]:
        event = valid_events()["web.page_viewed"]
        for dotted_path, value in changes.items():
            event = replaced(event, tuple(dotted_path.split("__")), value)
        return event

    deep: Any = 1
    for _ in range(60):
        deep = {"x": deep}
    binary_value, binary_headers = binary_record(web(id="x\x00y"))
    # name: (value, headers, kind, field named in the errors)
    bad: dict[str, tuple[bytes | None, list, str, str | None]] = {
        "nul-text": (orjson.dumps(web(data__url="https://a\x00b")), structured, "schema_violation", "data.url"),
        "nul-member": (orjson.dumps(web(data__properties={"a\x00b": 1})), structured, "schema_violation",
                       "data.properties.a\\u0000b"),
        "nul-binary": (binary_value, binary_headers, "schema_violation", "id"),
        "year-1": (orjson.dumps(web(time="0001-01-01T00:00:00+01:00")), structured, "schema_violation", "time"),
        "year-9999": (orjson.dumps(web(time="9999-12-31T23:59:59Z")), structured, "schema_violation", "time"),
        "deep": (orjson.dumps(web(data__properties={"deep": deep})), structured, "schema_violation", None),
        "wrong-type": (orjson.dumps(web(data__url=5)), structured, "schema_violation", "data.url"),
        "unknown-type": (orjson.dumps(web(type="web.page_scrolled")), structured, "unknown_type", "type"),
        "not-json": (b"\xff\xfe{", structured, "undecodable", None),
        "lone-surrogate": (orjson.dumps(web()).replace(b'"Fridge"', b'"\\ud800"'), structured, "undecodable", None),
        "array": (orjson.dumps([web()]), structured, "undecodable", None),
        "tombstone": (None, structured, "undecodable", None),
        "header-not-utf8": (orjson.dumps(web()), [*structured, ("x-trace", b"\xff\xfe")], "undecodable", None),
    }
    # a valid event under a header name holding U+0000: applied (the event archive keeps header names
    # base64, as it keeps the values)
    odd = web()
    good = web()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    touchpoints = fuzzed.platform.topic(TOUCHPOINTS)
    for name, (value, headers, _, _) in bad.items():
        producer.send(touchpoints, key=f"{prefix}-{name}".encode(), value=value, headers=headers, partition=0)
    producer.send(touchpoints, key=f"{prefix}-odd".encode(), value=orjson.dumps(odd),
                  headers=[*structured, ("x-\x00", b"1")], partition=0)
    # behind them on the same partition: a good event, keyed by bytes that are no text at all
    producer.send(touchpoints, key=b"\xff\x00" + prefix.encode(), value=orjson.dumps(good), headers=structured,
                  partition=0)
    producer.flush()
    producer.close()

    anonymous_id = good["data"]["anonymous_id"]
    wait_for(lambda: http.get(f"{fuzzed.api}/v1/customers", params={"anonymous_id": anonymous_id}).json()["items"],
             90, "the good event behind the bad ones applied")

    dead: dict[str, dict[str, Any]] = {}

    def odd_applied() -> bool:
        return bool(http.get(f"{fuzzed.api}/v1/customers", params={"anonymous_id": odd["data"]["anonymous_id"]})
                    .json()["items"])

    def all_dead() -> bool:
        dead.clear()
        for record in read_records(bootstrap, [fuzzed.platform.topic(DEADLETTER)]):
            key = (record.key or b"").decode("utf-8", "replace")
            if key.startswith(prefix + "-"):
                dead[key[len(prefix) + 1:]] = orjson.loads(record.value)
        return set(bad) <= set(dead) and odd_applied()

    wait_for(all_dead, 60, f"{len(bad)} dead letters")
    assert "odd" not in dead, dead["odd"]
    for name, (value, _, kind, field_name) in bad.items():
        letter = dead[name]
        assert (letter["stage"], letter["kind"]) == ("identity", kind), (name, letter)
        assert letter["reason"] and letter["source"]["topic"] == touchpoints, (name, letter)
        assert letter["value_b64"] == (base64.b64encode(value).decode() if value is not None else None)
        if field_name is not None:
            assert field_name in [e["field"] for e in letter["errors"]], (name, letter)
    fuzzed.alive()


# -- the query API: hostile parameters ---------------------------------------------------------------

@pytest.fixture(scope="module")
def customer(fuzzed, http) -> str:
    return make_customer(fuzzed, http)


def make_customer(fuzzed: Fuzzed, http) -> str:
    """A customer with a merge, a few touchpoints and a state, for lookups to reach deep."""
    events = valid_events()
    web, order = events["web.page_viewed"], events["order.placed"]
    web["data"]["user_id"] = order["data"]["account_id"]
    assert post(fuzzed, http, [order, web, events["survey.answered"] | {
        "data": {**events["survey.answered"]["data"], "account_id": order["data"]["account_id"]}}]).status_code == 202
    found = wait_for(lambda: (c := http.get(f"{fuzzed.api}/v1/customers",
                                            params={"account_id": order["data"]["account_id"]}).json()["items"])
                     and c[0]["event_count"] == 3 and c[0], 60, "the customer applied")
    return found["customer_id"]


def quoted(text: str) -> str:
    return quote(text, safe="")


def api_get(fuzzed: Fuzzed, http: httpx.Client, path: str, params: dict[str, str]) -> httpx.Response:
    """GET on the query API: never a 5xx; a 4xx says what is wrong."""
    url = f"{fuzzed.api}{path}"
    if path.startswith("/v1/stream/"):
        with http.stream("GET", url, params=params) as r:
            if r.status_code == 200:  # the stream goes on: only its status and type are read
                assert r.headers["content-type"].startswith("text/event-stream")
                return r
            r.read()
    else:
        r = http.get(url, params=params)
    assert r.status_code < 500, (path, params, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert isinstance(r.json().get("error"), str) and r.json()["error"], (path, params, r.text)
    return r


def requests_for(cid: str):
    """(path, query) pairs with hostile text in path segments, identifiers, searches, cursors and times."""
    c = quoted(cid)
    segment = st.sampled_from(["", "/timeline", "/merges", "/state"])
    lookup = st.sampled_from(["email", "phone", "account_id", "anonymous_id", "q", "segment", "lifecycle", "tier",
                              "at_risk", "limit"])
    paged = st.sampled_from([{"q": "li"}, {"at_risk": "true"}, {"lifecycle": "customer"}, {"tier": "high"}])
    member = st.sampled_from(["channel", "queue", "agent", "segment", "indicator", "window", "dimension"])
    return st.one_of(
        st.tuples(hostile, segment).map(lambda t: (f"/v1/customers/{quoted(t[0])}{t[1]}", {})),
        st.tuples(lookup, hostile).map(lambda t: ("/v1/customers", {t[0]: t[1]})),
        st.tuples(paged, hostile).map(lambda t: ("/v1/customers", {**t[0], "cursor": t[1]})),
        st.tuples(st.sampled_from(["cursor", "limit", "order"]), hostile)
        .map(lambda t: (f"/v1/customers/{c}/timeline", {t[0]: t[1]})),
        hostile.map(lambda v: (f"/v1/customers/{c}/timeline",
                               {"cursor": base64.urlsafe_b64encode(orjson.dumps([v, v])).decode()})),
        times.map(lambda v: (f"/v1/customers/{c}", {"as_of": v})),
        times.map(lambda v: ("/v1/indicators", {"at": v})),
        st.tuples(member, hostile).map(lambda t: ("/v1/indicators", {t[0]: t[1]})),
        st.tuples(times, times).map(lambda t: ("/v1/indicators/series", {"channel": "phone", "start": t[0],
                                                                          "end": t[1]})),
        st.tuples(st.sampled_from(["start", "end"]), times).map(lambda t: ("/v1/indicators/series", {t[0]: t[1]})),
        st.tuples(member, hostile).map(lambda t: ("/v1/indicators/series", {t[0]: t[1]})),
        st.tuples(member, hostile).map(lambda t: ("/v1/stream/indicators", {t[0]: t[1]})),
        st.tuples(hostile, hostile).map(lambda t: (f"/v1/webhooks/{quoted(t[0])}/deliveries", {"cursor": t[1]})),
        st.tuples(hostile, hostile).map(lambda t: (f"/v1/webhooks/{quoted(t[0])}/deliveries/{quoted(t[1])}", {})),
        hostile.map(lambda v: (f"/v1/webhooks/{quoted(v)}", {})),
    )


def test_hostile_path_and_query_parameters_get_a_4xx_or_an_answer(fuzzed, http, customer):
    @settings(FUZZ, max_examples=400)
    @given(request=requests_for(customer))
    def one(request: tuple[str, dict[str, str]]) -> None:
        api_get(fuzzed, http, *request)

    one()
    fuzzed.alive()


@pytest.mark.parametrize("path, params, named", [
    # each was a 500: PostgreSQL refuses U+0000 in a query parameter
    ("/v1/customers/a\x00b", {}, "customer_id:"),
    ("/v1/customers/a\x00b/timeline", {}, "customer_id:"),
    ("/v1/customers/a\x00b/merges", {}, "customer_id:"),
    ("/v1/customers/a\x00b/state", {}, "customer_id:"),
    ("/v1/customers", {"q": "li\x00"}, "q:"),
    ("/v1/customers", {"email": "a\x00@example.com"}, "email:"),
    ("/v1/customers", {"account_id": "a\x00"}, "account_id:"),
    ("/v1/customers", {"q": "li", "cursor": "\x00"}, "cursor:"),
    ("/v1/customers", {"at_risk": "true", "cursor": "1:\x00"}, "cursor:"),
    ("/v1/indicators", {"channel": "a\x00"}, "channel:"),
    ("/v1/indicators/series", {"queue": "a\x00"}, "queue:"),
    ("/v1/webhooks/wh\x00", {}, "subscription_id:"),
    # and these: the windows ran past the range of a datetime
    ("/v1/indicators", {"at": "0001-01-01T00:00:00Z"}, "at must be between 1900-01-01"),
    ("/v1/indicators", {"at": "9999-12-31T23:59:59Z"}, "at must be between 1900-01-01"),
    ("/v1/indicators/series", {"channel": "phone", "end": "0001-01-01T00:01:00Z"}, "end must be between 1900-01-01"),
    # the same rule wherever a time is asked for
    ("/v1/indicators/series", {"channel": "phone", "start": "9999-12-31T23:00:00Z", "end": "9999-12-31T23:59:00Z"},
     "start must be between 1900-01-01"),
])
def test_parameters_no_query_can_use_are_refused_by_name(fuzzed, http, path, params, named):
    r = api_get(fuzzed, http, quote(path, safe="/"), params)
    assert r.status_code == 400 and r.json()["error"].startswith(named), r.text


def test_times_of_an_existing_customer_postgresql_cannot_take_are_answered(fuzzed, http, customer):
    c = quoted(customer)
    # was a 500: PostgreSQL takes UTC offsets up to ±15:59 only (found by schemathesis)
    then = api_get(fuzzed, http, f"/v1/customers/{c}", {"as_of": "2027-05-14T09:01:38+22:16"})
    assert then.status_code == 200 and then.json()["as_of"].startswith("2027-05-13T10:45:38")
    assert api_get(fuzzed, http, f"/v1/customers/{c}", {"as_of": "0873-05-14T09:01:38+22:16"}).status_code == 400
    # a cursor is opaque, but anyone can make one up
    def cursor(time: str, key: str) -> str:
        return base64.urlsafe_b64encode(orjson.dumps([time, key])).decode().rstrip("=")

    r = api_get(fuzzed, http, f"/v1/customers/{c}/timeline", {"cursor": cursor("2026-11-01T10:00:00+22:16", "k")})
    assert r.status_code == 200  # was a 500, as above
    for time, key in [("0001-01-01T00:00:00+01:00", "k"), ("2026-11-01T10:00:00", "k"),
                      ("2026-11-01T10:00:00Z", "k\x00")]:
        r = api_get(fuzzed, http, f"/v1/customers/{c}/timeline", {"cursor": cursor(time, key)})
        assert r.status_code == 400 and "cursor" in r.json()["error"], (time, key, r.text)
    first = api_get(fuzzed, http, f"/v1/customers/{c}/timeline", {"limit": 1}).json()
    assert api_get(fuzzed, http, f"/v1/customers/{c}/timeline", {"cursor": first["next_cursor"]}).status_code == 200


def test_request_bodies_holding_nul_are_refused_by_field(fuzzed, http, customer):
    r = http.post(f"{fuzzed.api}/v1/webhooks", json={"url": "http://127.0.0.1:9/\x00", "description": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.url", r.text
    r = http.post(f"{fuzzed.api}/v1/webhooks", json={"url": "http://127.0.0.1:9/", "segments": ["a\x00"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.segments", r.text
    r = http.post(f"{fuzzed.api}/v1/customers/{quoted(customer)}/unmerge", json={"alias": "a\x00", "reason": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.alias", r.text  # was a 500
    (email,) = http.get(f"{fuzzed.api}/v1/customers/{quoted(customer)}").json()["identities"]["email"]
    r = http.post(f"{fuzzed.api}/v1/customers/{quoted(customer)}/unmerge",
                  json={"identifier": {"kind": "email", "value": email}, "reason": "x", "operator": "o\x00"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.operator", r.text  # was a 500
    r = http.post(f"{fuzzed.api}/v1/customers/{quoted(customer)}/merge", json={"with": "a\x00", "reason": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.with", r.text


# -- schemathesis: every operation of both OpenAPI documents ------------------------------------------

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
SEED = int(os.environ.get("CRM_FUZZ_SEED", "20261207"))
"""schemathesis's seed: the same requests every run (CRM_FUZZ_SEED explores others; a failure names it)."""


def schemathesis_run(openapi: str, workdir: Path, max_examples: int, config: str = "", *options: str) -> str:
    """``schemathesis run`` on a served OpenAPI document: its examples, coverage (boundary values and
    negative cases of every parameter) and fuzzing phases on every operation; no 5xx, and statuses,
    content types and bodies as documented. Fails with schemathesis's report (and curl commands that
    reproduce each failure).

    The command line rather than the pytest plugin: schemathesis 4's ``from_fixture``, the only way
    to fuzz a document served by a process a fixture starts, uses pytest internals pytest 9.2 removed.
    """
    (workdir / "schemathesis.toml").write_text(config)
    done = subprocess.run(
        [str(VENV_BIN / "schemathesis"), "--no-color", "--config-file", str(workdir / "schemathesis.toml"), "run",
         openapi, "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", str(max_examples),
         "--workers", "1", "--request-timeout", "30", "--seed", str(SEED), "--generation-deterministic", *options],
        cwd=workdir, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, f"schemathesis --seed {SEED}:\n" + done.stdout[-30_000:] + done.stderr[-5_000:]
    return done.stdout


def test_collector_openapi_document(fuzzed, tmp_path):
    out = schemathesis_run(f"{fuzzed.collector}/openapi.json", tmp_path, 100, "",
                           "--header", f"Authorization: Bearer {fuzzed.platform.admin_key}")
    # /v1/events and the channel adapters' routes (services/ingest/adapters)
    operations = sum(len(ops) for ops in httpx.get(f"{fuzzed.collector}/openapi.json").json()["paths"].values())
    assert operations >= 13 and f"{operations} selected / {operations} total" in out
    fuzzed.alive()


def test_query_api_openapi_document(stack, tmp_path):
    """Every operation but the endless live stream (its parameters are fuzzed above). Half the
    generated customer and subscription ids are real ones, so lookups, timelines, state, unmerge and
    the subscription routes are reached beyond their 404; the subscription's URL is on loopback, and
    no dispatcher runs to call it anyway. The fuzzer erases, unmerges and revokes keys (it finds their
    ids in the answers), so it runs on a platform of its own, not the module's."""
    with platform_to_fuzz(stack, "test_fuzz_query_api") as fuzzed, \
            keyed_http.Client(timeout=30, key=fuzzed.platform.admin_key) as http:
        query_api_openapi_document(fuzzed, http, make_customer(fuzzed, http), tmp_path)


def query_api_openapi_document(fuzzed: Fuzzed, http, customer: str, tmp_path: Path) -> None:
    subscription = http.post(f"{fuzzed.api}/v1/webhooks", json={"url": "http://127.0.0.1:9/fuzz"})
    assert subscription.status_code == 201, subscription.text
    aliases = http.get(f"{fuzzed.api}/v1/customers/{quoted(customer)}").json()["aliases"]
    config = f"""
[dictionaries.customers]
values = {orjson.dumps([customer, *aliases]).decode()}
[dictionaries.subscriptions]
values = {orjson.dumps([subscription.json()["id"]]).decode()}
[parameters]
"path.customer_id" = {{ dictionary = "customers", probability = 0.5 }}
"path.subscription_id" = {{ dictionary = "subscriptions", probability = 0.5 }}
"""
    out = schemathesis_run(f"{fuzzed.api}/openapi.json", tmp_path, 50, config,
                           "--exclude-path", "/v1/stream/indicators",
                           "--header", f"Authorization: Bearer {fuzzed.platform.admin_key}")
    operations = sum(len(ops) for ops in http.get(f"{fuzzed.api}/openapi.json").json()["paths"].values())
    assert f"{operations - 1} selected / {operations} total" in out
    fuzzed.alive()
