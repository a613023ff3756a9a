"""Survey links: what a link says, sealed into its own URL token (no I/O, no clock of its own).

A token is ``s1.`` + base64url (no padding) of ``nonce (12 bytes) || AES-256-GCM(compact JSON)``:
the link's content (kind, touchpoint, channel, agent, queue, the customer's identifiers, language,
expiry) is encrypted, so nothing personal can be read from a URL, and authenticated, so changing
one character of a token makes it invalid. The version prefix is bound to the ciphertext as
associated data. The key is derived with HKDF-SHA256 from the platform's master key: rotating the
master key invalidates every outstanding link.

The survey id is not carried in the token: it is a keyed digest of what the survey rates (kind,
channel, touchpoint, agent), recomputed when a token is opened. Creating a link twice for the same
touchpoint, agent and kind gives the same survey, so a retried request is one survey (its
``survey.sent`` is deduplicated) and either link can be answered once. The customer is left out of
the digest: a survey id must not be a stable function of a customer's identifier, which would
outlive the customer's erasure.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "s1"
PREFIX = VERSION + "."
NONCE_BYTES = 12
MAX_TOKEN_CHARS = 2048
"""Longer strings are refused before any decoding (a token of the longest fields is ~1,500)."""

Kind = Literal["csat", "nps", "csat+nps"]
KINDS: tuple[str, ...] = ("csat", "nps", "csat+nps")
LANGUAGES: tuple[str, ...] = ("en", "zh")
IDENTIFIERS: tuple[str, ...] = ("email", "phone", "account_id")
"""The customer identifiers a link may carry, in the order they are packed."""

_KIND_CODES = {"csat": "c", "nps": "n", "csat+nps": "cn"}
_KINDS_BY_CODE = {v: k for k, v in _KIND_CODES.items()}


class InvalidLink(ValueError):
    """The token is malformed, was altered, or was sealed under another key."""


@dataclass(frozen=True)
class SurveyLink:
    """What one survey link asks and of whom. ``expires_at``: Unix seconds."""

    survey_id: str
    kind: str
    touchpoint_id: str
    expires_at: int
    channel: str | None = None
    agent: str | None = None
    queue: str | None = None
    customer: dict[str, str] = field(default_factory=dict)
    language: str = "en"

    @property
    def asks(self) -> tuple[str, ...]:
        """The scores asked: ``("csat",)``, ``("nps",)`` or both."""
        return tuple(self.kind.split("+"))

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(master_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_key)


class LinkSealer:
    """Makes, seals and opens survey links under keys derived from the master key."""

    def __init__(self, master_key: bytes):
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(_derive(master_key, b"crm survey links v1"))
        self._id_key = _derive(master_key, b"crm survey ids v1")

    def survey_id(self, kind: str, channel: str | None, touchpoint_id: str, agent: str | None) -> str:
        """The id of the survey rating this touchpoint and agent (16 characters, base64url)."""
        message = orjson.dumps([kind, channel, touchpoint_id, agent])
        return _b64(hmac.new(self._id_key, message, hashlib.sha256).digest()[:12])

    def new_link(self, *, kind: str, touchpoint_id: str, expires_at: int, channel: str | None = None,
                 agent: str | None = None, queue: str | None = None, customer: dict[str, str] | None = None,
                 language: str = "en") -> SurveyLink:
        """A link with its survey id (the arguments are assumed valid: see ``check``)."""
        link = SurveyLink(self.survey_id(kind, channel, touchpoint_id, agent), kind, touchpoint_id, int(expires_at),
                          channel, agent, queue, dict(customer or {}), language)
        check(link)
        return link

    def seal(self, link: SurveyLink, nonce: bytes | None = None) -> str:
        """The link's token. ``nonce``: tests only (a fresh random one otherwise)."""
        check(link)
        if link.survey_id != self.survey_id(link.kind, link.channel, link.touchpoint_id, link.agent):
            raise ValueError("the survey id does not belong to this link (make links with new_link)")
        fields: list = [link.expires_at, _KIND_CODES[link.kind], link.language, link.touchpoint_id, link.channel,
                        link.agent, link.queue, *(link.customer.get(k) for k in IDENTIFIERS)]
        while fields[-1] is None:  # trailing absent fields cost nothing
            fields.pop()
        nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, orjson.dumps(fields), VERSION.encode())
        return PREFIX + _b64(nonce + sealed)

    def open(self, token: str) -> SurveyLink:
        """The link a token holds; ``InvalidLink`` when it was not sealed, unaltered, by this key.
        Expiry is the caller's to check (``link.expired(now)``): an expired link is still genuine."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            raise InvalidLink("not a survey link token")
        body = token[len(PREFIX):]
        if not body or not all(c.isascii() and (c.isalnum() or c in "-_") for c in body):
            raise InvalidLink("not a survey link token")
        try:
            raw = _unb64(body)
        except (binascii.Error, ValueError):
            raise InvalidLink("not a survey link token") from None
        if _b64(raw) != body:  # unused low bits of the last character set: one token, one spelling
            raise InvalidLink("not a survey link token")
        if len(raw) < NONCE_BYTES + 16 + 2:
            raise InvalidLink("not a survey link token")
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], VERSION.encode())
        except InvalidTag:
            raise InvalidLink("the token was altered or sealed under another key") from None
        try:  # authentic, so well formed unless the format itself changed
            fields = orjson.loads(plain)
            fields += [None] * (7 + len(IDENTIFIERS) - len(fields))
            expires_at, code, language, touchpoint_id, channel, agent, queue, *ids = fields
            kind = _KINDS_BY_CODE[code]
            customer = {k: v for k, v in zip(IDENTIFIERS, ids) if v is not None}
            link = SurveyLink(self.survey_id(kind, channel, touchpoint_id, agent), kind, touchpoint_id,
                              int(expires_at), channel, agent, queue, customer, language)
            check(link)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidLink("the token's content is not a survey link") from None
        return link


def check(link: SurveyLink) -> None:
    """Raise ``ValueError`` unless the link is complete and well formed."""
    if link.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if link.language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
    if not isinstance(link.touchpoint_id, str) or not link.touchpoint_id:
        raise ValueError("touchpoint_id is required")
    if not link.customer or set(link.customer) - set(IDENTIFIERS):
        raise ValueError(f"the customer needs at least one of {', '.join(IDENTIFIERS)}, and only those")
    if not all(isinstance(v, str) and v for v in link.customer.values()):
        raise ValueError("customer identifiers are non-empty strings")
    for name in ("channel", "agent", "queue"):
        value = getattr(link, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
