"""The pure parts of authentication: the key format and its hash, key specs and origins, token
buckets on a fake clock, the key a request presents, and the check that every route has a scope."""
from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.requests import Request

from services.common import apikeys, audit
from services.common.apikeys import ADMIN, CUSTOMERS_READ, EVENTS_WRITE, InvalidKeySpec
from services.common.auth import check_routes, presented_key, rate_limited, require, route_scopes
from services.common.ratelimit import Limiter, TokenBucket, Want


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- keys ------------------------------------------------------------------------------------------

def test_new_keys_parse_back_and_are_random():
    prefix, key = apikeys.new_key()
    assert key.startswith(f"crm_sk_{prefix}_") and len(prefix) == apikeys.PREFIX_LENGTH
    parsed = apikeys.parse(key)
    assert (parsed.kind, parsed.prefix) == ("secret", prefix) and len(parsed.secret) >= 40
    _, pk = apikeys.new_key(apikeys.PUBLISHABLE)
    assert pk.startswith("crm_pk_") and apikeys.parse(pk).kind == "publishable"
    assert len({apikeys.new_key()[1] for _ in range(50)}) == 50


@pytest.mark.parametrize("text", ["", "crm_sk_", "crm_xx_abcdefghij_" + "a" * 43, "crm_sk_ABCDEFGHIJ_" + "a" * 43,
                                  "crm_sk_abcdefghij_short", "Bearer crm_sk_abcdefghij_" + "a" * 43, None, 42])
def test_anything_else_is_not_a_key(text):
    assert apikeys.parse(text) is None


def test_only_a_hash_of_the_whole_key_is_compared_in_constant_time():
    _, key = apikeys.new_key()
    stored = apikeys.hash_key(key)
    assert stored == hashlib.sha256(key.encode()).hexdigest() and key not in stored
    assert apikeys.matches(key, stored) and apikeys.matches(f" {key}\n", stored)
    assert not apikeys.matches(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)


def test_admin_implies_every_scope():
    assert apikeys.allows([ADMIN], CUSTOMERS_READ) and apikeys.allows([ADMIN], EVENTS_WRITE)
    assert apikeys.allows([CUSTOMERS_READ], CUSTOMERS_READ) and not apikeys.allows([CUSTOMERS_READ], ADMIN)


def test_key_specs_are_checked():
    assert apikeys.check_spec("secret", ["customers:read", "admin", "admin"], [], None, None) == (
        ["admin", "customers:read"], [])
    assert apikeys.check_spec("publishable", [EVENTS_WRITE], ["https://Shop.Example:443", "http://a.test:8080"],
                              None, None) == ([EVENTS_WRITE], ["http://a.test:8080", "https://shop.example"])
    for kind, scopes, origins, message in [
        ("secret", ["customers:write"], [], "unknown scope"),
        ("secret", [], [], "at least one scope"),
        ("publishable", [CUSTOMERS_READ], ["https://a.test"], "only have the scope events:write"),
        ("publishable", [EVENTS_WRITE], [], "needs at least one allowed origin"),
        ("secret", [EVENTS_WRITE], ["https://a.test"], "for publishable keys"),
        ("publishable", [EVENTS_WRITE], ["https://a.test/path"], "is not scheme://host"),
        ("publishable", [EVENTS_WRITE], ["ftp://a.test"], "is not scheme://host"),
        ("other", [EVENTS_WRITE], [], "kind must be"),
    ]:
        with pytest.raises(InvalidKeySpec, match=message):
            apikeys.check_spec(kind, scopes, origins, None, None)
    with pytest.raises(InvalidKeySpec, match="rate"):
        apikeys.check_spec("secret", [ADMIN], [], 0, None)
    with pytest.raises(InvalidKeySpec, match="burst"):
        apikeys.check_spec("secret", [ADMIN], [], None, 0)


def test_origins_are_normalized_as_browsers_send_them():
    assert apikeys.normalize_origin("HTTPS://Shop.Example") == "https://shop.example"
    assert apikeys.normalize_origin("http://shop.example:80") == "http://shop.example"
    assert apikeys.normalize_origin("https://shop.example:8443") == "https://shop.example:8443"
    assert apikeys.normalize_origin("http://[::1]:3000") == "http://[::1]:3000"
    for bad in ("null", "shop.example", "https://", "https://user:pw@shop.example", "https://a.test:99999"):
        with pytest.raises(InvalidKeySpec):
            apikeys.normalize_origin(bad)


# -- rate limits -----------------------------------------------------------------------------------

def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    limiter = Limiter(clock)
    want = Want("key", "k", rate=2, burst=5)
    assert all(limiter.take([want]) is None for _ in range(5))
    refused = limiter.take([want])
    assert refused is not None and refused.want == want and refused.wait_s == pytest.approx(0.5)
    assert refused.retry_after == 1  # whole seconds, at least 1
    clock.now += 0.5
    assert limiter.take([want]) is None and limiter.take([want]) is not None
    clock.now += 100  # refills up to the burst, never beyond
    assert sum(limiter.take([want]) is None for _ in range(10)) == 5


def test_a_cost_larger_than_the_burst_goes_through_a_full_bucket_and_is_paid_back():
    clock = Clock()
    limiter = Limiter(clock)
    big = Want("key", "k", rate=10, burst=20, cost=50)
    assert limiter.take([big]) is None  # never refused forever
    refused = limiter.take([Want("key", "k", rate=10, burst=20, cost=1)])
    assert refused.wait_s == pytest.approx(3.1) and refused.retry_after == 4  # 30 in debt, then 1 more
    clock.now += 3.1
    assert limiter.take([Want("key", "k", rate=10, burst=20, cost=1)]) is None


def test_several_buckets_are_charged_all_or_none_and_others_are_not_starved():
    clock = Clock()
    limiter = Limiter(clock)
    key_a, key_b = Want("key", "a", 1, 10, 4), Want("key", "b", 1, 10, 4)
    source = Want("source", "urn:shop", 1, 6, 4)
    assert limiter.take([key_a, source]) is None
    refused = limiter.take([key_a, source])  # the source has 2 left: refused, and key a is not charged
    assert refused.want.kind == "source"
    assert limiter.take([key_a]) is None  # key a still had 6
    assert limiter.take([key_b]) is None  # another key is not starved by a's use
    assert limiter.take([Want("key", "a", 1, 10, 4)]) is not None


def test_the_least_recently_used_bucket_is_dropped_beyond_the_bound():
    limiter = Limiter(Clock(), max_buckets=2)
    for name in ("a", "b", "c"):
        limiter.take([Want("ip", name, 1, 1)])
    assert limiter.take([Want("ip", "a", 1, 1)]) is None  # forgotten: a full bucket again
    assert limiter.take([Want("ip", "c", 1, 1)]) is not None


def test_token_bucket_refill_is_capped_and_monotonic():
    bucket = TokenBucket(rate=1, burst=3, now=0)
    bucket.take(3)
    assert bucket.wait_s(1, now=0.5) == pytest.approx(0.5)
    assert bucket.wait_s(1, now=0.2) == pytest.approx(0.5)  # a clock going back changes nothing
    assert bucket.wait_s(3, now=10) == 0 and bucket.tokens == 3


def test_a_429_names_the_limit():
    refusal = Limiter(Clock()).take([Want("source", "urn:x", 5, 5, 10, "events")]) or \
        Limiter(Clock()).take([Want("source", "urn:x", 5, 5, 10, "events")])
    assert refusal is None  # a full bucket takes a batch over its burst
    limiter = Limiter(Clock())
    limiter.take([Want("source", "urn:x", 5, 5, 10, "events")])
    problem = rate_limited(limiter.take([Want("source", "urn:x", 5, 5, 1, "events")]))
    assert problem.status == 429 and "event source 'urn:x'" in problem.message and "5 events/s" in problem.message
    assert problem.headers["Retry-After"] == "2" and problem.detail["limit"] == "source"


# -- requests --------------------------------------------------------------------------------------

def _request(headers: dict[str, str] | None = None, query: str = "") -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode(),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]})


def test_the_key_comes_from_bearer_then_x_api_key_then_where_allowed_the_query():
    assert presented_key(_request({"Authorization": "Bearer k1", "X-API-Key": "k2"})) == "k1"
    assert presented_key(_request({"Authorization": "bearer  k1 "})) == "k1"
    assert presented_key(_request({"Authorization": "Basic dXNlcjpwdw==", "X-API-Key": "k2"})) == "k2"
    assert presented_key(_request({"Authorization": "Basic dXNlcjpwdw=="})) is None
    assert presented_key(_request(query="access_token=k3")) is None
    assert presented_key(_request(query="access_token=k3"), query_token=True) == "k3"
    assert presented_key(_request({"X-API-Key": "k2"}, "access_token=k3"), query_token=True) == "k2"


def test_every_route_needs_a_scope_or_is_listed_as_open():
    app = FastAPI()

    @app.get("/open")
    def open_route() -> dict:
        return {}

    @app.get("/read", dependencies=[Depends(require(CUSTOMERS_READ))])
    def read() -> dict:
        return {}

    @app.post("/both", dependencies=[Depends(require(CUSTOMERS_READ)), Depends(require(ADMIN))])
    def both() -> dict:
        return {}

    assert require(CUSTOMERS_READ) is require(CUSTOMERS_READ)  # one dependency per scope: run once a request
    table = check_routes(app, {"/open", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
    assert table[("GET", "/read")] == {CUSTOMERS_READ} and table[("POST", "/both")] == {ADMIN}
    assert table[("GET", "/open")] == set()
    with pytest.raises(RuntimeError, match="GET /open requires no scope"):
        check_routes(app, {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
    with pytest.raises(ValueError):
        require("customers:write")
    assert route_scopes(None) == set()


def test_the_audit_actor_is_a_caller_a_name_or_the_platform():
    class Caller:
        key_id, name, ip = "key_1", "abc (ops)", "10.0.0.1"

    assert audit._actor(Caller(), None) == ("key_1", "abc (ops)", "10.0.0.1")
    assert audit._actor("cli:alice", None) == (None, "cli:alice", None)
    assert audit._actor(None, "127.0.0.1") == (None, "system", "127.0.0.1")


def test_the_simulator_sends_the_key_from_crm_api_key(monkeypatch):
    from services.simulator import main as sim

    seen: list[httpx.Request] = []

    def collector(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"accepted": [], "rejected": []})

    monkeypatch.setenv("CRM_API_KEY", "crm_sk_abcdefghij_" + "x" * 43)
    with pytest.raises(SystemExit):
        sim.run(["--collector", "http://collector.test", "--customers", "1", "--rate", "100000", "--quiet",
                 "--max-events", "2"], transport=httpx.MockTransport(collector))
    assert seen and all(r.headers["authorization"] == "Bearer crm_sk_abcdefghij_" + "x" * 43 for r in seen)
