"""Personal data end to end: sealed before Kafka and PostgreSQL, revealed only through the API,
exported on request, and erased by crypto-shredding so that no stored copy can be read again.

The erasure test writes one person's personal data through every channel, erases the person, and
then searches every topic, every table of every schema and every file under the stack's folder
(Kafka's log segments, PostgreSQL's data files and WAL, every service's log) for any of it; then
it rebuilds every projection from the log and checks the person does not come back.
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg2

from events import pii
from services.common import apikeys
from services.common.topics import CUSTOMER_CHANGES, CUSTOMER_STATE, TOUCHPOINTS
from services.common.vault import Vault, load_master_key
from tests.feed import read_records, read_topic
from tests.processes import VENV_BIN, wait_for


def admin_key(dsn: str) -> dict[str, str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        _, full = apikeys.create(cur, name="privacy-test", scopes=["admin"])
    return {"Authorization": f"Bearer {full}"}


def at(minutes: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(minutes=minutes)).isoformat()


def person(unique: str) -> dict[str, str]:
    digits = str(int(unique, 16))[-8:].rjust(8, "7")
    return {
        "name": f"Zhangwei Secretname{unique}",
        "email": f"zw.{unique}@mailbox-{unique}.example.org",
        "phone": f"+86139{digits}",
        "national_phone": f"139{digits}",
        "account": f"acct-{unique}",
        "cookie": f"cookie-{unique}",
        "street": f"88 Hiddenstreet {unique}",
        "complaint": f"my parcel {unique} never came and nobody answers",
        "survey": f"slow refund {unique} terrible",
        "note": f"caller {unique} angry about the invoice",
        "company": f"Acme{unique} Trading",
    }


def touchpoints(p: dict[str, str], unique: str) -> list[dict]:
    def ev(n: int, type_: str, data: dict, minutes: int) -> dict:
        return {"id": f"priv-{unique}-{n}", "source": "test/privacy", "type": type_, "time": at(minutes), "data": data}

    return [
        ev(1, "web.page_viewed", {"anonymous_id": p["cookie"], "url": "https://shop.example/pricing"}, 60),
        ev(2, "web.page_viewed", {"anonymous_id": p["cookie"], "user_id": p["account"],
                                  "url": "https://shop.example/cart"}, 59),
        ev(3, "profile.updated", {"account_id": p["account"], "email": p["email"], "phone": p["national_phone"],
                                  "name": p["name"], "company": p["company"], "birthday": "1988-04-05",
                                  "address": {"line1": p["street"], "city": "Shanghai"},
                                  "properties": {"nickname": f"Wei{unique}"}}, 58),
        ev(4, "order.placed", {"account_id": p["account"], "email": p["email"], "order_id": f"o-{unique}",
                               "items": [{"sku": "A", "quantity": 1, "unit_price": "99.00"}]}, 57),
        ev(5, "email.received", {"from": p["email"], "to": ["service@shop.example"], "message_id": f"m-{unique}",
                                 "subject": f"Where is parcel {unique}", "body_text": p["complaint"]}, 50),
        ev(6, "call.started", {"phone_number": p["phone"], "call_id": f"c-{unique}", "queue": "billing"}, 40),
        ev(7, "call.ended", {"phone_number": p["phone"], "call_id": f"c-{unique}", "queue": "billing",
                             "talk_seconds": 120, "notes": p["note"]}, 38),
        ev(8, "ticket.opened", {"email": p["email"], "ticket_id": f"t-{unique}", "kind": "complaint",
                                "subject": "parcel", "body_text": p["complaint"]}, 30),
        ev(9, "survey.answered", {"email": p["email"], "survey_id": f"s-{unique}", "csat": 1, "nps": 2,
                                  "comment": p["survey"]}, 20),
        ev(10, "consent.changed", {"email": p["email"], "purpose": "marketing", "channel": "email",
                                   "granted": True}, 10),
    ]


def secrets_of(p: dict[str, str]) -> list[str]:
    """What must be found nowhere: each personal value, in the forms it could be stored in."""
    values = [p["name"], p["email"], p["phone"], p["national_phone"], p["street"], p["complaint"], p["survey"],
              p["note"], p["company"], f"Secretname{p['account'][5:]}", f"Hiddenstreet {p['account'][5:]}",
              p["account"], p["cookie"]]
    return values + [v.lower() for v in values]


def all_records(platform) -> list:
    """Every record of every topic of the platform, to their ends."""
    return read_records(platform.stack.kafka_bootstrap, platform.topics)


def record_bytes(r) -> bytes:
    return b"\n".join([r.key or b"", r.value or b""] + [k.encode() + b"=" + (v or b"") for k, v in r.headers])


def database_text(dsn: str) -> dict[str, str]:
    """Every row of every table of every schema, as text, by table (the owner: it reads them all)."""
    out = {}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("""SELECT table_schema, table_name FROM information_schema.tables
                       WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')""")
        for schema, table in cur.fetchall():
            cur.execute(f'SELECT coalesce(string_agg(t::text, E\'\\n\'), \'\') FROM "{schema}"."{table}" t')
            out[f"{schema}.{table}"] = cur.fetchone()[0]
    return out


def files_holding(root: Path, needles: list[str]) -> str:
    """grep every file under ``root`` (binary too) for any of ``needles``; the names of those that hold one."""
    args = ["grep", "-rlaF"] + [a for n in sorted(set(needles)) for a in ("-e", n)] + [str(root)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    # the broker deletes other tests' topics in the background: a file gone while grep walks is no error
    vanished = all("No such file or directory" in line for line in done.stderr.splitlines())
    assert done.returncode in (0, 1) or (done.returncode == 2 and vanished), done.stderr
    return done.stdout.strip()


def vault_for(platform) -> Vault:
    return Vault(load_master_key(platform.env()["CRM_MASTER_KEY"], None))


def test_personal_data_is_sealed_revealed_to_the_api_exported_and_erased_for_good(platform, unique):
    headers = admin_key(platform.dsn)
    _, collector = platform.collector()
    platform.processor(CRM_STATE_TICK_S="1")
    _, api = platform.api()
    p = person(unique)
    events = touchpoints(p, unique)
    answer = httpx.post(f"{collector}/v1/events", json=events, headers=headers, timeout=30)
    assert answer.status_code == 202 and not answer.json()["rejected"], answer.text

    def customer() -> str | None:
        found = httpx.get(f"{api}/v1/customers", params={"email": p["email"]}, headers=headers, timeout=10).json()
        items = found.get("items") or []
        if items and items[0].get("event_count", 0) >= len(events):
            return items[0]["customer_id"]
        return None

    cid = wait_for(customer, 90, "the customer of every channel")

    # stored: sealed everywhere, before any erasure
    every_table = database_text(platform.stack.as_role(platform.dsn, "owner"))
    leaks = {t: [s for s in secrets_of(p) if s in text] for t, text in every_table.items()}
    assert {t: s for t, s in leaks.items() if s} == {}, "personal data stored in the clear"
    mine = [r for r in all_records(platform) if f"priv-{unique}".encode() in (r.value or b"")
            or cid.encode() in (r.key or b"")]
    assert mine and not [s for r in mine for s in secrets_of(p) if s.encode() in record_bytes(r)]
    sealed = json.loads(next(r.value for r in mine if r.topic == platform.topic(TOUCHPOINTS)))
    assert sealed["dataclassification"] == "restricted" and sealed["datacategory"] == "personal"

    # revealed to an authorized caller: the view, the search by name, the timeline, the export
    view = httpx.get(f"{api}/v1/customers/{cid}", headers=headers, timeout=10).json()
    assert p["name"] in json.dumps(view, ensure_ascii=False) and p["email"] in json.dumps(view)
    by_name = httpx.get(f"{api}/v1/customers", params={"q": "secretname"}, headers=headers, timeout=10).json()
    assert cid in [c["customer_id"] for c in by_name["items"]]
    export = httpx.get(f"{api}/v1/customers/{cid}/export", headers=headers, timeout=30)
    assert export.status_code == 200, export.text
    document = export.text
    for value in (p["name"], p["email"], p["phone"], p["street"], p["complaint"], p["survey"], p["note"]):
        assert value in document, value
    assert len(export.json()["timeline"]) == len(events)
    assert httpx.get(f"{api}/v1/customers/{cid}/export", timeout=10).status_code == 401

    # erasure
    done = httpx.post(f"{api}/v1/customers/{cid}/erasure", json={"reason": "data subject request"},
                      headers=headers, timeout=30)
    assert done.status_code == 202, done.text
    bootstrap = platform.stack.kafka_bootstrap

    def erased_downstream() -> bool:
        changes = [json.loads(r.value) for r in read_topic(bootstrap, platform.topic(CUSTOMER_CHANGES), {cid}) if r.value]
        states = read_topic(bootstrap, platform.topic(CUSTOMER_STATE), {cid})
        return (any(c["type"] == "customer.erased" for c in changes) and bool(states)
                and states[-1].value is None)

    wait_for(erased_downstream, 90, "customer.erased on crm.customer-changes and a tombstone on crm.customer-state")
    assert httpx.get(f"{api}/v1/customers/{cid}", headers=headers, timeout=10).status_code == 404
    assert httpx.get(f"{api}/v1/customers", params={"email": p["email"]}, headers=headers,
                     timeout=10).json()["items"] == []
    assert httpx.get(f"{api}/v1/customers", params={"q": "secretname"}, headers=headers,
                     timeout=10).json()["items"] == []
    assert httpx.post(f"{api}/v1/customers/{cid}/erasure", json={}, headers=headers, timeout=10).status_code == 409

    def searched_everywhere() -> None:
        needles = secrets_of(p)
        # every topic: nothing in the clear, and every token of the person's subjects unopenable
        records = all_records(platform)
        assert not [(r.topic, s) for r in records for s in needles if s.encode() in record_bytes(r)]
        subjects = {h for r in records if f"priv-{unique}".encode() in (r.value or b"")
                    for h in pii.tokens_in(r.value.decode())}
        assert subjects, "the person's events name their subjects"
        vault = vault_for(platform)
        with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
            assert {h for h, dek in vault.deks(cur, subjects).items() if dek is not None} == set()
            cur.execute("SELECT count(*) FROM privacy_subject WHERE subject_id = ANY(%s)",
                        (["psn-" + h for h in subjects],))
            assert cur.fetchone()[0] == 0
        # every table of every schema: no personal value, no pseudonym, the customer id only where
        # the erasure itself is recorded
        tables = database_text(platform.stack.as_role(platform.dsn, "owner"))  # the owner reads every schema
        assert {t: s for t in tables for s in needles if s in tables[t]} == {}
        assert {t for t in tables for h in subjects if h in tables[t]} == set()
        assert {t for t in tables if cid in tables[t]} <= {"public.privacy_erasure", "public.audit_log"}
        # every file of the stack: Kafka's segments, PostgreSQL's files and WAL, every log
        assert files_holding(platform.stack.home, needles) == ""

    searched_everywhere()

    # a rebuild of every projection from the log does not bring the person back
    rebuilt = subprocess.run([str(VENV_BIN / "crm"), "replay", "--scope", "all", "--json"], env=platform.owner_env(),
                             capture_output=True, text=True, timeout=900)
    assert rebuilt.returncode in (0, 2), rebuilt.stdout + rebuilt.stderr
    assert httpx.get(f"{api}/v1/customers", params={"email": p["email"]}, headers=headers,
                     timeout=10).json()["items"] == []
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM customer_timeline WHERE event_id LIKE %s", (f"priv-{unique}-%",))
        assert cur.fetchone()[0] == 0
    searched_everywhere()


def test_personal_fields_never_reach_a_log(platform, unique):
    """A refused event's answer names the field, never its value in a log line."""
    headers = admin_key(platform.dsn)
    svc, collector = platform.collector()
    bad = {"id": f"log-{unique}", "source": "test/privacy", "type": "profile.updated",
           "data": {"email": f"not-an-email-{unique}", "name": f"Lognamé{unique}"}}
    answer = httpx.post(f"{collector}/v1/events", json=bad, headers=headers, timeout=10)
    assert answer.status_code == 400
    svc.stop()
    assert files_holding(platform.log_dir, [f"Lognamé{unique}", f"not-an-email-{unique}"]) == ""
