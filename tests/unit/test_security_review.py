"""The pure parts of the security review's fixes: which addresses webhooks may reach, and a change
without its personal data."""
from __future__ import annotations

import pytest

from events.feed import WITHHELD, change_event, without_personal_data
from services.webhooks import addresses


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "10.0.0.5", "172.16.3.4", "192.168.1.1",
                                     "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1",
                                     "fd00:ec2::254", "fec0::1", "::ffff:127.0.0.1", "64:ff9b::a00:1", "::",
                                     "203.0.113.9", "fe80::1%eth0"])
def test_internal_addresses_are_refused(address):
    assert addresses.refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert addresses.refusal(address) is None


def test_a_host_with_one_internal_address_among_public_ones_is_refused():
    with pytest.raises(addresses.AddressRefused, match="loopback"):
        addresses.check_addresses("rebind.example", ["8.8.8.8", "127.0.0.1"])
    assert addresses.check_addresses("ok.example", ["8.8.8.8", "8.8.4.4"]) == "8.8.8.8"


def test_urls_are_checked_on_literal_addresses_and_exempt_hosts_pass():
    for url in ("http://127.0.0.1:5432/", "http://[::1]/", "http://169.254.169.254/latest", "http://localhost:1/"):
        with pytest.raises(addresses.AddressRefused):
            addresses.check_url(url, [])
    addresses.check_url("http://127.0.0.1:8000/hook", ["127.0.0.1"])
    addresses.check_url("https://8.8.8.8/hook", [])
    addresses.check_url("https://no-such-host.invalid/hook", [])  # checked again at every attempt


def test_a_change_without_personal_data_keeps_everything_else():
    state = {"customer_id": "c_1", "version": 3, "profile": {
        "display_name": "李娜", "traits": {"email": "li@example.com", "phone": "+8613912345678"},
        "consent": {"marketing:email": True}}, "lifecycle": {"stage": "customer"}, "segments": ["vip"]}
    change = change_event("c_1", 3, "profile.changed", "2026-11-01T10:00:00Z", {"changed": {
        "email": {"from": None, "to": "li@example.com"}, "consent:marketing:email": {"from": None, "to": True}}},
        state)
    out = without_personal_data(change)
    assert "li@example.com" not in str(out) and "李娜" not in str(out) and "13912345678" not in str(out)
    assert out["data"]["state"]["profile"] == {"display_name": WITHHELD, "traits": {"email": WITHHELD,
                                                                                   "phone": WITHHELD},
                                               "consent": {"marketing:email": True}}
    assert out["data"]["changed"]["consent:marketing:email"] == {"from": None, "to": True}
    assert {k: v for k, v in out.items() if k != "data"} == {k: v for k, v in change.items() if k != "data"}
    assert out["data"]["state"]["segments"] == ["vip"] and change["data"]["state"]["profile"]["traits"]["email"]
    merged = change_event("c_2", 4, "customer.merged", "2026-11-01T10:00:00Z",
                          {"into": "c_1", "identifiers": ["psn-" + "0" * 32]}, None)
    assert without_personal_data(merged)["data"] == {"into": "c_1", "identifiers": [], "state": None}
