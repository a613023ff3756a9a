"""The operations dashboard: signing in, sessions that can only read, pipeline health, and the page
itself in a real browser (Debian's chromium driven by Selenium through Debian's chromedriver;
nothing is downloaded at run time: ``make test`` installs both packages)."""
from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from services.common.topics import CUSTOMER_EVENTS
from tests import http
from tests.browser import chromium, sign_in
from tests.processes import VENV_BIN, wait_for

PASSWORD = "correct horse battery staple"


def crm(platform, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "crm"), *args], env=platform.env(), input=stdin, capture_output=True,
                          text=True, timeout=60)


def add_operator(platform, username: str, name: str = "") -> None:
    done = crm(platform, "operators", "add", username, "--name", name or username, "--password-stdin",
               stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def survey(u: str, n: int, csat: int, email: str) -> dict:
    return {"id": f"{u}-s{n}", "source": "urn:survey", "type": "survey.answered", "time": now_iso(),
            "data": {"email": email, "survey_id": f"s-{u}-{n}", "csat": csat, "nps": 9, "rated_channel": "phone"}}


# -- sessions, over HTTP ---------------------------------------------------------------------------------

def test_an_operator_signs_in_to_a_session_that_can_only_read(running, platform, unique):
    _, api = running
    add_operator(platform, f"ops-{unique}", "Li Na 李娜")
    with httpx.Client(base_url=api) as browser:
        wrong = browser.post("/v1/session", json={"username": f"ops-{unique}", "password": "not the password"})
        assert wrong.status_code == 401 and "wrong password" in wrong.json()["error"]
        assert browser.get("/v1/session").status_code == 401
        signed = browser.post("/v1/session", json={"username": f"OPS-{unique}", "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        body = signed.json()
        assert body["operator"] == f"ops-{unique}" and body["display_name"] == "Li Na 李娜"
        assert sorted(body["scopes"]) == ["customers:read", "indicators:read"] and body["expires_at"]
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "crm_session=" in cookie
        # reads work with the cookie alone ...
        assert browser.get("/v1/indicators/definitions").status_code == 200
        assert browser.get("/v1/ops/pipeline").status_code == 200
        assert browser.get("/v1/session").json()["operator"] == f"ops-{unique}"
        # ... nothing else does: a write is refused even where the key would have the scope
        refused = browser.post("/v1/customers/c_x/unmerge", json={"alias": "c_y", "reason": "test"})
        assert refused.status_code == 401
        assert browser.get("/v1/keys").status_code == 403  # admin only: the session has read scopes
        # the audit log names the operator
        entries = http.get(f"{api}/v1/audit", params={"action": "session.create"}).json()["items"]
        assert any(e["actor_name"] == f"operator:ops-{unique}" for e in entries)
        assert browser.delete("/v1/session").status_code == 204
        assert browser.get("/v1/indicators/definitions").status_code == 401
    # the old cookie is dead after signing out, even presented by hand
    token = cookie.split("crm_session=")[1].split(";")[0]
    assert httpx.get(f"{api}/v1/indicators/definitions", cookies={"crm_session": token}).status_code == 401


def test_a_disabled_operator_is_signed_out_and_an_api_key_gives_only_its_read_scopes(running, platform, unique):
    _, api = running
    add_operator(platform, f"gone-{unique}")
    with httpx.Client(base_url=api) as browser:
        assert browser.post("/v1/session", json={"username": f"gone-{unique}", "password": PASSWORD}).status_code == 200
        done = crm(platform, "operators", "disable", f"gone-{unique}")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: browser.get("/v1/ops/pipeline").status_code == 401, 15, "the session ended")
        again = browser.post("/v1/session", json={"username": f"gone-{unique}", "password": PASSWORD})
        assert again.status_code == 401
    with httpx.Client(base_url=api) as browser:
        made = browser.post("/v1/session", json={"api_key": platform.keys["indicators:read"]})
        assert made.status_code == 200 and made.json()["scopes"] == ["indicators:read"]
        assert browser.get("/v1/customers", params={"q": "x"}).status_code == 403
        admin = browser.post("/v1/session", json={"api_key": platform.admin_key})
        assert sorted(admin.json()["scopes"]) == ["customers:read", "indicators:read"]  # never admin
        writer = browser.post("/v1/session", json={"api_key": platform.keys["events:write"]})
        assert writer.status_code == 403 and "no read scope" in writer.json()["error"]
        assert browser.post("/v1/session", json={"username": "x"}).status_code == 422
    listed = crm(platform, "operators", "list")
    assert f"gone-{unique}" in listed.stdout and "disabled" in listed.stdout


def test_sessions_expire_and_guessing_is_slowed_down(platform, unique):
    _, api = platform.api(CRM_SESSION_HOURS="0.001")  # 3.6 s
    add_operator(platform, f"brief-{unique}")
    with httpx.Client(base_url=api) as browser:
        signed = browser.post("/v1/session", json={"username": f"brief-{unique}", "password": PASSWORD})
        assert signed.status_code == 200 and "max-age=3" in signed.headers["set-cookie"].lower()
        assert browser.get("/v1/indicators/definitions").status_code == 200
        # the browser drops the cookie when it expires; the server refuses it then too, even presented by hand
        token = signed.cookies["crm_session"]
        expired = wait_for(lambda: (r := httpx.get(f"{api}/v1/indicators/definitions",
                                                   cookies={"crm_session": token})).status_code == 401 and r, 30,
                           "the session to expire")
        assert "sign in again" in expired.json()["error"]
        answers = [browser.post("/v1/session", json={"username": f"brief-{unique}", "password": f"guess {n}"})
                   for n in range(12)]
    assert [a.status_code for a in answers[:9]] == [401] * 9  # one attempt of the 10 went to signing in
    assert answers[-1].status_code == 429 and int(answers[-1].headers["retry-after"]) >= 1
    assert "too many sign-in attempts" in answers[-1].json()["error"]


def test_pipeline_health_counts_what_flows_and_names_every_consumer(running, platform, unique):
    collector, api = running
    before = http.get(f"{api}/v1/ops/pipeline").json()
    assert before["kafka"]["ok"] and before["database"]["ok"], (before["kafka"], before["database"])
    http.post(f"{collector}/v1/events", json=[survey(unique, n, 4, f"p-{unique}@example.com") for n in range(5)]
              ).raise_for_status()

    def moved():
        p = http.get(f"{api}/v1/ops/pipeline").json()
        return p["projected_total"] >= before["projected_total"] + 5 and p
    after = wait_for(moved, 60, "the five events counted", interval=0.5)  # the answer is cached for 2 s
    assert after["accepted_total"] >= before["accepted_total"] + 5
    assert after["processed_total"] >= before["processed_total"] + 5
    stages = {(c["group"], c["topic"]): c for c in after["consumers"]}
    view = stages[(platform.processor_id, platform.topic(CUSTOMER_EVENTS))]
    assert view["stored_in"] == "postgresql" and view["lag"] == 0 and len(view["partitions"]) == 4
    assert view["freshness_s"] is not None and view["freshness_s"] >= 0
    assert after["deadletters_total"] is not None and after["lag_total"] == 0
    # the feed relay's lag is the outbox rows it has not published: it drains, it does not only grow
    relay = f"{platform.processor_id}.feed-relay"
    assert [c["stored_in"] for c in after["consumers"] if c["group"] == relay] == ["outbox"]

    def relay_drained():  # polled every 0.5 s: the answer is cached for 2 s per API process
        rows = [c for c in http.get(f"{api}/v1/ops/pipeline").json()["consumers"] if c["group"] == relay]
        return rows[0]["lag"] == 0 and rows[0]
    drained = wait_for(relay_drained, 60, "the feed relay caught up", interval=0.5)
    assert drained["topic"] == "feed_outbox" and drained["freshness_s"] == 0.0
    assert http.get(f"{api}/v1/ops/pipeline", key=platform.keys["customers:read"]).status_code == 403


# -- the page in a browser ---------------------------------------------------------------------------------

def text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_the_dashboard_in_a_browser_shows_numbers_moving_and_finds_a_customer(running, platform, unique):
    from selenium.webdriver.common.by import By

    collector, api = running
    add_operator(platform, f"wall-{unique}", "Wall screen")
    email = f"dash-{unique}@example.com"
    http.post(f"{collector}/v1/events", json=[
        {"id": f"{unique}-p", "source": "urn:crm", "type": "profile.updated", "time": now_iso(),
         "data": {"email": email, "name": f"王芳 Wang{unique}", "company": "Acme",
                  "account_id": "guest"}},  # a placeholder: refused, and explained on the customer page
        survey(unique, 0, 5, email)]).raise_for_status()
    expected = wait_for(lambda: http.get(f"{api}/v1/customers", params={"email": email}).json()["items"], 60,
                        "the customer")[0]["customer_id"]

    shots = Path(os.environ.get("CRM_TEST_SCREENSHOTS") or platform.log_dir / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        driver = chromium()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        sign_in(driver, api, f"wall-{unique}", PASSWORD)
        assert text(driver, "#who") == "Wall screen"
        assert "crm_session" not in driver.execute_script("return document.cookie")  # HttpOnly: not the page's
        wait_for(lambda: text(driver, "#status").endswith("live"), 30, "the live stream")

        # satisfaction: the CSAT tile's sample count grows as answers arrive over the stream
        wait_for(lambda: text(driver, "#tile-csat .sub").startswith("n="), 30, "the first CSAT")
        first = text(driver, "#tile-csat .sub")
        http.post(f"{collector}/v1/events", json=[survey(unique, n, 1, email) for n in range(1, 4)]).raise_for_status()
        wait_for(lambda: text(driver, "#tile-csat .sub") != first, 60, f"the CSAT tile to move from {first}")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#slice-rows tr[data-member]"), 30,
                 "a row per channel")
        driver.save_screenshot(str(shots / f"dashboard-satisfaction-{unique}.png"))

        # pipeline: totals grow as events flow; broker and database reachable
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab='pipeline']").click()
        wait_for(lambda: text(driver, "#p-kafka") == "reachable" and text(driver, "#p-database") == "reachable", 30,
                 "reachability")
        wait_for(lambda: text(driver, "#p-accepted-total") not in ("", "–"), 30, "the totals")
        accepted = int(text(driver, "#p-accepted-total").replace(",", ""))
        http.post(f"{collector}/v1/events", json=[survey(unique, n, 3, email) for n in range(4, 14)]).raise_for_status()
        wait_for(lambda: int(text(driver, "#p-accepted-total").replace(",", "")) >= accepted + 10, 60, "accepted to grow")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#consumers tr[data-group='{platform.processor_id}']"),
                 30, "the stages' consumer rows")
        driver.save_screenshot(str(shots / f"dashboard-pipeline-{unique}.png"))

        # customers: a search by email opens that customer, with identities and the timeline
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab='customers']").click()
        driver.find_element(By.ID, "search-input").send_keys(email)
        driver.find_element(By.CSS_SELECTOR, "#search-form button[type='submit']").click()
        wait_for(lambda: driver.find_element(By.ID, "customer").get_attribute("data-customer") == expected, 30,
                 "the customer opened")
        assert f"Wang{unique}" in text(driver, "#c-name")
        assert email in text(driver, "#c-identities")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#c-timeline tr")) >= 5, 30, "the timeline")
        refusals = text(driver, "#c-refusals")
        assert "account_id:guest" in refusals and "blocked placeholder value" in refusals and f"{unique}-p" in refusals
        # a name search finds the same customer
        box = driver.find_element(By.ID, "search-input")
        box.clear()
        box.send_keys(f"Wang{unique}")
        driver.find_element(By.CSS_SELECTOR, "#search-form button[type='submit']").click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#search-results li[data-customer='{expected}']"), 30,
                 "the name search")
        driver.save_screenshot(str(shots / f"dashboard-customer-{unique}.png"))

        # Simplified Chinese, then signing out
        driver.find_element(By.CSS_SELECTOR, "header .lang-toggle").click()
        assert driver.title == "CRM 运营看板" and text(driver, "nav button[data-tab='customers']") == "客户查询"
        wait_for(lambda: "被屏蔽的占位值" in text(driver, "#c-refusals"), 30, "the refusal in Chinese")
        driver.find_element(By.ID, "signout").click()
        wait_for(lambda: driver.find_element(By.ID, "signin").is_displayed(), 20, "the sign-in form again")
        status = driver.execute_script("return fetch('/v1/ops/pipeline').then(r => r.status)")
        assert status == 401
    finally:
        driver.quit()


LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
VALUES = re.compile(r"\bc_[0-9a-f]{20}\b|\b(?:email|phone|account_id|anonymous_id):\S+")
"""Customer ids and identifier keys (``phone:+86...``): values, the same in every language (a merge
row names an alias id and the identifier that joined, when the events happened to merge)."""


def latin_words(text_: str, *values: str) -> list[str]:
    """Latin-letter words left in ``text_`` once the given identifiers and values are taken out; the
    acronyms CSAT and NPS are what Chinese operators call those scores too."""
    for value in sorted(values, key=len, reverse=True):
        text_ = text_.replace(value, " ")
    text_ = VALUES.sub(" ", text_)
    return [w for w in LATIN_WORD.findall(text_) if w not in ("CSAT", "NPS")]


def fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_the_dashboard_lists_firing_alerts_marks_breaches_fits_a_laptop_and_speaks_chinese(running, platform, unique):
    from selenium.webdriver.common.by import By

    collector, api = running
    add_operator(platform, f"shift-{unique}")
    queue, ticket = f"q-{unique}", f"T-{unique}"
    email, phone = f"zh-{unique}@example.com", f"+86137{int(unique[:6], 16) % 10**8:08d}"
    calls = [{"id": f"{unique}-ab{n}", "source": "urn:cti", "type": "call.abandoned", "time": now_iso(),
              "data": {"phone_number": phone, "call_id": f"{unique}-ab{n}", "queue": queue, "wait_seconds": 80}}
             for n in range(10)]
    calls += [{"id": f"{unique}-an{n}", "source": "urn:cti", "type": "call.answered", "time": now_iso(),
               "data": {"phone_number": phone, "call_id": f"{unique}-an{n}", "queue": queue, "agent": f"a-{unique}",
                        "wait_seconds": 5}} for n in range(2)]
    http.post(f"{collector}/v1/events", json=[
        {"id": f"{unique}-p", "source": "urn:crm", "type": "profile.updated", "time": now_iso(),
         "data": {"email": email, "phone": phone, "name": "张伟", "company": "星辰科技"}},
        {"id": f"{unique}-s", "source": "urn:survey", "type": "survey.answered", "time": now_iso(),
         "data": {"email": email, "survey_id": f"s-{unique}", "csat": 1, "nps": 2, "comment": "太差了，非常失望",
                  "rated_channel": "phone", "queue": queue}},
        {"id": f"{unique}-t", "source": "urn:helpdesk", "type": "ticket.opened", "time": now_iso(),
         "data": {"email": email, "ticket_id": ticket, "kind": "complaint", "subject": "包裹破损",
                  "body_text": "包裹破损，非常失望，我要投诉"}},
        *calls]).raise_for_status()

    # the default rule abandonment-high (above 10 % over 1 h per queue, at least 10 calls) fires on the
    # queue before the page is opened: the stream will not announce it again
    def firing():
        items = http.get(f"{api}/v1/indicators/alerts").json()["items"]
        return next((a for a in items if a["rule"] == "abandonment-high" and a["member"] == queue), None)
    alert = wait_for(firing, 60, "the abandonment alert")
    assert (alert["dimension"], alert["bound"], alert["threshold"]) == ("queue", "above", 10.0)
    assert alert["count"] == 12 and round(alert["value"], 1) == 83.3
    assert http.get(f"{api}/v1/indicators/alerts", key=platform.keys["customers:read"]).status_code == 403
    audit = http.get(f"{api}/v1/audit", params={"action": "indicators.alerts"}).json()["items"]
    assert audit, "reading the firing alerts is audited"
    seen: list = []

    def at_risk():
        seen[:] = http.get(f"{api}/v1/customers", params={"email": email}).json()["items"]
        return [c for c in seen if {r["code"] for r in c["satisfaction"]["reasons"]} >= {
            "low_csat", "detractor", "open_complaint"}]
    try:
        customer = wait_for(at_risk, 60, "the customer at risk")[0]
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[c['satisfaction'] for c in seen]}") from None

    try:
        driver = chromium(width=1366, height=768)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        sign_in(driver, api, f"shift-{unique}", PASSWORD, "dimension=queue&lang=en")
        mine = f"#alerts li[data-rule='abandonment-high'][data-member='{queue}']"
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, mine), 30, "the firing alert listed on opening")
        assert "above 10 %" in text(driver, mine) and "n=12" in text(driver, mine)

        # a breached value is coloured, a tiny sample marked as such (the queue's one CSAT answer)
        wait_for(lambda: "breach" in driver.find_element(By.ID, "tile-abandonment_rate").get_attribute("class"), 30,
                 "the abandonment tile marked as breached")
        row = f"#slice-rows tr[data-member='{queue}']"
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, row), 30, "the queue's row")
        cell = lambda name: driver.find_element(By.CSS_SELECTOR, f"{row} td[data-indicator='{name}']")  # noqa: E731
        wait_for(lambda: "breach" in cell("abandonment_rate").get_attribute("class"), 30, "the queue's breach")
        wait_for(lambda: "small-sample" in cell("csat").get_attribute("class"), 30, "the CSAT of one answer marked")
        assert "breach" not in cell("csat").get_attribute("class")  # one answer of 1 breaks no rule of 5 answers

        # per-minute charts: lines broken where a minute has no data, a dot only for a minute alone
        wait_for(lambda: driver.execute_script("return charts.abandonment_rate.data[1].some((v) => v !== null)"), 30,
                 "the abandonment chart drawn")
        charts = driver.execute_script("""
            return {spanGaps: charts.abandonment_rate.series[1].spanGaps,
                    nulls: charts.abandonment_rate.data[1].some((v) => v === null),
                    drawn: charts.abandonment_rate.data[1].some((v) => v !== null),
                    lone: lonePoints({data: [[0, 1, 2, 3, 4, 5], [1, null, 2, 3, null, 4]]}, 1)};""")
        assert charts == {"spanGaps": False, "nulls": True, "drawn": True, "lone": [0, 5]}, charts

        # no sideways scrolling at 1,366 px: the satisfaction tab, the pipeline's consumers (partition
        # lists), then a customer with long texts
        assert fits(driver), driver.execute_script("return document.documentElement.scrollWidth")
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab='pipeline']").click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#consumers tr[data-group='{platform.processor_id}']"),
                 30, "the consumers")
        assert fits(driver), driver.execute_script("return document.documentElement.scrollWidth")
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab='customers']").click()
        driver.find_element(By.ID, "search-input").send_keys(email)
        driver.find_element(By.CSS_SELECTOR, "#search-form button[type='submit']").click()
        wait_for(lambda: driver.find_element(By.ID, "customer").get_attribute("data-customer")
                 == customer["customer_id"], 30, "the customer opened")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#c-timeline tr")) >= 3, 30, "the timeline")
        assert fits(driver), driver.execute_script("return document.documentElement.scrollWidth")

        # Simplified Chinese: no English left in what the page words itself
        driver.find_element(By.CSS_SELECTOR, "header .lang-toggle").click()
        wait_for(lambda: text(driver, "#status") == "● 实时", 30, "the stream's state in Chinese")
        box = driver.find_element(By.ID, "search-input")
        box.clear()
        box.send_keys(email)
        driver.find_element(By.CSS_SELECTOR, "#search-form button[type='submit']").click()
        wait_for(lambda: text(driver, "#search-status") == "找到 1 位客户", 30, "the search in Chinese")
        wait_for(lambda: "工单" in text(driver, "#c-timeline"), 30, "the timeline in Chinese")
        values = (email, phone, ticket, queue, customer["customer_id"], f"a-{unique}")
        for css in ("#c-timeline", "#c-satisfaction", "#c-merges", "#c-state dd:first-of-type", "#search-status"):
            assert latin_words(text(driver, css), *values) == [], (css, text(driver, css))
        assert fits(driver)
        shots = Path(os.environ.get("CRM_TEST_SCREENSHOTS") or platform.log_dir / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / f"dashboard-1366-zh-customer-{unique}.png"))
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab='satisfaction']").click()
        wait_for(lambda: "放弃率" in text(driver, mine), 30, "the alert in Chinese")
        assert latin_words(text(driver, mine), *values) == [], text(driver, mine)
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#risk tr"), 30, "the customers at risk")
        for reasons in driver.find_elements(By.CSS_SELECTOR, "#risk td:nth-child(3)"):
            assert latin_words(reasons.text, *values) == [], reasons.text
        assert fits(driver), driver.execute_script("return document.documentElement.scrollWidth")
        driver.save_screenshot(str(shots / f"dashboard-1366-zh-{unique}.png"))
    finally:
        driver.quit()
