"""Typed, normalized customer identifiers (README: Identity resolution).

Emails are trimmed and lower-cased, phones are E.164 (``phonenumbers`` with a default region),
account and anonymous ids are kept as given. Placeholder values that would fuse strangers
(``null``, ``anonymous``, ``test@test.com``...) are refused, never guessed at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import phonenumbers

IdentifierKind = Literal["email", "phone", "account_id", "anonymous_id"]
IDENTIFIER_KINDS: tuple[IdentifierKind, ...] = ("account_id", "email", "phone", "anonymous_id")
"""Kinds in priority order: the first is the strongest evidence of who someone is."""

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

BLOCKED_VALUES: frozenset[str] = frozenset({
    "", "null", "none", "nil", "undefined", "unknown", "anonymous", "anon", "guest", "n/a", "na",
    "-1", "0", "000000", "0000000000", "123456", "test", "noreply", "no-reply",
    "test@test.com", "test@example.com", "noreply@example.com", "no-reply@example.com",
    "a@a.com", "null@null.com", "email@email.com", "none@none.com",
})
_BLOCKED_PHONE_DIGITS = re.compile(r"^(\d)\1+$")  # 0000000, 1111111...


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalized; the message says why."""


BLOCKED_MESSAGE = "is a blocked placeholder value"


class BlockedIdentifier(InvalidIdentifier):
    """A placeholder value (``null``, ``test@test.com``...) refused so it cannot fuse strangers. Such
    a value is no one's personal data: it is kept as given (trimmed) to explain the refusal."""

    def __init__(self, kind: str, value: str):
        super().__init__(f"{kind} {value!r} {BLOCKED_MESSAGE}")
        self.kind, self.value = kind, value


def blocked_values(values) -> frozenset[str]:
    """A configured list of placeholder values, compared trimmed and case-insensitively."""
    return frozenset(str(v).strip().lower() for v in values) | {""}  # an empty value is never an identifier


@dataclass(frozen=True, order=True, slots=True)
class Identifier:
    kind: str
    value: str

    @property
    def key(self) -> str:
        """The canonical ``kind:value`` string used as a Kafka key and a database key."""
        return f"{self.kind}:{self.value}"

    @classmethod
    def parse_key(cls, key: str) -> "Identifier":
        kind, _, value = key.partition(":")
        if kind not in IDENTIFIER_KINDS or not value:
            raise InvalidIdentifier(f"not an identifier key: {key!r}")
        return cls(kind, value)


def normalize(kind: str, raw: object, default_region: str = "CN", blocked: frozenset[str] | None = None
              ) -> Identifier:
    """Normalize one raw identifier value, or raise InvalidIdentifier saying why (BlockedIdentifier
    for a placeholder value: one of ``blocked``, by default BLOCKED_VALUES, or a phone number of one
    repeated digit)."""
    if not isinstance(raw, str):
        raise InvalidIdentifier(f"{kind} must be a string")
    value = raw.strip()
    if value.lower() in (BLOCKED_VALUES if blocked is None else blocked):
        raise BlockedIdentifier(kind, value)
    if kind == "email":
        value = value.lower()
        if len(value) > 254 or not _EMAIL.match(value):
            raise InvalidIdentifier(f"email {raw!r} is not an email address")
        return Identifier("email", value)
    if kind == "phone":
        try:
            number = phonenumbers.parse(value, default_region)
        except phonenumbers.NumberParseException as exc:
            raise InvalidIdentifier(f"phone {raw!r} cannot be parsed: {exc}") from None
        if not phonenumbers.is_valid_number(number):
            raise InvalidIdentifier(f"phone {raw!r} is not a valid number (default region {default_region})")
        if _BLOCKED_PHONE_DIGITS.match(str(number.national_number)):
            raise BlockedIdentifier("phone", value)
        return Identifier("phone", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    if kind in ("account_id", "anonymous_id"):
        if len(value) > 200:
            raise InvalidIdentifier(f"{kind} is longer than 200 characters")
        return Identifier(kind, value)
    raise InvalidIdentifier(f"unknown identifier kind {kind!r}")

