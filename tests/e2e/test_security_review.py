"""The findings of the outside security review (issue 24), each replayed as its attack against the
running services: personal data through webhooks, webhooks into the internal network, forged
X-Forwarded-For, a session exchanged for a session, bad keys locking good ones out, sign-in
attempts used up by malformed requests and by colleagues, publishable keys on server adapters,
cursors the API never gave out, and the collector's error shape."""
from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg2
import psycopg2.extensions
import pytest

from events.feed import change_event
from services.common.apikeys import CUSTOMERS_READ, EVENTS_WRITE, FEED_MANAGE, INDICATORS_READ
from services.webhooks import store
from tests import http
from tests.e2e.test_webhooks import FAST, Receiver, produce, snapshot
from tests.processes import VENV_BIN, wait_for

PASSWORD = "correct horse battery staple"
SHOP = "https://shop.example"
GARBAGE = "crm_sk_abcdefghij_" + "x" * 43  # of the key format, but no key


def crm(platform, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "crm"), *args], env=platform.env(), input=stdin, capture_output=True,
                          text=True, timeout=60)


def add_operator(platform, username: str) -> None:
    done = crm(platform, "operators", "add", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def audit(api: str, **params) -> list[dict]:
    r = http.get(f"{api}/v1/audit", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def sign_in(api: str, **body) -> httpx.Response:
    return httpx.post(f"{api}/v1/session", json=body)


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


# -- 1. personal data through webhooks ------------------------------------------------------------

def test_a_webhook_carries_personal_data_only_for_a_creator_who_may_read_it(platform, receiver, unique):
    _, api = platform.api()
    feed, reader = platform.keys[FEED_MANAGE], platform.keys[CUSTOMERS_READ]
    # a feed:manage key cannot have personal data sent anywhere, nor read it in the delivery log
    refused = http.post(f"{api}/v1/webhooks", key=feed, json={"url": receiver.url("/feed"), "personal_data": True})
    assert refused.status_code == 403 and CUSTOMERS_READ in refused.json()["error"]
    lesser = http.post(f"{api}/v1/webhooks", key=feed, json={"url": receiver.url("/feed")})
    assert lesser.status_code == 201 and lesser.json()["personal_data"] is False
    full = http.post(f"{api}/v1/webhooks", json={"url": receiver.url("/full")})  # admin: may read customers
    assert full.status_code == 201 and full.json()["personal_data"] is True
    (created,) = audit(api, action="webhook.create", target=full.json()["id"])
    assert created["details"]["personal_data"] is True
    # nor send a subscription that carries it to another URL
    moved = http.patch(f"{api}/v1/webhooks/{full.json()['id']}", key=feed, json={"url": receiver.url("/moved")})
    assert moved.status_code == 403
    assert http.patch(f"{api}/v1/webhooks/{lesser.json()['id']}", key=feed,
                      json={"personal_data": True}).status_code == 403

    platform.webhooks(**FAST)
    customer = f"c_{unique}"
    state = snapshot(customer, 1, [])
    state["profile"] = {"display_name": "李娜", "consent": {"marketing:email": True},
                        "traits": {"email": f"li-{unique}@example.com", "phone": "+8613912345678",
                                   "address": "上海市 徐汇区 1 号", "birthday": "1990-05-01", "company": "海尔"}}
    change = change_event(customer, 1, "profile.changed", "2026-11-01T10:00:00Z",
                          {"changed": {"email": {"from": None, "to": f"li-{unique}@example.com"},
                                       "consent:marketing:email": {"from": None, "to": True}}}, state)
    produce(platform, [change])
    (to_lesser,) = wait_for(lambda: receiver.at("/feed"), 30, "the delivery without personal data")
    (to_full,) = wait_for(lambda: receiver.at("/full"), 30, "the delivery with personal data")
    for secret in (f"li-{unique}", "13912345678", "李娜", "徐汇区", "1990-05-01", "海尔"):
        assert secret.encode() not in to_lesser.body and secret.encode() in to_full.body
    sent = orjson.loads(to_lesser.body)
    assert sent["data"]["state"]["profile"]["traits"]["email"] == "[withheld]"
    assert sent["data"]["changed"]["consent:marketing:email"] == {"from": None, "to": True}
    assert sent["data"]["state"]["lifecycle"] == state["lifecycle"]  # the rest is kept

    sid = full.json()["id"]
    (logged,) = wait_for(lambda: [d for d in http.get(f"{api}/v1/webhooks/{sid}/deliveries").json()["items"]
                                  if d["status"] == "delivered"], 30, "the delivery logged")
    as_feed = http.get(f"{api}/v1/webhooks/{sid}/deliveries/{logged['id']}", key=feed)
    assert as_feed.status_code == 200 and f"li-{unique}" not in as_feed.text and "李娜" not in as_feed.text
    assert audit(api, action="webhook.delivery_read") == []
    as_reader = http.get(f"{api}/v1/webhooks/{sid}/deliveries/{logged['id']}",
                         key=platform.keys["admin"])  # customers:read (admin implies it): shown, and audited
    assert f"li-{unique}" in as_reader.text
    (read,) = audit(api, action="webhook.delivery_read")
    assert read["target"] == customer and read["details"]["delivery_id"] == logged["id"]
    assert http.get(f"{api}/v1/customers/{customer}", key=feed).status_code == 403
    assert http.get(f"{api}/v1/webhooks/{sid}/deliveries/{logged['id']}", key=reader).status_code == 403


# -- 2. webhooks into the internal network --------------------------------------------------------

def test_webhooks_never_reach_loopback_private_or_metadata_addresses(platform, receiver, unique):
    _, api = platform.api(CRM_WEBHOOKS_ALLOWED_HOSTS="")  # as in production: no host exempt
    api_port = urlsplit(api).port
    pg_port = urlsplit(platform.dsn).port or 5432
    for url in (f"{api}/v1/session", f"http://127.0.0.1:{pg_port}/", "http://127.0.0.1:1/", "http://[::1]:8000/",
                "http://localhost:%d/" % api_port, "http://10.0.0.5/hook", "http://192.168.1.1/",
                "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://[fe80::1]/",
                "http://[::ffff:127.0.0.1]:8000/", "http://0.0.0.0:8000/", "http://100.64.0.1/"):
        r = http.post(f"{api}/v1/webhooks", json={"url": url})
        assert r.status_code == 400 and "public addresses only" in r.json()["error"], (url, r.text)
    public = http.post(f"{api}/v1/webhooks", json={"url": "https://203.0.113.10/hook"})  # TEST-NET-3 is not global
    assert public.status_code == 400
    made = http.post(f"{api}/v1/webhooks", json={"url": "https://8.8.8.8/hook", "enabled": False})
    assert made.status_code == 201, made.text
    assert http.patch(f"{api}/v1/webhooks/{made.json()['id']}",
                      json={"url": receiver.url("/x")}).status_code == 400

    # a name that resolved to a public address when it was subscribed and to loopback when sent
    # (DNS rebinding; here: written straight to the table): checked again at delivery, never sent
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        rebound = store.create_subscription(cur, url=receiver.url("/rebound"), event_types=None, segments=None,
                                            description="rebound", enabled=True, personal_data=False)
    conn.close()
    platform.webhooks(CRM_WEBHOOKS_ALLOWED_HOSTS="", **FAST)
    produce(platform, [change_event(f"c_{unique}", 1, "value.changed", "2026-11-01T10:00:00Z",
                                                          {"changed": ["orders"]}, snapshot(f"c_{unique}", 1, []))])

    def attempted():
        items = http.get(f"{api}/v1/webhooks/{rebound['id']}/deliveries").json()["items"]
        return items and items[0]["attempt_count"] >= 1 and items[0]
    logged = wait_for(attempted, 30, "an attempt at the rebound address")
    assert logged["status"] in ("pending", "failed") and "public addresses only" in logged["last_error"]
    detail = http.get(f"{api}/v1/webhooks/{rebound['id']}/deliveries/{logged['id']}").json()
    assert all(a["status_code"] is None and a["response"] is None for a in detail["attempts"])
    assert receiver.at("/rebound") == []


# -- 3. X-Forwarded-For --------------------------------------------------------------------------------

def test_forwarded_headers_are_believed_only_from_the_proxies_a_setting_names(platform, unique):
    _, api = platform.api()
    add_operator(platform, f"op-{unique}")
    answers = [httpx.post(f"{api}/v1/session", headers={"X-Forwarded-For": f"198.51.100.{n}"},
                          json={"username": f"op-{unique}", "password": f"guess {n}"}) for n in range(15)]
    assert [a.status_code for a in answers[:10]] == [401] * 10 and answers[-1].status_code == 429
    refused = audit(api, action="session.refused")
    assert len(refused) == 10 and {e["request_ip"] for e in refused} == {"127.0.0.1"}

    _, behind = platform.api(CRM_TRUSTED_PROXIES="127.0.0.1")  # a reverse proxy on this host
    r = httpx.post(f"{behind}/v1/session", headers={"X-Forwarded-For": "203.0.113.7"},
                   json={"username": f"op-{unique}", "password": PASSWORD})
    assert r.status_code == 200, r.text
    (made,) = audit(behind, action="session.create")
    assert made["request_ip"] == "203.0.113.7"


# -- 4. a session exchanged for a session ------------------------------------------------------------

def test_a_session_is_never_exchanged_for_a_session_and_ends_with_its_key(platform, unique):
    _, api = platform.api(CRM_AUTH_CACHE_S="0")
    add_operator(platform, f"op-{unique}")
    signed = sign_in(api, username=f"op-{unique}", password=PASSWORD)
    cookie = signed.cookies["crm_session"]
    renewed = sign_in(api, api_key=cookie)
    assert renewed.status_code == 403 and "cannot be exchanged" in renewed.json()["error"]
    assert "crm_session" not in renewed.cookies
    listed = crm(platform, "operators", "sessions", f"op-{unique}")
    assert "1 live sessions" in listed.stdout, listed.stdout
    assert any(e["details"].get("status") == 403 for e in audit(api, action="session.refused"))

    # a session made from a key belongs to the key: listed with it, and revoked with it
    made = http.post(f"{api}/v1/keys", json={"name": f"wall {unique}", "scopes": [INDICATORS_READ]}).json()
    from_key = sign_in(api, api_key=made["key"])
    assert from_key.status_code == 200 and from_key.json()["operator"] is None
    session = from_key.cookies["crm_session"]
    assert httpx.get(f"{api}/v1/indicators/definitions", cookies={"crm_session": session}).status_code == 200
    keys = [json.loads(line) for line in crm(platform, "keys", "list", "--json").stdout.splitlines()]
    (mine,) = [k for k in keys if k["id"] == made["id"]]
    assert [s["name"] for s in mine["sessions"]] == [f"dashboard session of key {made['prefix']}"]
    assert all(not k["name"].startswith("dashboard session") for k in keys)
    assert http.delete(f"{api}/v1/keys/{made['id']}").status_code == 204
    assert httpx.get(f"{api}/v1/indicators/definitions", cookies={"crm_session": session}).status_code == 401


# -- 5. bad keys from one address -----------------------------------------------------------------------

def test_bad_keys_from_one_address_never_lock_a_good_key_out(platform, unique):
    _, api = platform.api(CRM_IP_RATE_LIMIT_PER_S="0.2", CRM_IP_RATE_LIMIT_BURST="5")
    _, collector = platform.collector(CRM_IP_RATE_LIMIT_PER_S="0.2", CRM_IP_RATE_LIMIT_BURST="5")
    for base, path in ((api, "/v1/indicators/definitions"), (collector, "/v1/events")):
        method = "GET" if base == api else "POST"
        bad = [http.request(method, f"{base}{path}", key=key, json=[])
               for key in [GARBAGE, None, "not a key"] * 4]
        assert [b.status_code for b in bad[:5]] == [401] * 5 and bad[-1].status_code == 429
        assert bad[-1].json()["detail"]["limit"] == "failures"
        assert "failed authentications" in bad[-1].json()["error"]
    # a key never used before, from the same address, over the limit of failures: accepted
    fresh = http.post(f"{api}/v1/keys", json={"name": f"new {unique}", "scopes": [INDICATORS_READ, EVENTS_WRITE]})
    key = fresh.json()["key"]
    assert http.get(f"{api}/v1/indicators/definitions", key=key).status_code == 200
    assert http.post(f"{collector}/v1/events", key=key, json=[]).status_code != 429
    assert http.get(f"{api}/v1/indicators/definitions", key=GARBAGE).status_code == 429  # the bad still are not


# -- 6, 11. sign-in attempts ------------------------------------------------------------------------------

def test_sign_in_attempts_count_per_username_and_address_and_malformed_ones_not_at_all(platform, unique):
    _, api = platform.api()
    for name in ("alice", "bob"):
        add_operator(platform, f"{name}-{unique}")
    # a request without credentials is no attempt: 40 of them use up nothing
    assert {sign_in(api).status_code for _ in range(40)} == {422}
    assert sign_in(api, username=f"bob-{unique}", password=PASSWORD).status_code == 200
    # a refused API key is audited like a wrong password
    assert sign_in(api, api_key=GARBAGE).status_code == 401
    (refused,) = audit(api, action="session.refused")
    assert refused["actor_name"] == "key:abcdefghij" and refused["request_ip"] == "127.0.0.1"

    # alice guesses at her own password until refused; bob, behind the same address, signs in
    guesses = [sign_in(api, username=f"alice-{unique}", password=f"guess {n}") for n in range(11)]
    assert [g.status_code for g in guesses[:10]] == [401] * 10 and guesses[-1].status_code == 429
    assert guesses[-1].json()["detail"]["limit"] == "sign-in" and f"alice-{unique}" in guesses[-1].json()["error"]
    assert sign_in(api, username=f"bob-{unique}", password=PASSWORD).status_code == 200
    # spraying many usernames from one address is stopped all the same
    sprayed = [sign_in(api, username=f"user{n}-{unique}", password="Winter2026!") for n in range(40)]
    assert sprayed[-1].status_code == 429 and sprayed[-1].json()["detail"]["limit"] == "sign-in-address"
    assert sign_in(api, username=f"bob-{unique}", password=PASSWORD).status_code == 429


# -- 7. publishable keys on server adapters --------------------------------------------------------------

def test_a_publishable_key_is_refused_403_on_the_server_adapters(platform, unique):
    _, api = platform.api()
    _, collector = platform.collector()
    shop = http.post(f"{api}/v1/keys", json={"name": "shop", "kind": "publishable", "scopes": [EVENTS_WRITE],
                                             "allowed_origins": [SHOP]}).json()["key"]
    for path in ("/v1/hooks/calls", "/v1/hooks/orders", "/v1/hooks/amazon-connect", "/v1/surveys"):
        r = http.post(f"{collector}{path}", key=shop, headers={"Origin": SHOP}, json={"id": f"x-{unique}"})
        assert r.status_code == 403 and "publishable key" in r.json()["error"], (path, r.text)


# -- 8. cursors and error shapes --------------------------------------------------------------------------

def test_cursors_the_api_never_gave_out_are_refused_and_the_collector_errors_are_error(platform):
    _, api = platform.api()
    _, collector = platform.collector()
    for params in ({"at_risk": "true", "cursor": "nan:x"}, {"at_risk": "true", "cursor": "inf:x"},
                   {"at_risk": "true", "cursor": "-inf:c_00000000000000000000"},
                   {"at_risk": "true", "cursor": "50:anything"},
                   {"q": "li", "cursor": "any string"}, {"lifecycle": "customer", "cursor": "x"},
                   {"lifecycle": "prospect", "cursor": "' OR 1=1 --"}):
        r = http.get(f"{api}/v1/customers", params=params)
        assert r.status_code == 400 and "cursor" in r.json()["error"], (params, r.text)
    for params in ({"at_risk": "true", "cursor": "101:c_0123456789abcdef0123"},
                   {"q": "li", "cursor": "c_0123456789abcdef0123"}):
        assert http.get(f"{api}/v1/customers", params=params).status_code == 200
    for method, path in (("GET", "/v1/nothing"), ("POST", "/v1/hooks/unknown"), ("DELETE", "/v1/events")):
        r = http.request(method, f"{collector}{path}")
        assert r.status_code in (404, 405) and set(r.json()) == {"error"}, (path, r.text)


# -- 9. the database's roles ------------------------------------------------------------------------------

def test_the_services_connect_as_a_least_privilege_role_and_no_role_logs_in_without_a_password(platform, unique):
    _, api = platform.api()
    assert http.get(f"{api}/v1/segments").status_code == 200  # the API has used its pools
    params = psycopg2.extensions.parse_dsn(platform.dsn)
    for user in ("postgres", "crm", "crm_service"):  # no password: refused over TCP, superuser included
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host=params["host"], port=params["port"], dbname=params["dbname"], user=user,
                             password="", connect_timeout=5)
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == ("crm_service", False)
        cur.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN ('crm', 'crm_service') ORDER BY 1")
        assert cur.fetchall() == [("crm", False), ("crm_service", False)]
        cur.execute("""SELECT DISTINCT usename FROM pg_stat_activity
                       WHERE datname = current_database() AND application_name LIKE 'crm-api%%'""")
        assert [r[0] for r in cur.fetchall()] == ["crm_service"]  # the services' pools
        cur.execute("SELECT count(*) FROM api_key")  # rows: yes
        assert cur.fetchone()[0] >= 1
    conn.close()
    for statement in (f"CREATE TABLE t_{unique} (x int)", "DROP TABLE customer_view", "TRUNCATE customer_view",
                      "ALTER TABLE api_key ADD COLUMN x int", f"CREATE ROLE r_{unique}", f"CREATE DATABASE d_{unique}"):
        conn = psycopg2.connect(platform.dsn)
        conn.autocommit = True
        with conn.cursor() as cur, pytest.raises(psycopg2.Error, match="permission denied|must be owner"):
            cur.execute(statement)
        conn.close()
