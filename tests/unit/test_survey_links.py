"""Survey link tokens: sealed content, tamper evidence, expiry, the key, the length."""
from __future__ import annotations

import base64
import os

import pytest

from services.ingest.adapters._survey_links import PREFIX, InvalidLink, LinkSealer, SurveyLink

MASTER = bytes(range(32))
NOW = 1_800_000_000


def a_link(sealer: LinkSealer, **changes) -> SurveyLink:
    fields = dict(kind="csat", touchpoint_id="call-8f3a2b1c", channel="phone", agent="agent-li", queue="aftersales",
                  customer={"phone": "+8613912345678"}, language="en", expires_at=NOW + 14 * 86400)
    fields.update(changes)
    return sealer.new_link(**fields)


def test_a_token_opens_to_the_same_link_and_shows_nothing_of_it():
    sealer = LinkSealer(MASTER)
    link = a_link(sealer, customer={"email": "li.na@163.com", "phone": "+8613912345678", "account_id": "acct-9"},
                  language="zh", kind="csat+nps")
    token = sealer.seal(link)
    assert token.startswith(PREFIX)
    assert sealer.open(token) == link
    assert link.asks == ("csat", "nps")
    readable = base64.urlsafe_b64decode(token[len(PREFIX):] + "==")
    for secret in (b"li.na", b"163.com", b"8613912345678", b"acct-9", b"agent-li", b"call-8f3a2b1c", b"aftersales"):
        assert secret not in readable and secret.decode() not in token


def test_absent_fields_stay_absent_and_every_kind_round_trips():
    sealer = LinkSealer(MASTER)
    for kind in ("csat", "nps", "csat+nps"):
        link = a_link(sealer, kind=kind, channel=None, agent=None, queue=None, customer={"account_id": "a-1"})
        opened = sealer.open(sealer.seal(link))
        assert opened == link and opened.agent is None and opened.customer == {"account_id": "a-1"}


def test_the_survey_id_is_the_same_for_the_same_touchpoint_agent_and_kind_and_never_the_customer():
    sealer = LinkSealer(MASTER)
    first, again = a_link(sealer), a_link(sealer, expires_at=NOW + 86400, language="zh", customer={"email": "x@y.cn"})
    assert first.survey_id == again.survey_id and len(first.survey_id) == 16
    assert sealer.seal(first) != sealer.seal(first)  # a fresh nonce each time
    assert a_link(sealer, agent="agent-wang").survey_id != first.survey_id
    assert a_link(sealer, kind="nps").survey_id != first.survey_id
    assert a_link(sealer, touchpoint_id="call-2").survey_id != first.survey_id
    assert LinkSealer(os.urandom(32)).survey_id("csat", "phone", "call-8f3a2b1c", "agent-li") != first.survey_id


def test_any_altered_character_makes_the_token_invalid():
    sealer = LinkSealer(MASTER)
    token = sealer.seal(a_link(sealer))
    for i in range(len(token)):
        for c in "ABab01-_":  # the last character's unused low bits too: a token has one spelling
            if c != token[i]:
                with pytest.raises(InvalidLink):
                    sealer.open(token[:i] + c + token[i + 1:])
    for bad in ("", "s1.", "s2" + token[2:], token[:-1], token + "A", token[:40], token.replace("s1.", ""),
                token + "=", "s1." + "%" * 40, "x" * 5000, PREFIX + "A" * 5000):
        with pytest.raises(InvalidLink):
            sealer.open(bad)


def test_a_token_of_another_master_key_is_invalid():
    token = LinkSealer(MASTER).seal(a_link(LinkSealer(MASTER)))
    with pytest.raises(InvalidLink):
        LinkSealer(os.urandom(32)).open(token)


def test_expiry_is_sealed_and_checked_against_the_given_time():
    sealer = LinkSealer(MASTER)
    link = sealer.open(sealer.seal(a_link(sealer, expires_at=NOW + 60)))
    assert link.expires_at == NOW + 60
    assert not link.expired(NOW) and not link.expired(NOW + 59.9)
    assert link.expired(NOW + 60) and link.expired(NOW + 86400)


def test_a_seal_refuses_a_survey_id_that_is_not_the_links_own():
    sealer = LinkSealer(MASTER)
    link = a_link(sealer)
    forged = SurveyLink("someone-elses-id", link.kind, link.touchpoint_id, link.expires_at, link.channel, link.agent,
                        link.queue, link.customer, link.language)
    with pytest.raises(ValueError):
        sealer.seal(forged)
    with pytest.raises(ValueError):
        a_link(sealer, customer={})
    with pytest.raises(ValueError):
        a_link(sealer, language="fr")


def test_a_typical_token_fits_a_text_message():
    sealer = LinkSealer(MASTER)
    typical = sealer.seal(a_link(sealer))  # a call, an agent, a queue, a phone number
    assert len(typical) <= 170, len(typical)
    email = sealer.seal(a_link(sealer, kind="nps", touchpoint_id="T-100234", channel="email", agent="agent-wang",
                               queue=None, customer={"email": "li.na@163.com"}, language="zh"))
    assert len(email) <= 150, len(email)
    assert all(c.isalnum() or c in "-_." for c in typical + email)  # nothing to escape in a URL
