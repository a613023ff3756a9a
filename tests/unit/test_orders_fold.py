"""The order chain fold: each order's state and status history, the same whatever the arrival order."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from events.customer_events import CustomerEvent
from projections import orders

T0 = datetime(2026, 11, 11, 0, 5, tzinfo=timezone.utc)


def ev(n: int, hours: float, status: str, **data) -> CustomerEvent:
    return CustomerEvent(f"shop/e{n}", f"e{n}", "shop", f"order.{status}", T0 + timedelta(hours=hours), "shop",
                         "c_1", ("phone:+8613912345678",), {"order_id": "YZ-1", "currency": "CNY", **data})


CHAIN = [
    ev(1, 0, "placed", total="3999.00", items=[{"sku": "HAIER-BCD-470", "quantity": 1, "unit_price": "3999.00"}]),
    ev(2, 0.1, "paid", amount="3999.00", method="alipay"),
    ev(3, 20, "shipped", carrier="SF Express", tracking_number="SF1234567890", promised_at="2026-11-13T18:00:00+08:00"),
    ev(4, 80, "delivered", carrier="SF Express", tracking_number="SF1234567890"),
    ev(5, 81, "installation_scheduled", scheduled_for="2026-11-15T09:00:00+08:00"),
    ev(6, 100, "installation_completed"),
    ev(7, 200, "return_requested", reason="enc1.sealed"),
    ev(8, 240, "returned", carrier="SF Express", tracking_number="SF999"),
    ev(9, 250, "refunded", amount="3999.00", reason="enc1.sealed"),
]


def test_the_whole_chain():
    order = orders.fold(CHAIN)["YZ-1"]
    assert order["status"] == "refunded"
    assert [h["status"] for h in order["history"]] == [
        "placed", "paid", "shipped", "delivered", "installation_scheduled", "installation_completed",
        "return_requested", "returned", "refunded"]
    assert order["total"] == "3999.00" and order["paid"] == "3999.00" and order["refunded"] == "3999.00"
    assert order["carrier"] == "SF Express" and order["tracking_number"] == "SF1234567890"
    assert order["promised_at"] == "2026-11-13T10:00:00.000000Z"
    assert order["delivered_at"] == "2026-11-14T08:05:00.000000Z" and order["late"] is True
    assert order["installation"] == {"scheduled_for": "2026-11-15T01:00:00.000000Z",
                                     "completed_at": "2026-11-15T04:05:00.000000Z"}
    assert order["returned_at"] and order["cancelled_at"] is None
    # free-text reasons are personal data: never in the read model
    assert "enc1.sealed" not in str(order)


def test_on_time_and_not_yet_known():
    on_time = orders.fold([ev(1, 0, "shipped", promised_at="2026-11-20T00:00:00Z"), ev(2, 30, "delivered")])["YZ-1"]
    assert on_time["late"] is False and on_time["status"] == "delivered"
    assert orders.fold([ev(1, 0, "shipped", promised_at="2026-11-20T00:00:00Z")])["YZ-1"]["late"] is None
    cancelled = orders.fold([ev(1, 0, "placed", total="1"), ev(2, 1, "cancelled")])["YZ-1"]
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"] == "2026-11-11T01:05:00.000000Z"


def test_two_payments_and_same_instant_ties():
    paid = orders.fold([ev(1, 0, "paid", amount="10"), ev(2, 0, "paid", amount="5.5"), ev(3, 0, "placed", total="1")])
    assert paid["YZ-1"]["paid"] == "15.5" and paid["YZ-1"]["status"] == "paid"  # lifecycle order breaks the tie


def test_each_event_counts_once():
    once = orders.fold(CHAIN)["YZ-1"]
    twice = orders.apply_all(once, CHAIN[:4])
    assert twice == once
    assert orders.apply(orders.apply(orders.empty("YZ-1"), CHAIN[1]), CHAIN[1]) == \
        orders.apply(orders.empty("YZ-1"), CHAIN[1])


def test_other_events_and_other_orders_are_left_out():
    other = CustomerEvent("x/1", "1", "x", "call.ended", T0, "phone", "c_1", (), {"call_id": "c"})
    no_id = CustomerEvent("x/2", "2", "x", "order.paid", T0, "shop", "c_1", (), {"amount": "1"})
    second = CustomerEvent("x/3", "3", "x", "order.placed", T0, "shop", "c_1", (), {"order_id": "YZ-2", "total": "2"})
    folded = orders.fold([other, no_id, second, *CHAIN])
    assert set(folded) == {"YZ-1", "YZ-2"} and folded["YZ-2"]["status"] == "placed"


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=len(CHAIN)))
def test_any_arrival_order_and_chunking_gives_the_same_order(rnd: random.Random, chunk: int):
    expected = orders.fold(CHAIN)["YZ-1"]
    shuffled = list(CHAIN)
    rnd.shuffle(shuffled)
    order = orders.empty("YZ-1")
    for i in range(0, len(shuffled), chunk):
        order = orders.apply_all(order, shuffled[i:i + chunk] + shuffled[:1])  # redelivery included
    assert order == expected
