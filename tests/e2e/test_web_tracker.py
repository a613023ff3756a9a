"""The web tracker end to end: Debian's headless Chromium on the demo shop (examples/shop), served from
another origin than the collector, and the customer the platform makes of the visit.

The shop is served on 127.0.0.1 (the origin the publishable key allows) and, by the same server, as
``localhost`` (an origin it does not allow): two origins, and two cookie jars, since cookies ignore
ports but not host names.
"""
from __future__ import annotations

import functools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import quote, urlsplit

import orjson
import psycopg2
import pytest

from services.common import apikeys
from services.common.apikeys import EVENTS_WRITE, PUBLISHABLE
from tests import http
from tests.processes import REPO, wait_for

SHOP = REPO / "examples" / "shop"
COOKIE_DAYS = 30


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def shop_server() -> Iterator[int]:
    """The demo shop's static pages on a free port of 127.0.0.1 (its port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(SHOP)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def publishable_key(dsn: str, *origins: str) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            _, key = apikeys.create(cur, name="demo shop", scopes=[EVENTS_WRITE], kind=PUBLISHABLE,
                                    origins=list(origins), created_by="tests")
    finally:
        conn.close()
    return key


def web_event(unique: str, n: int, origin: str, **data) -> dict:
    return {"specversion": "1.0", "id": f"{unique}-{n}", "source": f"urn:crm:web:{origin.split('//')[1]}",
            "type": "web.page_viewed", "time": "2026-11-01T10:00:00Z",
            "data": {"anonymous_id": f"aid-{unique}", "url": f"{origin}/index.html", **data}}


# -- the browser --------------------------------------------------------------------------------

def test_a_visit_in_chromium_becomes_one_customer_with_the_login_and_the_cart(platform, unique):
    from selenium.webdriver.common.by import By

    from tests.browser import chromium

    _, collector = platform.collector(CRM_TRACKER_COOKIE_DAYS=str(COOKIE_DAYS))
    platform.processor()
    _, api = platform.api()
    account, email = f"acct-{unique}", f"Li.Na.{unique}@163.com"

    with shop_server() as port:
        shop, stranger = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
        key = publishable_key(platform.dsn, shop)
        config = f"collector={quote(collector, safe='')}&key={key}"
        driver = chromium()
        try:
            def loaded() -> bool:
                return driver.execute_script("return !!(window.crm && window.crm.loaded)")

            # a page on an origin the key does not allow: the answer (403, as the tests of the routes
            # show) has no Access-Control-Allow-Origin, so Chromium refuses it; nothing arrives
            driver.get(f"{stranger}/index.html?{config}")
            wait_for(loaded, 20, "the tracker on the stranger's page")
            stranger_aid = driver.get_cookie("crm_aid")["value"]
            refusals = wait_for(lambda: [e["message"] for e in driver.get_log("browser")
                                         if "/v1/tracker/events" in e["message"]], 20, "the refusal in the console")
            assert any(f"from origin '{stranger}' has been blocked by CORS policy: No 'Access-Control-Allow-Origin'"
                       in m for m in refusals), refusals

            # the shop: two pages, a login, another page, and an add-to-cart
            driver.get(f"{shop}/index.html?{config}&wait=60000&utm_source=weibo&utm_medium=social&utm_campaign=double11")
            wait_for(loaded, 20, "the tracker")
            cookie = driver.get_cookie("crm_aid")
            anonymous_id = cookie["value"]
            assert cookie["sameSite"] == "Lax" and not cookie["httpOnly"] and cookie["domain"] == "127.0.0.1"
            assert abs(cookie["expiry"] - (time.time() + COOKIE_DAYS * 86400)) < 600, cookie
            assert anonymous_id != stranger_aid
            assert "key=" not in driver.current_url  # the configuration is kept out of the reported URLs

            driver.find_element(By.ID, "product-HAIER-BCD-470").click()
            wait_for(lambda: "Haier" in driver.find_element(By.ID, "name").text, 20, "the product page")
            driver.find_element(By.ID, "login-link").click()
            wait_for(lambda: driver.find_elements(By.ID, "login-form"), 20, "the login page")
            driver.find_element(By.ID, "account").send_keys(account)
            driver.find_element(By.ID, "email").send_keys(email)
            driver.find_element(By.ID, "display-name").send_keys("李娜")
            driver.find_element(By.ID, "login-submit").click()  # identify, then straight to the home page
            wait_for(lambda: driver.find_elements(By.ID, "signed-in"), 20, "signed in")
            driver.find_element(By.ID, "product-HAIER-BCD-470").click()
            wait_for(lambda: driver.find_elements(By.ID, "add-to-cart") and loaded(), 20, "the product page")
            driver.find_element(By.ID, "add-to-cart").click()
            # leave at once, for a page without the tracker: the batch waits 60 s (?wait=60000), so
            # only the unload beacon can deliver the cart
            driver.get("about:blank")
        finally:
            driver.quit()

    def customer() -> dict | None:
        found = http.get(f"{api}/v1/customers", params={"account_id": account}).json()["items"]
        return found[0] if found else None

    def complete() -> list[dict] | None:
        c = customer()
        if c is None:
            return None
        items = http.get(f"{api}/v1/customers/{c['customer_id']}/timeline", params={"limit": 100}).json()["items"]
        return items if len(items) >= 8 and any(i["type"] == "web.tracked" for i in items) else None

    timeline = wait_for(complete, 60, "eight events, the add-to-cart among them, on the customer's timeline")
    customer_id = customer()["customer_id"]
    view = http.get(f"{api}/v1/customers/{customer_id}").json()
    assert view["identities"] == {"account_id": [account], "anonymous_id": [anonymous_id],
                                  "email": [email.lower()]}, view["identities"]
    for kind, value in (("anonymous_id", anonymous_id), ("email", email)):
        assert [c["customer_id"] for c in http.get(f"{api}/v1/customers", params={kind: value}).json()["items"]] \
            == [customer_id]

    types = [i["type"] for i in timeline]
    assert types.count("web.session_started") == 1, types
    by_type = {i["type"]: i for i in timeline}
    started = by_type["web.session_started"]
    assert started["time"] == min(i["time"] for i in timeline)  # the session starts with the first page
    # home, product, login, home, product
    assert types.count("web.page_viewed") == 5 and types.count("web.identified") == 1, types
    assert types.count("web.tracked") == 1 and len(types) == 8, types
    first_page = next(i["data"] for i in timeline if i["type"] == "web.page_viewed")
    assert first_page["campaign"] == {"source": "weibo", "medium": "social", "name": "double11"}
    assert first_page["url"].startswith(f"{shop}/index.html") and "key=" not in first_page["url"]
    assert "user_id" not in first_page  # not yet signed in
    signed_in = by_type["web.identified"]
    assert signed_in["summary"] == f"Signed in on the web as {account}"
    assert signed_in["data"]["traits"] == {"name": "李娜"}
    added = by_type["web.tracked"]
    assert added["data"]["event"] == "Product Added" and added["data"]["user_id"] == account
    assert added["data"]["properties"] == {"sku": "HAIER-BCD-470", "name": "Haier BCD-470 refrigerator",
                                           "price": 3999, "currency": "CNY", "quantity": 1}
    assert added["summary"].startswith("Product Added on Haier BCD-470 refrigerator")
    later_pages = [i["data"] for i in timeline if i["type"] == "web.page_viewed"][3:]
    assert all(p["user_id"] == account for p in later_pages)  # remembered after identify
    assert len({i["data"]["session_id"] for i in timeline}) == 1
    assert {i["data"]["anonymous_id"] for i in timeline} == {anonymous_id}
    assert {i["source"] for i in timeline} == {f"urn:crm:web:127.0.0.1:{port}"}

    state = wait_for(lambda: (s := http.get(f"{api}/v1/customers/{customer_id}/state")).status_code == 200
                     and s.json()["lifecycle"]["stage"] == "intent" and s.json(), 30, "the lifecycle stage")
    assert "a cart" in state["lifecycle"]["rule"]
    # the stranger's page was refused: its visitor is nowhere
    assert http.get(f"{api}/v1/customers", params={"anonymous_id": stranger_aid}).json()["items"] == []


# -- the collector's routes ---------------------------------------------------------------------

def test_the_script_is_served_as_javascript_with_an_etag(platform):
    _, collector = platform.collector(CRM_TRACKER_COOKIE_DAYS="90")
    r = http.get(f"{collector}/v1/tracker.js", key=None)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["content-encoding"] == "gzip"  # httpx asks for it and decodes it
    assert "const COOKIE_DAYS = 90;" in r.text and "sendBeacon" in r.text
    etag = r.headers["etag"]
    again = http.get(f"{collector}/v1/tracker.js", key=None, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    plain = http.get(f"{collector}/v1/tracker.js", key=None, headers={"Accept-Encoding": "identity",
                                                                     "If-None-Match": '"other"'})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers and plain.text == r.text
    paths = http.get(f"{collector}/openapi.json").json()["paths"]
    assert {"/v1/tracker.js", "/v1/tracker/events"} <= set(paths)


def test_the_intake_takes_a_beacon_from_an_allowed_origin_only(platform, unique):
    _, collector = platform.collector()
    shop, evil = "https://shop.example", "https://evil.example"
    key = publishable_key(platform.dsn, shop)
    url = f"{collector}/v1/tracker/events"
    beacon = {"Content-Type": "text/plain;charset=UTF-8", "Origin": shop}
    batch = orjson.dumps({"batch": [web_event(unique, 1, shop), web_event(unique, 2, shop, user_id="acct-1")]})
    r = http.post(url, params={"key": key}, key=None, headers=beacon, content=batch)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == [f"{unique}-1", f"{unique}-2"]
    assert r.headers["access-control-allow-origin"] == shop
    # an array as application/json, the key in a header
    r = http.post(url, key=key, headers={"Origin": shop}, json=[web_event(unique, 3, shop)])
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == shop

    # only web.* events from a publishable key
    order = {**web_event(unique, 4, shop), "type": "order.placed"}
    r = http.post(url, params={"key": key}, key=None, headers=beacon, content=orjson.dumps({"batch": [order]}))
    assert r.status_code == 400 and r.json()["rejected"][0]["reason"] == "forbidden"

    refusals = {
        "wrong origin": (403, {"key": key}, {**beacon, "Origin": evil}),
        "no origin": (403, {"key": key}, {"Content-Type": "text/plain"}),
        "no key": (401, {}, beacon),
        "unknown key": (401, {"key": key[:-4] + "AAAA"}, beacon),
        "secret key": (403, {"key": platform.keys["events:write"]}, beacon),
    }
    for what, (status, params, headers) in refusals.items():
        r = http.post(url, params=params, key=None, headers=headers, content=batch)
        assert r.status_code == status, (what, r.text)
        assert "access-control-allow-origin" not in r.headers, what
    secret = http.post(url, params={"key": platform.keys["admin"]}, key=None, headers=beacon, content=batch)
    assert secret.status_code == 403 and "must never be in a web page" in secret.json()["error"]
    assert "origin https://evil.example is not allowed" in \
        http.post(url, params={"key": key}, key=None, headers={**beacon, "Origin": evil}, content=batch).json()["error"]

    # bad bodies get a clear answer (with CORS, so the page can read it)
    bad = {"form": (415, {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
           "not json": (400, {}, b"{nope"), "empty": (400, {}, b""),
           "batch not a list": (400, {}, b'{"batch": 1}'),
           "too big": (413, {}, b"[" + b" " * (500 * 1024) + b"]")}
    for what, (status, headers, content) in bad.items():
        r = http.post(url, params={"key": key}, key=None, headers={**beacon, **headers}, content=content)
        assert r.status_code == status, (what, r.text)
        assert r.headers["access-control-allow-origin"] == shop, what

    # the preflight of application/json callers
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = http.options(url, key=None, headers={"Origin": shop, **ask})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == shop
    assert "Content-Type" in ok.headers["access-control-allow-headers"]
    no = http.options(url, key=None, headers={"Origin": evil, **ask})
    assert no.status_code == 403 and "access-control-allow-origin" not in no.headers


# -- the tracker's delivery, against a scripted collector ----------------------------------------

@dataclass
class Delivery:
    at: float  # time.monotonic()
    content_type: str
    query: str
    page: str  # the path of the page that sent it (its Referer)
    batch: list[dict]
    status: int  # the answer


class ScriptedCollector(ThreadingHTTPServer):
    """Serves tracker.js, test pages and an events route answering the statuses it is given (then
    202), recording every delivery."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        from services.ingest.adapters import web

        self.script = web.render_script(web.SCRIPT_FILE.read_text(encoding="utf-8"), 1)
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.refuse_from: str | None = None  # answer 503 to every delivery from this page
        self.deliveries: list[Delivery] = []
        self.page_script = "crm.page();"  # what the page does, before the tracker has loaded
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def events(self, status: int | None = 202) -> list[dict]:
        """Events of the deliveries answered ``status`` (None: all), in order of arrival."""
        with self.lock:
            return [e for d in self.deliveries for e in d.batch if status is None or d.status == status]


class _ScriptedHandler(SimpleHTTPRequestHandler):
    server: ScriptedCollector

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/tracker.js"):
            return self._send(200, self.server.script, "application/javascript; charset=utf-8")
        page = (f"<!doctype html><html><head><meta charset=utf-8><title>Test page</title><script>"
                "window.crm = window.crm || []; window.errors = [];"
                "window.addEventListener('error', (e) => errors.push(String(e.message)));"
                "['page', 'identify', 'track', 'reset'].forEach((m) => { crm[m] = crm[m] || "
                "((...a) => crm.push([m, ...a])); });"
                f"{self.server.page_script}</script>"
                '<script async src="/v1/tracker.js" data-key="crm_pk_test"></script></head><body>t</body></html>')
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        batch = orjson.loads(body)["batch"]
        page = urlsplit(self.headers.get("referer", "")).path
        with self.server.lock:
            status, headers = self.server.answers.pop(0) if self.server.answers else (202, {})
            if page == self.server.refuse_from:
                status, headers = 503, {}
            self.server.deliveries.append(Delivery(time.monotonic(), self.headers.get("content-type", ""),
                                                   self.path.partition("?")[2], page, batch, status))
        answer = {"accepted": [e["id"] for e in batch], "rejected": []} if status == 202 else {"error": "busy"}
        self._send(status, orjson.dumps(answer), "application/json", headers)


@pytest.fixture
def scripted():
    from tests.browser import chromium

    server = ScriptedCollector()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = chromium()
    try:
        yield server, driver
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def test_batches_of_twenty_are_retried_after_retry_after_and_nothing_is_lost(scripted):
    server, driver = scripted
    server.page_script = "crm.page(); for (let i = 0; i < 24; i++) crm.track('Step', {n: i});"
    server.answers = [(503, {"Retry-After": "1"})]
    driver.get(f"{server.url}/page.html")
    wait_for(lambda: len(server.events()) == 26, 20, "every event accepted")
    with server.lock:
        deliveries = list(server.deliveries)
    assert [(len(d.batch), d.status) for d in deliveries] == [(20, 503), (20, 202), (6, 202)]
    refused, retried = deliveries[:2]
    assert [e["id"] for e in refused.batch] == [e["id"] for e in retried.batch]  # the same events, the same ids
    assert retried.at - refused.at >= 0.9  # Retry-After: 1
    assert refused.content_type == "text/plain;charset=UTF-8" and refused.query == "key=crm_pk_test"
    events = server.events()
    assert [e["type"] for e in events[:2]] == ["web.session_started", "web.page_viewed"]
    assert [e["data"]["properties"]["n"] for e in events[2:]] == list(range(24))
    assert len({e["id"] for e in events}) == 26 and all(e["sentat"] >= e["time"] for e in events)
    assert driver.execute_script("return localStorage.getItem('crm_queue')") is None  # all confirmed


def test_events_the_collector_could_not_take_are_sent_again_from_the_next_page(scripted):
    server, driver = scripted
    server.page_script = "crm.track('Kept');"
    server.refuse_from = "/page.html"  # the fetch, its retries and the unload beacon all get 503
    driver.get(f"{server.url}/page.html")
    wait_for(lambda: server.events(503), 20, "a refused delivery")
    kept = server.events(503)[-1]
    assert kept["data"]["event"] == "Kept"
    server.page_script = ""  # the next page tracks nothing itself
    driver.get(f"{server.url}/other.html")
    wait_for(lambda: [e for e in server.events() if e["id"] == kept["id"]], 20, "the kept event accepted")
    with server.lock:
        deliveries = [(d.page, d.status) for d in server.deliveries if kept["id"] in {e["id"] for e in d.batch}]
    assert deliveries[-1] == ("/other.html", 202) and set(deliveries[:-1]) == {("/page.html", 503)}, deliveries
    beacons = [d for d in deliveries if d == ("/page.html", 503)]
    assert len(beacons) >= 2  # the fetch, then at least the beacon on leaving
    wait_for(lambda: driver.execute_script("return localStorage.getItem('crm_queue')") is None, 10, "an empty queue")


def test_sessions_end_after_thirty_idle_minutes_and_bad_calls_never_reach_the_page(scripted):
    server, driver = scripted
    driver.get(f"{server.url}/page.html")
    wait_for(lambda: len(server.events()) == 2, 20, "the first page")
    first = server.events()[0]["data"]["session_id"]
    # an active session goes on; one idle for 31 minutes is over
    for idle_min, (new_session, count) in ((5, (False, 1)), (31, (True, 2))):
        before = len(server.events())
        driver.execute_script("const s = JSON.parse(localStorage.getItem('crm_session'));"
                              f"s.last = Date.now() - {idle_min} * 60000; localStorage.setItem('crm_session', "
                              "JSON.stringify(s));")
        driver.get(f"{server.url}/page.html")
        wait_for(lambda: len(server.events()) == before + count, 20, "the page")
        new = server.events()[before:]
        assert [e["type"] for e in new] == (["web.session_started"] if new_session else []) + ["web.page_viewed"]
        assert (new[-1]["data"]["session_id"] != first) is new_session

    before = len(server.events())
    driver.execute_script("""
        const loop = {}; loop.self = loop;
        crm.track(); crm.track('Cyclic', loop); crm.identify(); crm.identify(null, {email: 'x@example.com'});
        crm.push(['nope']); crm.push('nope'); crm.track('Fine', [1, 2]);
        crm.identify('acct-7', {email: 'li.na@163.com', phone: '+8613900000000', plan: 'gold'});
        crm.page();""")
    wait_for(lambda: len(server.events()) == before + 4, 20, "the valid calls")
    cyclic, fine, identified, page = server.events()[before:]
    assert (cyclic["data"]["event"], cyclic["data"]["properties"]) == ("Cyclic", {})
    assert (fine["data"]["event"], fine["data"]["properties"]) == ("Fine", {})
    assert identified["type"] == "web.identified" and {k: identified["data"].get(k) for k in (
        "user_id", "email", "phone", "traits")} == {"user_id": "acct-7", "email": "li.na@163.com",
                                                    "phone": "+8613900000000", "traits": {"plan": "gold"}}
    assert page["data"]["user_id"] == "acct-7"
    assert driver.execute_script("return window.errors") == []
    driver.execute_script("crm.reset(); crm.page();")
    wait_for(lambda: len(server.events()) == before + 6, 20, "the page after reset")
    after = server.events()[-1]["data"]
    assert "user_id" not in after and after["anonymous_id"] != page["data"]["anonymous_id"]
