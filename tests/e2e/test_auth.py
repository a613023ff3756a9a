"""Authentication end to end: every route of both apps against every kind of caller, publishable
keys and CORS, rate limits, the audit log, and ``crm keys`` from the command line.

The routes come from the apps themselves (``app.routes``, hidden ones included) and from the
served OpenAPI documents; ``EXPECTED`` must name each of them, so a new route fails here until
its scope has been decided (and the README table of Security and privacy updated).
"""
from __future__ import annotations

import subprocess

import psycopg2
import pytest

from services.common import apikeys
from services.common.apikeys import ADMIN, CUSTOMERS_READ, EVENTS_WRITE, FEED_MANAGE, INDICATORS_READ
from services.common.auth import check_routes
from services.common.settings import Settings
from tests import http
from tests.e2e.test_customer_api import settle
from tests.processes import VENV_BIN, wait_for

OPEN = None
API_EXPECTED = {
    ("GET", "/healthz"): OPEN, ("GET", "/metrics"): OPEN, ("GET", "/dashboard"): OPEN, ("GET", "/"): OPEN,
    ("GET", "/docs"): OPEN, ("HEAD", "/docs"): OPEN, ("GET", "/docs/oauth2-redirect"): OPEN,
    ("HEAD", "/docs/oauth2-redirect"): OPEN, ("GET", "/redoc"): OPEN, ("HEAD", "/redoc"): OPEN,
    ("GET", "/openapi.json"): OPEN, ("HEAD", "/openapi.json"): OPEN,
    ("GET", "/v1/asyncapi.json"): OPEN, ("GET", "/v1/asyncapi.yaml"): OPEN,
    ("GET", "/v1/customers"): CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}"): CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/merges"): CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/timeline"): CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/state"): CUSTOMERS_READ,
    ("GET", "/v1/customers/{customer_id}/orders"): CUSTOMERS_READ,
    ("GET", "/v1/orders/{order_id}"): CUSTOMERS_READ,
    ("POST", "/v1/customers/{customer_id}/unmerge"): ADMIN,
    ("POST", "/v1/customers/{customer_id}/merge"): ADMIN,
    ("POST", "/v1/customers/{customer_id}/erasure"): ADMIN,
    ("GET", "/v1/customers/{customer_id}/export"): ADMIN,
    ("GET", "/v1/segments"): CUSTOMERS_READ, ("GET", "/v1/lifecycle"): CUSTOMERS_READ,
    ("GET", "/v1/indicators"): INDICATORS_READ, ("GET", "/v1/indicators/definitions"): INDICATORS_READ,
    ("GET", "/v1/indicators/series"): INDICATORS_READ, ("GET", "/v1/stream/indicators"): INDICATORS_READ,
    ("GET", "/v1/indicators/alerts"): INDICATORS_READ,
    ("GET", "/v1/webhooks"): FEED_MANAGE, ("POST", "/v1/webhooks"): FEED_MANAGE,
    ("GET", "/v1/webhooks/{subscription_id}"): FEED_MANAGE, ("PATCH", "/v1/webhooks/{subscription_id}"): FEED_MANAGE,
    ("DELETE", "/v1/webhooks/{subscription_id}"): FEED_MANAGE,
    ("POST", "/v1/webhooks/{subscription_id}/rotate-secret"): FEED_MANAGE,
    ("GET", "/v1/webhooks/{subscription_id}/deliveries"): FEED_MANAGE,
    ("GET", "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}"): FEED_MANAGE,
    ("POST", "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/retry"): FEED_MANAGE,
    ("GET", "/v1/keys"): ADMIN, ("POST", "/v1/keys"): ADMIN, ("DELETE", "/v1/keys/{key_id}"): ADMIN,
    ("GET", "/v1/audit"): ADMIN,
    ("GET", "/dashboard/assets/{name}"): OPEN,
    ("POST", "/v1/session"): OPEN, ("GET", "/v1/session"): OPEN, ("DELETE", "/v1/session"): OPEN,
    ("GET", "/v1/ops/pipeline"): INDICATORS_READ,
}
COLLECTOR_EXPECTED = {
    ("GET", "/healthz"): OPEN, ("GET", "/metrics"): OPEN, ("OPTIONS", "/v1/events"): OPEN,
    ("GET", "/docs"): OPEN, ("HEAD", "/docs"): OPEN, ("GET", "/docs/oauth2-redirect"): OPEN,
    ("HEAD", "/docs/oauth2-redirect"): OPEN, ("GET", "/redoc"): OPEN, ("HEAD", "/redoc"): OPEN,
    ("GET", "/openapi.json"): OPEN, ("HEAD", "/openapi.json"): OPEN,
    ("POST", "/v1/events"): EVENTS_WRITE,
    # channel adapters (services/ingest/adapters): servers post with a key; platforms sign; browsers and
    # customers follow a publishable key or a signed link
    ("POST", "/v1/hooks/amazon-connect"): EVENTS_WRITE, ("POST", "/v1/hooks/calls"): EVENTS_WRITE,
    ("POST", "/v1/hooks/orders"): EVENTS_WRITE, ("POST", "/v1/hooks/fax"): EVENTS_WRITE, ("POST", "/v1/surveys"): EVENTS_WRITE,
    ("POST", "/v1/hooks/twilio/voice"): OPEN, ("POST", "/v1/hooks/shopify"): OPEN,
    ("POST", "/v1/hooks/woocommerce"): OPEN, ("GET", "/v1/tracker.js"): OPEN,
    ("POST", "/v1/tracker/events"): OPEN, ("OPTIONS", "/v1/tracker/events"): OPEN,
    ("GET", "/s/{token}"): OPEN, ("POST", "/s/{token}"): OPEN,
}
PATH_VALUES = {"customer_id": "c_nobody", "subscription_id": "wh_nobody", "delivery_id": "1", "key_id": "key_nobody",
               "name": "uPlot.min.css", "token": "s1.not-a-link"}
SIGN_IN = {("POST", "/v1/session"), ("GET", "/v1/session"),
           ("POST", "/v1/hooks/twilio/voice"), ("POST", "/v1/hooks/shopify"), ("POST", "/v1/hooks/woocommerce"),
           ("POST", "/v1/tracker/events"), ("GET", "/s/{token}"), ("POST", "/s/{token}")}
"""Open routes that check credentials of their own (a body's password or key, the session cookie, a
platform's signature, a publishable key in the URL, a signed link): they answer 4xx about those
(401, 403, 404 not configured or no such link, 422, 429 after many attempts), never about the API key."""
SIGN_IN_REFUSALS = (400, 401, 403, 404, 422, 429)
SHOP = "https://shop.example"
LIBERAL = {"CRM_IP_RATE_LIMIT_PER_S": "10000", "CRM_IP_RATE_LIMIT_BURST": "100000"}  # the matrix sends many bad keys


def web_event(u: str, n: int = 0, source: str = "urn:test:auth", type_: str = "web.page_viewed") -> dict:
    """A valid web.page_viewed (or, with ``type_="call.ended"``, a valid call) event."""
    data = ({"anonymous_id": f"ck-{u}", "url": "https://shop.example/"} if type_.startswith("web.")
            else {"call_id": f"call-{u}-{n}", "phone_number": "+8613800138000", "talk_seconds": 60})
    return {"id": f"{u}-{n}", "source": source, "type": type_, "time": "2026-11-01T10:00:00Z", "data": data}


def crm(platform, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "crm"), *args], env=platform.env(**env), capture_output=True, text=True,
                          timeout=60)


def app_routes(platform, monkeypatch) -> tuple[dict, dict]:
    """(method, path) -> scopes of every route of both apps, as the apps themselves declare them."""
    from services.api.app import create_app as create_api
    from services.api.security import OPEN_ROUTES as API_OPEN
    from services.common.publisher import KafkaPublisher
    from services.ingest.app import create_app as create_collector
    from services.ingest.security import OPEN_ROUTES as COLLECTOR_OPEN

    for name in ("CRM_MASTER_KEY",):
        monkeypatch.setenv(name, platform.stack.env[name])
    settings = Settings(pg_dsn=platform.dsn, kafka_bootstrap=platform.stack.kafka_bootstrap)
    api = check_routes(create_api(settings), API_OPEN)
    collector_app = create_collector(settings, KafkaPublisher(settings.kafka_bootstrap))
    assert COLLECTOR_OPEN <= collector_app.state.open_routes  # the adapters add theirs
    collector = check_routes(collector_app, collector_app.state.open_routes)
    return api, collector


def concrete(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path


def call(base: str, method: str, path: str, *, key=None, origin: str | None = None, body=None):
    """One request; the live stream is opened and closed at once."""
    headers = {"Origin": origin} if origin else {}
    url = base + concrete(path)
    if path == "/v1/stream/indicators":
        with http.stream(method, url, key=key, headers=headers, timeout=10) as r:
            return r.status_code, dict(r.headers), (r.read() if r.status_code != 200 else b"")
    kwargs = {"json": body if body is not None else {}} if method in ("POST", "PATCH", "PUT") else {}
    r = http.request(method, url, key=key, headers=headers, timeout=30, follow_redirects=False, **kwargs)
    return r.status_code, dict(r.headers), r.content


@pytest.fixture
def secured(platform):
    """(collector URL, API URL, keys) with liberal IP limits; keys: each scope, a revoked one, a
    publishable one for https://shop.example."""
    _, collector = platform.collector(**LIBERAL)
    _, api = platform.api(**LIBERAL)
    keys = dict(platform.keys)
    created = http.post(f"{api}/v1/keys", json={"name": "gone", "scopes": [ADMIN]})
    assert created.status_code == 201, created.text
    assert http.delete(f"{api}/v1/keys/{created.json()['id']}").status_code == 204
    keys["revoked"] = created.json()["key"]
    shop = http.post(f"{api}/v1/keys", json={"name": "shop web", "kind": "publishable", "scopes": [EVENTS_WRITE],
                                             "allowed_origins": [SHOP]})
    assert shop.status_code == 201, shop.text
    keys["publishable"] = shop.json()["key"]
    return collector, api, keys


def test_every_route_of_both_apps_against_every_kind_of_caller(platform, secured, monkeypatch, unique):
    collector, api, keys = secured
    api_routes, collector_routes = app_routes(platform, monkeypatch)
    for expected, routes in ((API_EXPECTED, api_routes), (COLLECTOR_EXPECTED, collector_routes)):
        assert set(routes) == set(expected), ("routes without a decided scope (add them to EXPECTED and "
                                              f"the README table): {set(routes) ^ set(expected)}")
        for route, scopes in routes.items():
            assert scopes == ({expected[route]} if expected[route] else set()), route
    # the served documents say the same, and hold nothing the apps do not
    for base, expected in ((api, API_EXPECTED), (collector, COLLECTOR_EXPECTED)):
        document = http.get(f"{base}/openapi.json", key=None).json()
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                scope = expected[(method.upper(), path)]
                assert operation.get("x-required-scopes") == ([scope] if scope else None), (method, path)
                if scope:
                    assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)

    callers = {"no key": None, "revoked": keys["revoked"], "garbage": "crm_sk_abcdefghij_" + "x" * 43,
               **{scope: keys[scope] for scope in apikeys.SCOPES}}
    publishable = {"publishable, right origin": SHOP, "publishable, wrong origin": "https://evil.example",
                   "publishable, no origin": None}
    event = [web_event(unique)]
    failures = []
    for base, expected in ((api, API_EXPECTED), (collector, COLLECTOR_EXPECTED)):
        for (method, path), scope in sorted(expected.items()):
            body = event if path == "/v1/events" else None
            for who, key in callers.items():
                status, headers, content = call(base, method, path, key=key, body=body)
                if (method, path) in SIGN_IN:
                    ok = status in (SIGN_IN_REFUSALS if path != "/v1/session" else (401, 422, 429))
                elif scope is OPEN:
                    ok = status < 400 or (method == "OPTIONS" and status == 403)  # a preflight of no known origin
                elif key is None or who in ("revoked", "garbage"):
                    ok = status == 401 and headers.get("www-authenticate", "").startswith("Bearer")
                elif apikeys.allows([who], scope):
                    ok = status not in (401, 403, 429) and status < 500
                else:
                    ok = status == 403 and scope.encode() in content
                if not ok:
                    failures.append((who, method, path, status, content[:200]))
            for who, origin in publishable.items():
                status, headers, content = call(base, method, path, key=keys["publishable"], origin=origin,
                                                body=body)
                if (method, path) in SIGN_IN:
                    ok = status in (SIGN_IN_REFUSALS if path != "/v1/session" else (401, 422, 429))
                elif scope is OPEN:
                    ok = status < 400 or (method == "OPTIONS" and origin != SHOP and status == 403)
                elif origin == SHOP and scope == EVENTS_WRITE and path == "/v1/events":
                    ok = status == 202 and headers.get("access-control-allow-origin") == SHOP
                elif origin == SHOP and scope == EVENTS_WRITE:  # server-side adapters: secret keys only
                    ok = status == 403 and b"publishable key" in content
                elif origin == SHOP:
                    ok = status == 403 and scope.encode() in content
                else:
                    ok = status == 403 and b"origin" in content.lower()
                if not ok:
                    failures.append((who, method, path, status, content[:200]))
    assert not failures, "\n".join(map(str, failures))


def test_a_publishable_key_writes_web_events_from_its_origins_only_and_gets_cors(secured, unique):
    collector, api, keys = secured
    shop = keys["publishable"]
    preflight = http.options(f"{collector}/v1/events", key=None, headers={
        "Origin": SHOP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == SHOP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    stranger = http.options(f"{collector}/v1/events", key=None, headers={"Origin": "https://evil.example"})
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers

    mixed = [web_event(unique, 1), web_event(unique, 2, type_="call.ended"), web_event(unique, 3)]
    r = http.post(f"{collector}/v1/events", key=shop, headers={"Origin": SHOP}, json=mixed)
    assert r.status_code == 202, r.text
    assert r.headers["access-control-allow-origin"] == SHOP and r.headers["vary"] == "Origin"
    assert r.json()["accepted"] == [f"{unique}-1", f"{unique}-3"]
    (forbidden,) = r.json()["rejected"]
    assert forbidden["index"] == 1 and forbidden["reason"] == "forbidden"
    assert "web.*" in forbidden["errors"][0]["message"] and "secret key" in forbidden["errors"][0]["message"]
    only = http.post(f"{collector}/v1/events", key=shop, headers={"Origin": SHOP},
                     json=web_event(unique, 4, type_="call.ended"))
    assert only.status_code == 400 and only.json()["rejected"][0]["reason"] == "forbidden"
    # the same origin with another port is another origin; a secret key needs no origin at all
    assert http.post(f"{collector}/v1/events", key=shop, headers={"Origin": SHOP + ":8443"},
                     json=web_event(unique, 5)).status_code == 403
    assert http.post(f"{collector}/v1/events", key=keys[EVENTS_WRITE],
                     json=web_event(unique, 6, type_="call.ended")).status_code == 202
    # a publishable key cannot be made to read, nor without origins
    refused = http.post(f"{api}/v1/keys", json={"name": "x", "kind": "publishable", "scopes": [CUSTOMERS_READ],
                                                "allowed_origins": [SHOP]})
    assert refused.status_code == 400 and "events:write" in refused.json()["error"]
    assert http.post(f"{api}/v1/keys", json={"name": "x", "kind": "publishable", "scopes": [EVENTS_WRITE]}
                     ).status_code == 400


def test_rate_limits_answer_429_with_retry_after_per_key_and_per_source(platform, unique):
    _, collector = platform.collector(CRM_SOURCE_RATE_LIMIT_PER_S="1", CRM_SOURCE_RATE_LIMIT_BURST="30")
    _, api = platform.api(CRM_IP_RATE_LIMIT_PER_S="0.5", CRM_IP_RATE_LIMIT_BURST="3")

    def new_key(scopes: list[str], **limits) -> str:
        r = http.post(f"{api}/v1/keys", json={"name": f"limited {scopes}", "scopes": scopes, **limits})
        assert r.status_code == 201, r.text
        return r.json()["key"]

    # per key, counted in events on the collector
    slow, other = new_key([EVENTS_WRITE], rate_per_s=0.5, burst=10), new_key([EVENTS_WRITE])
    batch = [web_event(unique, n, source=f"urn:a:{unique}") for n in range(10)]
    assert http.post(f"{collector}/v1/events", key=slow, json=batch).status_code == 202
    r = http.post(f"{collector}/v1/events", key=slow, json=[web_event(unique, 10, source=f"urn:b:{unique}")])
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1 and r.json()["detail"]["limit"] == "key"
    assert "API key" in r.json()["error"] and "events/s" in r.json()["error"]
    assert http.post(f"{collector}/v1/events", key=other,  # another key is not starved
                     json=[web_event(unique, 11, source=f"urn:b:{unique}")]).status_code == 202

    # per source, whichever key sends: 30 events of urn:c then nothing more from it, urn:d goes on
    source = f"urn:c:{unique}"
    assert http.post(f"{collector}/v1/events", key=other,
                     json=[web_event(unique, 100 + n, source=source) for n in range(30)]).status_code == 202
    r = http.post(f"{collector}/v1/events", json=[web_event(unique, 200, source=source)])  # the admin key
    assert r.status_code == 429 and r.json()["detail"] == {**r.json()["detail"], "limit": "source", "name": source}
    assert int(r.headers["retry-after"]) >= 1 and source in r.json()["error"]
    assert http.post(f"{collector}/v1/events", json=[web_event(unique, 201, source=f"urn:d:{unique}")]
                     ).status_code == 202

    # per key, counted in requests on the query API; and per client IP without a key
    reader = new_key([INDICATORS_READ], rate_per_s=0.2, burst=3)
    answers = [http.get(f"{api}/v1/indicators/definitions", key=reader).status_code for _ in range(4)]
    assert answers[:3] == [200] * 3 and answers[3] == 429
    assert http.get(f"{api}/v1/indicators/definitions").status_code == 200  # the admin key
    anonymous = [http.get(f"{api}/v1/indicators/definitions", key=None) for _ in range(4)]
    assert [a.status_code for a in anonymous] == [401, 401, 401, 429]
    assert anonymous[3].json()["detail"]["limit"] == "failures" and int(anonymous[3].headers["retry-after"]) >= 1


def test_lookups_and_changes_are_audited_and_the_audit_log_is_append_only(running, platform, unique):
    collector, api = running
    reader = platform.keys[CUSTOMERS_READ]
    merged = settle(collector, api, unique)
    cid, (alias,) = merged["customer_id"], merged["aliases"]
    assert http.get(f"{api}/v1/customers", key=reader, params={"account_id": f"acct-{unique}"}).status_code == 200
    assert http.get(f"{api}/v1/customers/{alias}", key=reader).status_code == 200
    assert http.get(f"{api}/v1/customers/{cid}/timeline", key=reader, params={"limit": 2}).status_code == 200
    assert http.post(f"{api}/v1/customers/{cid}/unmerge", json={"alias": alias, "reason": "kiosk"}).status_code == 202
    feed = platform.keys[FEED_MANAGE]
    sub = http.post(f"{api}/v1/webhooks", key=feed, json={"url": "http://127.0.0.1:9/hook"}).json()
    assert http.patch(f"{api}/v1/webhooks/{sub['id']}", key=feed, json={"enabled": False}).status_code == 200
    assert http.post(f"{api}/v1/webhooks/{sub['id']}/rotate-secret", key=feed).status_code == 200
    assert http.delete(f"{api}/v1/webhooks/{sub['id']}", key=feed).status_code == 204
    made = http.post(f"{api}/v1/keys", json={"name": "temp", "scopes": [INDICATORS_READ]}).json()
    assert http.delete(f"{api}/v1/keys/{made['prefix']}").status_code == 204

    def entries(**params) -> list[dict]:
        r = http.get(f"{api}/v1/audit", params=params)
        assert r.status_code == 200, r.text
        return r.json()["items"]

    reader_id = next(k["id"] for k in http.get(f"{api}/v1/keys").json()["items"] if k["name"] == "tests customers:read")
    (read,) = entries(action="customer.read", target=cid)
    assert read["actor_key_id"] == reader_id and read["details"]["requested"] == alias
    assert read["request_ip"] == "127.0.0.1" and read["actor_name"].endswith("(tests customers:read)")
    found = entries(action="customer.find", actor=reader_id)
    assert found and found[0]["target"] == cid and found[0]["details"]["by"] == ["account_id"]
    assert entries(action="customer.timeline", target=cid)[0]["details"]["items"] == 2
    (unmerged,) = entries(action="customer.unmerge")
    assert unmerged["target"] == cid and unmerged["details"]["alias"] == alias
    assert [e["action"] for e in entries(target=sub["id"])] == [
        "webhook.delete", "webhook.rotate_secret", "webhook.update", "webhook.create"]
    assert [e["action"] for e in entries(target=made["id"])] == ["key.revoke", "key.create"]
    assert {e["action"] for e in entries(action="webhook.", limit=10)} == {
        "webhook.create", "webhook.update", "webhook.rotate_secret", "webhook.delete"}
    page = entries(limit=2)
    more = http.get(f"{api}/v1/audit", params={"limit": 2, "cursor": page[-1]["id"]}).json()["items"]
    assert more and more[0]["id"] < page[-1]["id"]
    assert entries(until="2000-01-01T00:00:00Z") == [] and entries(since="2000-01-01T00:00:00Z")
    # no identifier value is kept in the log: only customer ids and the kinds looked up by
    every = http.get(f"{api}/v1/audit", params={"limit": 1000}).text
    assert f"acct-{unique}" not in every and f"ck-{unique}" not in every
    # other scopes cannot read it
    assert http.get(f"{api}/v1/audit", key=reader).status_code == 403

    # the trigger stops the services' role and the owner alike; the services' role may not even truncate
    for dsn, statements in ((platform.dsn, ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log")),
                            (platform.stack.as_role(platform.dsn, "owner"), ("UPDATE audit_log SET action = 'x'",
                                                                              "DELETE FROM audit_log",
                                                                              "TRUNCATE audit_log"))):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                with pytest.raises(psycopg2.Error, match="append-only"):
                    cur.execute(statement)
            cur.execute("SELECT count(*) FROM audit_log WHERE action = 'customer.read'")
            assert cur.fetchone()[0] >= 1
        conn.close()
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.Error, match="permission denied"):
            cur.execute("TRUNCATE audit_log")
    conn.close()


def test_crm_keys_create_list_revoke_from_the_command_line(platform, unique):
    _, api = platform.api(CRM_AUTH_CACHE_S="1")
    done = crm(platform, "keys", "create", "--name", f"ops {unique}", "--scopes", "customers:read,indicators:read")
    assert done.returncode == 0, done.stderr
    summary, key = done.stdout.strip().splitlines()
    assert apikeys.parse(key) is not None and "not stored" in done.stderr and "only time" in done.stderr
    prefix = apikeys.parse(key).prefix
    assert prefix in summary
    assert http.get(f"{api}/v1/indicators/definitions", key=key).status_code == 200
    assert http.get(f"{api}/v1/segments", key=key).status_code == 200

    listed = crm(platform, "keys", "list")
    as_json = crm(platform, "keys", "list", "--json")
    assert listed.returncode == 0 and as_json.returncode == 0
    assert prefix in listed.stdout and f"ops {unique}" in listed.stdout
    secret = apikeys.parse(key).secret
    for out in (listed.stdout, as_json.stdout, done.stdout.replace(key, "")):
        assert secret not in out
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM api_key")
        assert not any(secret in str(value) or key in str(value) for row in cur.fetchall() for value in row)
    conn.close()

    bad = crm(platform, "keys", "create", "--name", "x", "--scopes", "customers:write")
    assert bad.returncode != 0 and "unknown scope" in bad.stderr
    revoked = crm(platform, "keys", "revoke", prefix)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    # refused once the key cache (CRM_AUTH_CACHE_S, 1 s) forgets it: polled, no time asserted
    wait_for(lambda: http.get(f"{api}/v1/indicators/definitions", key=key).status_code == 401, 60,
             "the revoked key refused")
    again = crm(platform, "keys", "revoke", prefix)
    assert again.returncode == 0 and "already" in again.stdout
    assert crm(platform, "keys", "revoke", "nokey").returncode == 1
    audit = crm(platform, "audit", "list", "--action", "key.", "--json")
    assert audit.returncode == 0
    assert '"key.revoke"' in audit.stdout and '"key.create"' in audit.stdout and '"cli:' in audit.stdout

    path = platform.log_dir / f"key-{unique}"
    filed = crm(platform, "keys", "create", "--name", "filed", "--scopes", "admin", "--key-file", str(path))
    assert filed.returncode == 0 and (path.stat().st_mode & 0o777) == 0o600
    assert path.read_text().strip() not in filed.stdout + filed.stderr
    assert crm(platform, "keys", "verify", "--key-file", str(path)).returncode == 0
    assert crm(platform, "keys", "create", "--name", "again", "--scopes", "admin",
               "--key-file", str(path)).returncode == 1  # never overwritten
    path.unlink()
