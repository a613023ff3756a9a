"""The Python SDK against the running platform: over HTTP with a key, and straight to Kafka sealed."""
from __future__ import annotations


from crm_sdk import Client, event
from crm_sdk.kafka import TOUCHPOINTS, KafkaSink, VaultSealer
from services.common.vault import Vault, load_master_key
from tests import http
from tests.feed import read_records
from tests.processes import wait_for


def _customer(api: str, **query: str) -> dict | None:
    items = http.get(f"{api}/v1/customers", params=query).json()["items"]
    return items[0] if items else None


def test_the_http_client_delivers_with_its_key_and_reports_rejections(platform, running, unique):
    collector, api = running
    email = f"sdk.{unique}@163.com"
    events = [event("order.placed", {"order_id": f"o-{unique}", "email": email,
                                     "items": [{"sku": "MI-14", "quantity": 1, "unit_price": "3999"}]},
                    source="urn:erp", id=f"{unique}-1"),
              event("order.paid", {"order_id": f"o-{unique}", "email": email, "amount": "-1"},
                    source="urn:erp", id=f"{unique}-2")]
    with Client(collector, api_key=platform.keys["events:write"]) as crm:
        result = crm.send(events)
        assert result.accepted == [f"{unique}-1"] and result.status == 202
        assert [(r["index"], r["id"]) for r in result.rejected] == [(1, f"{unique}-2")]
        assert "amount" in str(result.rejected[0]["errors"])
        again = crm.send(events[:1])  # a retry of the same id is the same event
        assert again.accepted == [f"{unique}-1"]
    with Client(collector, api_key=platform.keys["customers:read"], max_retries=0) as wrong:
        refused = wrong.send(events[:1])
        assert refused.failed == 1 and refused.status == 403 and "events:write" in refused.error
    found = wait_for(lambda: _customer(api, email=email), 60, "the order applied")
    assert found["event_count"] == 1


def test_the_kafka_sink_seals_personal_data_before_writing(platform, running, unique):
    collector, api = running
    email, phone = f"kafka.{unique}@qq.com", f"+86139{int(unique, 16) % 10**8:08d}"
    vault = Vault(load_master_key(platform.stack.env["CRM_MASTER_KEY"], None))
    sink = KafkaSink(platform.stack.kafka_bootstrap, sealer=VaultSealer(platform.dsn, vault),
                     topic=platform.topic(TOUCHPOINTS))
    try:
        result = sink.send([
            event("call.ended", {"call_id": f"call-{unique}", "phone_number": phone, "email": email,
                                 "talk_seconds": 95, "queue": "delivery", "agent": "agent-li",
                                 "notes": "客户询问物流"}, source="urn:pbx", id=f"{unique}-k1"),
            event("call.ended", {"call_id": f"call-{unique}"}, source="urn:pbx", id=f"{unique}-k2"),
        ])
    finally:
        sink.close()
    assert result.accepted == [f"{unique}-k1"] and [r["index"] for r in result.rejected] == [1]

    written = [r.value for r in read_records(platform.stack.kafka_bootstrap, [platform.topic(TOUCHPOINTS)])
               if f"{unique}-k1".encode() in r.value]
    assert len(written) == 1
    for secret in (email.encode(), phone.encode(), "客户询问物流".encode()):
        assert secret not in written[0]

    found = wait_for(lambda: _customer(api, phone=phone), 60, "the sealed call applied")
    view = http.get(f"{api}/v1/customers/{found['customer_id']}").json()
    assert view["identities"]["email"] == [email]
    timeline = http.get(f"{api}/v1/customers/{found['customer_id']}/timeline").json()["items"]
    assert [i["event_id"] for i in timeline] == [f"{unique}-k1"]
