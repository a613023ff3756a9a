"""Webhooks without I/O: signatures and their verification, subscription filters, the retry
schedule, decoding the change feed."""
from __future__ import annotations

import base64
import random
import re
import time
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from events.feed import change_event
from services.common.settings import Settings
from services.webhooks.enqueue import InvalidChange, decode
from services.webhooks.filters import Filter, matches
from services.webhooks.retries import parse_retry_after, retry_delay
from services.webhooks.verify import WebhookVerificationError, new_secret, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_800_000_000


def signed(body: bytes, secret: str = SECRET, msg_id: str = "c_1:3:segment.entered:vip", at: int = NOW,
           *more_secrets: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(at),
            "webhook-signature": " ".join(sign(s, msg_id, at, body) for s in (secret, *more_secrets))}


def state(customer_id: str = "c_1", segments: list[str] | None = None) -> dict:
    return {"customer_id": customer_id, "version": 3, "segments": segments or []}


# -- signatures -----------------------------------------------------------------------------------

def test_the_signature_is_the_standard_webhooks_one():
    # the example of the Standard Webhooks specification and its reference libraries
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secrets_are_32_random_bytes_behind_the_prefix():
    one, two = new_secret(), new_secret()
    assert one.startswith("whsec_") and one != two
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32


def test_a_genuine_delivery_verifies_and_decodes():
    body = orjson.dumps(change_event("c_1", 3, "segment.entered", "2026-11-01T10:00:00Z", {"segment": "vip"},
                                     state(segments=["vip"]), detail="vip"))
    headers = {k.title(): v for k, v in signed(body).items()}  # header names in any case
    assert verify(SECRET, headers, body, now=NOW + 10)["data"]["segment"] == "vip"


@pytest.mark.parametrize("now", [NOW + 301, NOW - 301])
def test_a_stale_or_future_timestamp_is_refused(now):
    body = b'{"id": "x"}'
    with pytest.raises(WebhookVerificationError, match="too far"):
        verify(SECRET, signed(body), body, now=now)
    assert verify(SECRET, signed(body), body, now=now, tolerance_s=400) == {"id": "x"}


def test_a_wrong_secret_a_changed_body_or_a_changed_id_is_refused():
    body = b'{"id": "x"}'
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(new_secret(), signed(body), body, now=NOW)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, signed(body), b'{"id": "y"}', now=NOW)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, {**signed(body), "webhook-id": "other"}, body, now=NOW)


def test_missing_or_malformed_headers_are_refused():
    body = b"{}"
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = signed(body)
        del headers[name]
        with pytest.raises(WebhookVerificationError, match=f"missing header {name}"):
            verify(SECRET, headers, body, now=NOW)
    with pytest.raises(WebhookVerificationError, match="unix time"):
        verify(SECRET, {**signed(body), "webhook-timestamp": "yesterday"}, body, now=NOW)


def test_during_a_rotation_either_secret_verifies():
    old, new = new_secret(), new_secret()
    body = b'{"id": "x"}'
    headers = signed(body, new, "m1", NOW, old)
    assert verify(old, headers, body, now=NOW) == verify(new, headers, body, now=NOW) == {"id": "x"}
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, body, now=NOW)


def test_the_readme_snippet_verifies_what_the_dispatcher_signs():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Webhooks"):]
    snippet = re.search(r"```python\n(import base64.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(snippet, scope)
    body = b'{"id": "c_1:1:value.changed"}'
    now = int(time.time())
    assert scope["verify"](SECRET, signed(body, at=now), body) == {"id": "c_1:1:value.changed"}
    with pytest.raises(ValueError, match="bad signature"):
        scope["verify"](new_secret(), signed(body, at=now), body)
    with pytest.raises(ValueError, match="stale"):
        scope["verify"](SECRET, signed(body, at=now - 301), body)


# -- filters --------------------------------------------------------------------------------------

def test_no_filter_lets_every_change_through():
    assert matches(Filter(), "customer.merged", {"into": "c_2", "state": None})
    assert matches(Filter(), "value.changed", {"changed": ["orders"], "state": state()})


def test_the_type_filter_names_the_types_wanted():
    flt = Filter(event_types=frozenset({"lifecycle.changed", "segment.entered"}))
    assert matches(flt, "lifecycle.changed", {"from": None, "to": "prospect", "rule": "r", "state": state()})
    assert not matches(flt, "value.changed", {"changed": ["orders"], "state": state()})
    assert not matches(flt, "segment.exited", {"segment": "vip", "state": state()})


def test_the_segment_filter_takes_customers_in_or_entering_or_leaving_a_segment():
    flt = Filter(segments=frozenset({"vip", "at-risk-high-value"}))
    assert matches(flt, "value.changed", {"changed": ["ltv"], "state": state(segments=["new", "vip"])})
    assert not matches(flt, "value.changed", {"changed": ["ltv"], "state": state(segments=["new"])})
    # leaving: the snapshot after the change no longer has the segment
    assert matches(flt, "segment.exited", {"segment": "vip", "state": state(segments=[])})
    assert matches(flt, "segment.entered", {"segment": "vip", "state": state(segments=["vip"])})
    assert not matches(flt, "segment.exited", {"segment": "new", "state": state(segments=[])})
    # a merged-away customer has no snapshot, so no segment
    assert not matches(flt, "customer.merged", {"into": "c_2", "state": None})


def test_both_filters_must_pass():
    flt = Filter(event_types=frozenset({"segment.entered"}), segments=frozenset({"vip"}))
    assert matches(flt, "segment.entered", {"segment": "vip", "state": state(segments=["vip"])})
    assert not matches(flt, "segment.entered", {"segment": "new", "state": state(segments=["new"])})
    assert not matches(flt, "value.changed", {"changed": ["ltv"], "state": state(segments=["vip"])})


def consenting(consent: dict[str, bool], segments: list[str] | None = None) -> dict:
    return {**state(segments=segments), "profile": {"display_name": None, "traits": {}, "consent": consent}}


def test_a_marketing_subscription_gets_only_changes_of_customers_who_consent_to_marketing():
    flt = Filter(purpose="marketing")
    assert not matches(flt, "value.changed", {"changed": ["orders"], "state": consenting({})})
    assert not matches(flt, "value.changed", {"changed": ["orders"], "state": state()})  # no profile at all
    assert not matches(flt, "value.changed", {"changed": ["orders"], "state": consenting({"analytics:all": True})})
    assert not matches(flt, "profile.changed", {"changed": {"consent:marketing:all": {"from": True, "to": False}},
                                                "state": consenting({"marketing:all": False})})
    assert matches(flt, "value.changed", {"changed": ["orders"], "state": consenting({"marketing:email": True})})
    assert matches(flt, "value.changed", {"changed": ["orders"], "state": consenting({"marketing:all": True})})
    # no snapshot, no consent: a merge is not sent; an erasure notice is sent to every purpose
    assert not matches(flt, "customer.merged", {"into": "c_2", "state": None})
    assert matches(flt, "customer.erased", {"erased_at": "2026-01-01T00:00:00Z", "state": None})
    # service (the default) needs no consent
    assert matches(Filter(purpose="service"), "value.changed", {"changed": ["orders"], "state": consenting({})})


def test_a_segment_that_needs_consent_lets_changes_through_only_while_the_customer_consents():
    gated = {"email_marketing": ("marketing", "email"), "pricing_interest": ("marketing", "all")}
    flt = Filter(segments=frozenset({"email_marketing", "vip"}))
    yes, no = {"marketing:email": True}, {"marketing:email": False}
    assert matches(flt, "segment.entered", {"segment": "email_marketing",
                                            "state": consenting(yes, ["email_marketing"])}, gated)
    assert matches(flt, "value.changed", {"changed": ["ltv"], "state": consenting(yes, ["email_marketing"])}, gated)
    # a withdrawal's exit is not sent, nor a stale snapshot listing the segment without consent
    assert not matches(flt, "segment.exited", {"segment": "email_marketing", "state": consenting(no)}, gated)
    assert not matches(flt, "value.changed", {"changed": ["ltv"], "state": consenting({}, ["email_marketing"])},
                       gated)
    # other segments of the filter are not concerned; without the rules nothing is gated
    assert matches(flt, "value.changed", {"changed": ["ltv"], "state": consenting(no, ["email_marketing", "vip"])},
                   gated)
    assert matches(flt, "segment.exited", {"segment": "email_marketing", "state": consenting(no)})


# -- retries --------------------------------------------------------------------------------------

def test_the_default_schedule_retries_for_hours_then_gives_up():
    schedule = Settings.model_fields["webhooks_retry_schedule_s"].default_factory()
    assert schedule == [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800]
    rng = random.Random(7)
    for tries, wait in enumerate(schedule, start=1):
        delay = retry_delay(tries, schedule, 0.2, rng)
        assert wait * 0.8 <= delay <= wait * 1.2
    assert retry_delay(len(schedule) + 1, schedule, 0.2, rng) is None
    assert sum(schedule) / 3600 > 15  # about 16 hours from the first failure to the last attempt


def test_jitter_spreads_deliveries_failed_together():
    rng = random.Random(1)
    delays = {round(retry_delay(1, [10], 0.2, rng), 3) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 8 and max(delays) <= 12
    assert retry_delay(1, [10], 0, rng) == 10


def test_retry_after_lengthens_the_wait_up_to_the_longest_of_the_schedule():
    rng = random.Random(0)
    assert retry_delay(1, [5, 60], 0, rng, retry_after_s=30) == 30
    assert retry_delay(1, [5, 60], 0, rng, retry_after_s=3600) == 60
    assert retry_delay(1, [5, 60], 0, rng, retry_after_s=1) == 5
    assert parse_retry_after(" 120 ") == 120 and parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None and parse_retry_after("-3") is None


def test_the_settings_refuse_a_lease_shorter_than_an_attempt_and_empty_waits():
    with pytest.raises(ValidationError, match="webhooks_timeout_s"):
        Settings(webhooks_timeout_s=30, webhooks_lease_s=20)
    with pytest.raises(ValidationError):
        Settings(webhooks_retry_schedule_s=[])
    with pytest.raises(ValidationError, match="more than 0"):
        Settings(webhooks_retry_schedule_s=[1, 0])


# -- decoding the change feed ---------------------------------------------------------------------

def test_a_change_event_decodes():
    event = change_event("c_1", 4, "lifecycle.changed", "2026-11-01T10:00:00Z",
                         {"from": "prospect", "to": "customer", "rule": "first order"}, state())
    change = decode(orjson.dumps(event))
    assert (change.id, change.type, change.customer_id, change.sequence) == \
        ("c_1:4:lifecycle.changed", "lifecycle.changed", "c_1", 4)


@pytest.mark.parametrize("value, kind", [
    (b"\xff not json", "undecodable"),
    (b"[1, 2]", "undecodable"),
    (None, "undecodable"),
    (orjson.dumps({"id": "x", "type": "customer.teleported", "customerid": "c_1", "data": {}}), "unknown_type"),
    (orjson.dumps({"type": "value.changed", "customerid": "c_1", "data": {}}), "schema_violation"),
    (orjson.dumps({"id": "x", "type": "value.changed", "data": {}}), "schema_violation"),
    (orjson.dumps({"id": "x", "type": "value.changed", "customerid": "c_1", "data": []}), "schema_violation"),
    (orjson.dumps({"id": "x", "type": "value.changed", "customerid": "c_1", "data": {}, "sequence": "3"}),
     "schema_violation"),
])
def test_what_is_not_a_change_event_is_refused_with_its_dead_letter_kind(value, kind):
    with pytest.raises(InvalidChange) as refused:
        decode(value)
    assert refused.value.kind == kind
