"""Personal data in events: which fields hold it, and the tokens that stand for it (pure).

The collector *seals* every touchpoint before it reaches Kafka (``services.common.vault``):

* each customer identifier (email, phone, account id, anonymous id) becomes a **pseudonym**
  ``psn-<32 hex>``, one per normalized identifier, drawn at random and kept with the subject's key
  in PostgreSQL. The identity graph, Kafka keys and every read model see only pseudonyms;
* every other personal field (names, addresses, birthdays, free text, the other addresses of an
  email, an identifier that failed validation, the string values of ``properties``) becomes an
  **encrypted token** ``enc1.<subject>.<base64url(nonce | AES-GCM ciphertext)>`` under the key of
  the event's primary subject.

Processors pass tokens on untouched; only what must read the text (sentiment, name search) opens
it in memory, and the query API reveals tokens for callers allowed to see them. Deleting a
subject's key (erasure) leaves every stored copy of its tokens unreadable: crypto-shredding.

This module knows the formats and the fields; it has no keys and no I/O.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterator

PSEUDONYM = re.compile(r"^psn-[0-9a-f]{32}$")
TOKEN = re.compile(r"enc1\.([0-9a-f]{32})\.([A-Za-z0-9_-]{16,})")
"""An encrypted token anywhere in a string (a timeline line may embed one)."""
WHOLE_TOKEN = re.compile(r"^enc1\.([0-9a-f]{32})\.([A-Za-z0-9_-]{16,})$")

ERASED = "[erased]"
"""What a token reads as once its subject's key is gone."""

CLASSIFICATION = {"dataclassification": "restricted", "datacategory": "personal", "dataregulations": "GDPR,PIPL"}
"""CloudEvents data-classification extension attributes of an event that holds personal data."""

_TEXT = ("subject", "body_text")
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "email.received": ("to.*", "cc.*", "attachments.*.filename") + _TEXT,
    "email.sent": ("to.*", "cc.*", "attachments.*.filename") + _TEXT,
    "web.identified": ("traits",),
    "call.ended": ("notes",),
    "order.refunded": ("reason",),
    "order.cancelled": ("reason",),
    "fax.received": ("document.filename",),
    "order.return_requested": ("reason",),
    "survey.answered": ("comment",),
    "ticket.opened": _TEXT,
    "ticket.replied": ("body_text",),
    "ticket.resolved": ("resolution",),
    "ticket.reopened": ("reason",),
    "profile.updated": ("name", "company", "birthday", "address.*"),
}
"""Wire paths of the personal fields of each type beside its identifiers (``*``: every item or
member). ``properties`` of every type are personal too: free extras may hold anything."""

PLACEHOLDER = {"birthday": "1900-01-01"}
"""What a sealed field reads as while the event is validated again (the value must have the
field's type; the token itself is put back into the event afterwards). Others read as ""."""

Path = tuple[Any, ...]


def subject_hex(subject_id: str) -> str:
    return subject_id[4:] if subject_id.startswith("psn-") else subject_id


def _walk(value: Any, pattern: list[str], path: Path) -> Iterator[tuple[Path, Any]]:
    if not pattern:
        yield path, value
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        members = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for k, v in members:
            yield from _walk(v, rest, path + (k,))
    elif isinstance(value, dict) and head in value:
        yield from _walk(value[head], rest, path + (head,))


def _string_leaves(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_leaves(v, path + (i,))


def personal_leaves(event_type: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every personal string of an event's data (wire form) beside its identifier fields."""
    found: dict[Path, str] = {}
    for pattern in PERSONAL_FIELDS.get(event_type, ()):
        for path, value in _walk(data, pattern.split("."), ()):
            for leaf, text in _string_leaves(value, path):
                found[leaf] = text
    for leaf, text in _string_leaves(data.get("properties") or {}, ("properties",)):
        found[leaf] = text
    return sorted(found.items(), key=lambda item: [str(p) for p in item[0]])


def identity_paths(tp, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """The identity fields of a touchpoint in its wire data, as (path, identifier kind)."""
    out: list[tuple[Path, str]] = []
    for kind, field in tp.event_type.identity_fields:
        name, _, index = field.partition("[")
        info = type(tp.data).model_fields.get(name)
        wire = info.alias if info is not None and info.alias else name
        out.append(((wire, int(index.rstrip("]"))) if index else (wire,), kind))
    if tp.type in ("identity.linked", "identity.unlinked"):
        out += [(("identifiers", i, "value"), ref.get("kind", "")) for i, ref in enumerate(data.get("identifiers") or [])
                if isinstance(ref, dict)]
    return out


def get_path(data: Any, path: Path) -> Any:
    for p in path:
        data = data[p]
    return data


def set_path(data: Any, path: Path, value: Any) -> None:
    for p in path[:-1]:
        data = data[p]
    data[path[-1]] = value


def mask(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[Path, str], ...]]:
    """A copy of sealed data with each token replaced by a placeholder of the field's type, for
    validation, and the tokens with their paths (to put back into the validated event)."""
    tokens: list[tuple[Path, str]] = []
    path: list[Any] = []

    def masked(value: Any) -> Any:  # a deep copy (JSON values only), tokens swapped on the way
        if isinstance(value, str):
            if value.startswith("enc1.") and WHOLE_TOKEN.match(value):
                tokens.append((tuple(path), value))
                return PLACEHOLDER.get(str(path[-1]) if path else "", "")
            return value
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                path.append(k)
                out[k] = masked(v)
                path.pop()
            return out
        if isinstance(value, list):
            out_list = []
            for i, v in enumerate(value):
                path.append(i)
                out_list.append(masked(v))
                path.pop()
            return out_list
        return value

    return masked(data), tuple(tokens)


def unmask(data: dict[str, Any], tokens: tuple[tuple[Path, str], ...]) -> dict[str, Any]:
    """Wire data with the sealed tokens back at their paths (in place; returns it)."""
    for path, token in tokens:
        try:
            set_path(data, path, token)
        except (KeyError, IndexError, TypeError):  # a field the model dropped: nothing to put back
            continue
    return data


def reveal(value: Any, opener: Callable[[str, str], str | None]) -> Any:
    """``value`` with every token opened by ``opener(subject_hex, token)`` (None: erased).
    Pseudonyms are left to the caller: they are keys, not text."""
    if isinstance(value, str):
        if "enc1." not in value:
            return value
        whole = WHOLE_TOKEN.match(value)
        if whole:
            opened = opener(whole.group(1), value)
            return ERASED if opened is None else opened
        return TOKEN.sub(lambda m: (lambda o: ERASED if o is None else o)(opener(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {k: reveal(v, opener) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v, opener) for v in value]
    return value


def tokens_in(value: Any) -> Iterator[str]:
    """Every subject (hex) named by a token or pseudonym inside ``value``."""
    if isinstance(value, str):
        if "enc1." in value:
            for m in TOKEN.finditer(value):
                yield m.group(1)
        if "psn-" in value:
            for m in re.finditer(r"psn-([0-9a-f]{32})", value):
                yield m.group(1)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tokens_in(k)
            yield from tokens_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from tokens_in(v)
