"""The pure parts of issue 25: refusals named by the resolver, blocked values from configuration,
the rule a manual merge names."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from events.envelope import validate
from events.identifiers import BLOCKED_VALUES, BlockedIdentifier, Identifier, InvalidIdentifier, blocked_values, normalize
from projections.identity import (MANUAL_MERGE_SOURCE, MANUAL_RULE, Cause, Evidence, changes, refusals,
                                  resolve_evidence)
from services.common.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ev(n: int, minutes: int, *keys: str, type: str = "order.placed", note: str = "") -> Evidence:
    return Evidence(f"k{n}", f"e{n}", type, T0 + timedelta(minutes=minutes), tuple(keys),
                    type == "identity.unlinked", note)


@pytest.mark.parametrize("arrival", [[0, 1], [1, 0]])
def test_a_link_refused_by_a_limit_names_its_event_identifier_home_and_rule(arrival):
    evidence = [ev(1, 10, "account_id:li", "phone:+8613912345678"), ev(2, 20, "account_id:wang", "phone:+8613912345678")]
    evidence = [evidence[i] for i in arrival]
    (r,) = refusals(resolve_evidence(evidence), evidence)
    assert (r.event_key, r.event_id, r.type, r.identifier, r.home, r.rule) == (
        "k2", "e2", "order.placed", "phone:+8613912345678", "account_id:wang",
        "refused: at most 1 account_id per customer")
    assert r.time == T0 + timedelta(minutes=20)


def test_a_link_refused_by_an_unlink_is_named():
    evidence = [ev(1, 10, "account_id:a", "anonymous_id:ck", type="identity.unlinked"),
                ev(2, 20, "account_id:a", "anonymous_id:ck")]
    (r,) = refusals(resolve_evidence(evidence), evidence)
    assert (r.event_id, r.identifier, r.home, r.rule) == ("e2", "anonymous_id:ck", "account_id:a",
                                                          "refused: explicitly unlinked")


def test_a_link_accepted_refuses_nothing():
    evidence = [ev(1, 10, "account_id:a", "email:a@x.cn")]
    assert refusals(resolve_evidence(evidence), evidence) == []


def test_a_manual_merge_names_the_operator_and_reason_and_changes_nothing_else():
    note = MANUAL_RULE.format(operator="ops@example.com", reason="same person")
    seen = {"email:a@x.cn": T0, "account_id:u1": T0 + timedelta(minutes=5)}
    before = resolve_evidence([], seen=seen)
    plain = [ev(3, 30, "email:a@x.cn", "account_id:u1", type="identity.linked")]
    manual = [ev(3, 30, "email:a@x.cn", "account_id:u1", type="identity.linked", note=note)]
    after_plain, after_manual = resolve_evidence(plain, seen=seen), resolve_evidence(manual, seen=seen)
    assert after_plain.customer_of == after_manual.customer_of
    (m,) = changes(before.customer_of, after_manual, manual, Cause("k3", "e3", T0))
    assert (m.kind, m.rule, m.event_id) == ("merged", "manual merge by ops@example.com: same person", "e3")
    (p,) = changes(before.customer_of, after_plain, plain, Cause("k3", "e3", T0))
    assert p.rule == "explicit identity.linked"


def test_blocked_values_default_to_todays_list_and_can_be_configured():
    with pytest.raises(BlockedIdentifier) as refused:
        normalize("email", " Test@Test.com ")
    assert (refused.value.kind, refused.value.value) == ("email", "Test@Test.com")
    assert "blocked placeholder value" in str(refused.value) and isinstance(refused.value, InvalidIdentifier)
    configured = blocked_values(["Nobody@Shop.Example "])
    assert configured == {"nobody@shop.example", ""}
    with pytest.raises(BlockedIdentifier):
        normalize("email", "nobody@shop.example", blocked=configured)
    assert normalize("email", "test@test.com", blocked=configured) == Identifier("email", "test@test.com")
    with pytest.raises(BlockedIdentifier):  # a phone of one repeated digit, whatever the list
        normalize("phone", "+1 888 888 8888", blocked=configured)
    with pytest.raises(InvalidIdentifier):
        normalize("account_id", "", blocked=configured)


def test_the_setting_defaults_to_todays_list_and_reads_json(monkeypatch):
    assert Settings().blocked == blocked_values(BLOCKED_VALUES) == BLOCKED_VALUES
    monkeypatch.setenv("CRM_IDENTITY_BLOCKED", '["x@y.cn", "guest"]')
    assert Settings().blocked == {"x@y.cn", "guest", ""}


def test_validation_keeps_the_blocked_values_it_refused():
    raw = {"specversion": "1.0", "id": "1", "source": "urn:test", "type": "web.page_viewed",
           "time": "2026-11-01T10:00:00Z",
           "data": {"anonymous_id": "anonymous", "user_id": "u1", "url": "https://x.cn/"}}
    tp = validate(raw, received_at=T0)
    assert [i.key for i in tp.identifiers] == ["account_id:u1"]
    assert tp.blocked_identifiers == (Identifier("anonymous_id", "anonymous"),)
    assert validate(raw, received_at=T0, blocked=blocked_values(["other"])).identifiers[1:] == (
        Identifier("anonymous_id", "anonymous"),)
    assert MANUAL_MERGE_SOURCE == "urn:crm:api:merge"
