"""Survey links end to end: created through the collector, answered on their page (by HTTP and in a
real browser), read back from the query API as survey.answered attributed to the touchpoint and
agent. Agent names are per test: the broker's log is shared by the whole session."""
from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2

from services.ingest.adapters._survey_links import LinkSealer
from tests import http
from tests.processes import wait_for

PAGE_HEADERS = {"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                "x-frame-options": "DENY", "referrer-policy": "no-referrer", "cache-control": "no-store"}


def customer(u: str) -> dict[str, str]:
    return {"phone": f"+86139{int(u, 16) % 10**8:08d}", "email": f"wang.fang.{u}@163.com"}


def sealer(platform) -> LinkSealer:
    return LinkSealer(base64.b64decode(platform.stack.env["CRM_MASTER_KEY"]))


def token_of(url: str) -> str:
    return url.rsplit("/s/", 1)[1]


def test_links_are_answered_once_and_the_answer_is_attributed_to_the_touchpoint_and_agent(running, platform, unique):
    collector, api = running
    who, agent = customer(unique), f"agent-li-{unique}"
    call = {"kind": "csat", "touchpoint_id": f"call-{unique}", "channel": "phone", "agent": agent,
            "queue": "aftersales", "customer": {"phone": who["phone"]}}
    mail = {"kind": "nps", "touchpoint_id": f"T-{unique}", "channel": "email", "agent": agent,
            "customer": {"email": who["email"]}, "language": "zh"}

    refused = http.post(f"{collector}/v1/surveys", json=call, key=None)
    assert refused.status_code == 401, refused.text
    for bad, says in (({**call, "kind": "stars"}, "kind"), ({**call, "customer": {}}, "identifier"),
                      ({**call, "expires_in_days": 400}, "CRM_SURVEY_LINK_DAYS"), ([], "non-empty"),
                      ({**call, "customer": {"phone": "not a phone"}}, "customer.phone")):
        response = http.post(f"{collector}/v1/surveys", json=bad)
        assert response.status_code == 400 and says in response.text, (bad, response.text)

    created = http.post(f"{collector}/v1/surveys", json=call)
    assert created.status_code == 201, created.text
    link = created.json()
    assert set(link) == {"survey_id", "url", "expires_at"}
    assert link["url"].startswith(f"{collector}/s/s1.")
    for secret in (who["phone"][3:], agent, f"call-{unique}", "aftersales"):
        assert secret not in link["url"]
    assert len(token_of(link["url"])) < 200
    many = http.post(f"{collector}/v1/surveys", json=[mail, {**call, "language": "zh"}])
    assert many.status_code == 201, many.text
    nps, call_again = many.json()
    assert call_again["survey_id"] == link["survey_id"] and call_again["url"] != link["url"]  # the same survey

    # the page, in the link's language and the other one
    page = http.get(link["url"], key=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert {k: page.headers[k] for k in PAGE_HEADERS} == PAGE_HEADERS
    assert "How satisfied are you" in page.text and f"Your call with {agent}" in page.text
    assert "Very dissatisfied" in page.text and "Very satisfied" in page.text and 'name="nps"' not in page.text
    zh = http.get(link["url"], params={"lang": "zh"}, key=None)
    for text in ("您对本次服务满意吗？", "非常不满意", "非常满意", f"您与 {agent} 的通话", 'lang="zh-Hans"', "提交"):
        assert text in zh.text, text
    nps_page = http.get(nps["url"], key=None)
    for text in ("您有多大可能向朋友或同事推荐我们？", "不太可能", "非常可能", f"您与 {agent} 的邮件沟通", 'value="10"'):
        assert text in nps_page.text, text
    assert "How likely are you to recommend us" in http.get(nps["url"], params={"lang": "en"}, key=None).text
    assert "<script" not in page.text + nps_page.text
    preset = http.get(link["url"], params={"score": "4"}, key=None)  # pre-selects, never answers
    assert 'value="4" checked' in preset.text and preset.text.count(" checked") == 1

    # a form without the asked score is shown again, saying what is missing, the comment kept
    missing = http.post(link["url"], data={"comment": "还行", "lang": "en"}, key=None)
    assert missing.status_code == 400 and "Please choose a score" in missing.text and "还行" in missing.text
    comment = "李工很耐心，问题当场解决了，谢谢！<b>"
    answered = http.post(link["url"], data={"csat": "5", "comment": comment, "lang": "zh"}, key=None)
    assert answered.status_code == 200, answered.text
    assert "感谢您的反馈" in answered.text and "no-store" == answered.headers["cache-control"]
    again = http.post(call_again["url"], data={"csat": "1", "lang": "en"}, key=None)  # the survey's other link
    assert again.status_code == 409 and "already answered" in again.text
    assert http.get(link["url"], key=None).status_code == 409

    # two answers of one survey at the same moment: one is recorded
    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda score: http.post(nps["url"], data={"nps": score}, key=None).status_code,
                                   ("9", "3")))
    assert statuses == [200, 409]

    # what the query API says
    def found(kind: str, value: str) -> dict | None:
        items = http.get(f"{api}/v1/customers", params={kind: value}).json()["items"]
        return items[0] if items else None

    def timeline(kind: str, value: str) -> list[dict]:
        c = found(kind, value)
        return http.get(f"{api}/v1/customers/{c['customer_id']}/timeline").json()["items"] if c else []

    items = wait_for(lambda: (t := timeline("phone", who["phone"])) and
                     {"survey.sent", "survey.answered"} <= {i["type"] for i in t} and t, 60, "the call's survey")
    answers = [i for i in items if i["type"] == "survey.answered"]
    assert len(answers) == 1, items
    data = answers[0]["data"]
    assert answers[0]["event_id"] == f"survey:{link['survey_id']}:answered"
    assert answers[0]["source"] == "urn:crm:surveys"
    assert (data["csat"], data["comment"], data["survey_id"]) == (5, comment, link["survey_id"])
    assert (data["rated_touchpoint_id"], data["rated_channel"], data["agent"], data["queue"]) == \
        (f"call-{unique}", "phone", agent, "aftersales")
    assert len([i for i in items if i["type"] == "survey.sent"]) == 1  # created twice: one survey
    mails = wait_for(lambda: [i for i in timeline("email", who["email"]) if i["type"] == "survey.answered"], 60,
                     "the email's survey")
    assert len(mails) == 1 and mails[0]["data"]["nps"] in (9, 3) and mails[0]["data"]["rated_channel"] == "email"

    def by_agent() -> dict | None:
        body = http.get(f"{api}/v1/indicators", params={"dimension": "agent", "window": "1h",
                                                        "indicator": "csat,nps,survey_response_rate"}).json()
        return next((i["indicators"] for i in body["items"] if i["member"] == agent), None)

    values = wait_for(lambda: (v := by_agent()) and v["nps"]["count"] == 1 and v, 60, "the agent's indicators")
    assert values["csat"] == {"value": 100.0, "count": 1.0, "unit": "%"}
    assert values["survey_response_rate"]["value"] == 100.0 and values["survey_response_rate"]["count"] == 2.0

    # an expired link, a tampered one
    forge = sealer(platform)
    expired = forge.seal(forge.new_link(kind="csat", touchpoint_id=f"old-{unique}", agent=agent, customer=who,
                                        language="zh", expires_at=int(time.time()) - 60))
    gone = http.get(f"{collector}/s/{expired}", key=None)
    assert gone.status_code == 410 and "此问卷链接已过期" in gone.text
    assert http.post(f"{collector}/s/{expired}", data={"csat": "4"}, key=None).status_code == 410
    token = token_of(link["url"])
    tampered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for method in ("GET", "POST"):
        response = http.request(method, f"{collector}/s/{tampered}", key=None)
        assert response.status_code == 404 and "not valid" in response.text, method
    nonsense = http.get(f"{collector}/s/nonsense", key=None, headers={"Accept-Language": "zh-CN"})
    assert nonsense.status_code == 404 and "此问卷链接无效" in nonsense.text


def test_an_answer_through_the_form_in_a_real_browser(platform, unique):
    """Headless Chromium: pick a score, type a comment, send; also, a client failing tokens is stopped."""
    from selenium.webdriver.common.by import By

    from tests.browser import chromium

    _, collector = platform.collector(CRM_IP_RATE_LIMIT_PER_S="0.01", CRM_IP_RATE_LIMIT_BURST="3")
    who = customer(unique)
    created = http.post(f"{collector}/v1/surveys", json={
        "kind": "csat+nps", "touchpoint_id": f"chat-{unique}", "channel": "wechat", "agent": "agent-li",
        "customer": {"account_id": f"acct-{unique}"}, "language": "zh"})
    assert created.status_code == 201, created.text
    link = created.json()

    driver = chromium(width=390, height=844, lang="zh-CN")  # a phone's screen
    try:
        driver.get(link["url"])
        assert "您与 agent-li 的在线沟通" in driver.find_element(By.TAG_NAME, "body").text
        driver.find_element(By.CSS_SELECTOR, "label[for='csat-4']").click()
        driver.find_element(By.CSS_SELECTOR, "label[for='nps-9']").click()
        assert driver.find_element(By.ID, "csat-4").is_selected() and driver.find_element(By.ID, "nps-9").is_selected()
        driver.find_element(By.ID, "comment").send_keys("客服回复很快，点赞！")
        driver.find_element(By.ID, "submit").click()
        wait_for(lambda: driver.find_elements(By.ID, "thanks"), 20, "the thank-you page")
        assert "感谢您的反馈" in driver.find_element(By.TAG_NAME, "h1").text
    finally:
        driver.quit()
    with psycopg2.connect(platform.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT survey_id FROM survey_response")
        assert cur.fetchall() == [(link["survey_id"],)]
    conn.close()

    bad = [http.get(f"{collector}/s/s1.{'A' * 60}{n}", key=None).status_code for n in range(5)]
    assert bad[:3] == [404, 404, 404] and bad[3:] == [429, 429]
    assert http.get(link["url"], key=None).status_code == 409  # a genuine link still answers
