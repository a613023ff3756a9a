"""API keys: their format, scopes, and the key store in PostgreSQL (migration ``008_security.sql``).

A key reads ``crm_sk_<prefix>_<secret>`` (secret key, for servers) or ``crm_pk_<prefix>_<secret>``
(publishable key, for browsers: it is public by nature, so it may only write ``web.*`` events from
the origins it names). The prefix is public: it identifies the key in lists, logs and the audit
log. The database keeps only a SHA-256 hash of the whole key, never the key: the secret is 256
random bits, so a plain (fast, unsalted) hash cannot be reversed by guessing, and a stolen table
yields no usable key. The key is shown once, when it is created.

Scopes: ``events:write`` (the collector), ``customers:read``, ``indicators:read``, ``feed:manage``
(webhook subscriptions) and ``admin`` (unmerge, erasure, keys, the audit log), which implies every
other scope.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable
from urllib.parse import urlsplit

EVENTS_WRITE = "events:write"
CUSTOMERS_READ = "customers:read"
INDICATORS_READ = "indicators:read"
FEED_MANAGE = "feed:manage"
ADMIN = "admin"
SCOPES = (EVENTS_WRITE, CUSTOMERS_READ, INDICATORS_READ, FEED_MANAGE, ADMIN)

SECRET, PUBLISHABLE = "secret", "publishable"
KINDS = (SECRET, PUBLISHABLE)
_MARK = {SECRET: "sk", PUBLISHABLE: "pk"}
_KIND_OF = {v: k for k, v in _MARK.items()}

PREFIX_LENGTH = 10
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_KEY = re.compile(r"crm_(sk|pk)_([a-z0-9]{%d})_([A-Za-z0-9_-]{32,128})" % PREFIX_LENGTH)
_ORIGIN = re.compile(r"https?://[^/?#\s]+", re.IGNORECASE)


class InvalidKeySpec(ValueError):
    """A key that cannot be created as asked (unknown scope, a publishable key without origins, ...)."""


@dataclass(frozen=True)
class ParsedKey:
    kind: str
    prefix: str
    secret: str


def parse(presented: str) -> ParsedKey | None:
    """The parts of a key as presented, or None when it is not a key of this platform's format."""
    match = _KEY.fullmatch(presented.strip()) if isinstance(presented, str) else None
    if match is None:
        return None
    return ParsedKey(_KIND_OF[match.group(1)], match.group(2), match.group(3))


def hash_key(presented: str) -> str:
    """The stored hash of a key: SHA-256 of the whole key (kind, prefix and secret bound together)."""
    return hashlib.sha256(presented.strip().encode()).hexdigest()


def matches(presented: str, stored_hash: str) -> bool:
    """Whether a presented key is the one whose hash is stored (constant-time comparison)."""
    return hmac.compare_digest(hash_key(presented), stored_hash)


def new_key(kind: str = SECRET) -> tuple[str, str]:
    """(prefix, full key) of a new random key; the key is shown once and never stored."""
    if kind not in KINDS:
        raise InvalidKeySpec(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    return prefix, f"crm_{_MARK[kind]}_{prefix}_{secrets.token_urlsafe(32)}"


def allows(scopes: Iterable[str], wanted: str) -> bool:
    """Whether a key holding ``scopes`` may do what needs ``wanted`` (``admin`` implies every scope)."""
    held = set(scopes)
    return wanted in held or ADMIN in held


def normalize_origin(origin: str) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, lower-case, default port left out."""
    value = origin.strip()
    if not _ORIGIN.fullmatch(value):
        raise InvalidKeySpec(f"origin {origin!r} is not scheme://host[:port] (http or https, no path)")
    parts = urlsplit(value.lower())
    try:
        port = parts.port
    except ValueError:
        raise InvalidKeySpec(f"origin {origin!r} has an invalid port") from None
    if not parts.hostname or parts.username or parts.password:
        raise InvalidKeySpec(f"origin {origin!r} has no host (or holds credentials)")
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def check_spec(kind: str, scopes: Iterable[str], origins: Iterable[str], rate_per_s: float | None,
               burst: int | None) -> tuple[list[str], list[str]]:
    """Validated (scopes, origins) of a key to create; raises ``InvalidKeySpec`` saying what is wrong."""
    if kind not in KINDS:
        raise InvalidKeySpec(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    wanted = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise InvalidKeySpec(f"unknown scope {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not wanted:
        raise InvalidKeySpec(f"give at least one scope of: {', '.join(SCOPES)}")
    allowed = sorted({normalize_origin(o) for o in origins})
    if kind == PUBLISHABLE:
        if wanted != [EVENTS_WRITE]:
            raise InvalidKeySpec(f"a publishable key is public: it can only have the scope {EVENTS_WRITE}")
        if not allowed:
            raise InvalidKeySpec("a publishable key needs at least one allowed origin (https://shop.example)")
    elif allowed:
        raise InvalidKeySpec("allowed origins are for publishable keys (browsers); a secret key has none")
    if rate_per_s is not None and not 0 < rate_per_s <= 1e6:
        raise InvalidKeySpec("rate must be more than 0 and at most 1000000 per second")
    if burst is not None and not 1 <= burst <= 10_000_000:
        raise InvalidKeySpec("burst must be 1 to 10000000")
    return wanted, allowed


@dataclass(frozen=True)
class Key:
    """An API key as stored (never its secret)."""

    id: str
    name: str
    prefix: str
    kind: str
    scopes: tuple[str, ...]
    allowed_origins: tuple[str, ...] = ()
    rate_per_s: float | None = None
    burst: int | None = None
    created_at: datetime | None = None
    created_by: str = ""
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None   # a dashboard session (services/api/routes/session.py); None: never
    operator: str | None = None          # the operator a session belongs to
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def allows(self, scope: str) -> bool:
        return allows(self.scopes, scope)

    @property
    def label(self) -> str:
        """How the key is named in messages and the audit log: its public prefix and its name."""
        return f"{self.prefix} ({self.name})"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "kind": self.kind,
                "scopes": list(self.scopes), "allowed_origins": list(self.allowed_origins),
                "rate_per_s": self.rate_per_s, "burst": self.burst, "created_at": self.created_at,
                "created_by": self.created_by, "revoked_at": self.revoked_at, "revoked_by": self.revoked_by,
                "last_used_at": self.last_used_at, "expires_at": self.expires_at, "operator": self.operator}


_COLUMNS = ("id, name, prefix, kind, scopes, allowed_origins, rate_per_s, burst, created_at, created_by, "
            "revoked_at, revoked_by, last_used_at, expires_at, operator")


def _key(row) -> Key:
    (id_, name, prefix, kind, scopes, origins, rate, burst, created_at, created_by, revoked_at, revoked_by,
     last_used_at, expires_at, operator) = row
    return Key(id_, name, prefix, kind, tuple(scopes), tuple(origins or ()), rate, burst, created_at, created_by,
               revoked_at, revoked_by, last_used_at, expires_at, operator)


# -- the store (cursor in, rows out; the caller owns the transaction) --------------------------------

def create(cur, *, name: str, scopes: Iterable[str], kind: str = SECRET, origins: Iterable[str] = (),
           rate_per_s: float | None = None, burst: int | None = None, created_by: str = "") -> tuple[Key, str]:
    """Store a new key; returns it and the full key string, which is not stored and cannot be shown again."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidKeySpec("name must be 1 to 200 characters")
    wanted, allowed = check_spec(kind, scopes, origins, rate_per_s, burst)
    prefix, full = new_key(kind)
    cur.execute(f"""INSERT INTO api_key (id, name, prefix, kind, secret_hash, scopes, allowed_origins, rate_per_s,
                                         burst, created_by)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
                ("key_" + uuid.uuid4().hex, name, prefix, kind, hash_key(full), wanted, allowed, rate_per_s, burst,
                 created_by))
    return _key(cur.fetchone()), full


def create_session(cur, *, scopes: Iterable[str], operator: str | None, hours: float, created_by: str,
                   name: str | None = None, session_of: str | None = None) -> tuple[Key, str]:
    """A dashboard session: a secret key of these (read) scopes that expires in ``hours``; returns it
    and the key string (the cookie's value, never stored). It belongs to an operator or, made from
    an API key, to that key (``session_of``): it ends when the operator is disabled or the key
    revoked. Expired sessions are deleted here, so the table keeps no more than the live ones and
    those of the last day."""
    if (operator is None) == (session_of is None):
        raise ValueError("a session belongs to exactly one of an operator or an API key")
    key, full = create(cur, name=name or f"dashboard session of {operator}", scopes=scopes, created_by=created_by)
    cur.execute(f"""UPDATE api_key SET expires_at = now() + make_interval(secs => %s), operator = %s,
                                       session_of = %s
                    WHERE id = %s RETURNING {_COLUMNS}""", (hours * 3600, operator, session_of, key.id))
    key = _key(cur.fetchone())
    cur.execute("DELETE FROM api_key WHERE expires_at < now() - interval '1 day'")
    return key, full


def list_keys(cur, *, include_revoked: bool = True) -> list[Key]:
    """Every key but sessions, oldest first (no secrets: the store has none)."""
    where = "WHERE expires_at IS NULL" + ("" if include_revoked else " AND revoked_at IS NULL")
    cur.execute(f"SELECT {_COLUMNS} FROM api_key {where} ORDER BY created_at, id")
    return [_key(r) for r in cur.fetchall()]


def live_sessions_of(cur, key_id: str) -> list[Key]:
    """The live dashboard sessions made from an API key, oldest first."""
    cur.execute(f"""SELECT {_COLUMNS} FROM api_key WHERE session_of = %s AND revoked_at IS NULL
                    AND expires_at > now() ORDER BY created_at, id""", (key_id,))
    return [_key(r) for r in cur.fetchall()]


def get(cur, id_or_prefix: str) -> Key | None:
    """The key with this id (``key_...``) or public prefix."""
    cur.execute(f"SELECT {_COLUMNS} FROM api_key WHERE id = %s OR prefix = %s", (id_or_prefix, id_or_prefix))
    row = cur.fetchone()
    return _key(row) if row else None


def revoke(cur, id_or_prefix: str, *, revoked_by: str = "") -> tuple[Key | None, bool]:
    """Revoke a key (from now on it is refused, by every process within its cache time). Returns the
    key (None: no such key) and whether this call revoked it (False: it was revoked already)."""
    cur.execute(f"""UPDATE api_key SET revoked_at = now(), revoked_by = %s
                    WHERE (id = %s OR prefix = %s) AND revoked_at IS NULL RETURNING {_COLUMNS}""",
                (revoked_by, id_or_prefix, id_or_prefix))
    row = cur.fetchone()
    if row is not None:
        key = _key(row)
        # the sessions made from the key end with it
        cur.execute("""UPDATE api_key SET revoked_at = now(), revoked_by = %s
                       WHERE session_of = %s AND revoked_at IS NULL""", (f"{revoked_by}: key {key.prefix} revoked",
                                                                          key.id))
        return key, True
    return get(cur, id_or_prefix), False


def verify(cur, presented: str) -> Key | None:
    """The live key a presented key string is, or None (malformed, unknown, wrong secret, revoked).
    Notes the use (``last_used_at``, at most once a minute per key, so reads stay cheap)."""
    parsed = parse(presented)
    if parsed is None:
        return None
    cur.execute(f"SELECT {_COLUMNS}, secret_hash FROM api_key WHERE prefix = %s", (parsed.prefix,))
    row = cur.fetchone()
    if row is None or not matches(presented, row[-1]):
        return None
    key = _key(row[:-1])
    if key.revoked_at is not None or key.kind != parsed.kind:
        return None
    if key.expires_at is not None and key.expires_at <= datetime.now(timezone.utc):
        return None  # a dashboard session that has expired
    cur.execute("""UPDATE api_key SET last_used_at = now()
                   WHERE id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')""",
                (key.id,))
    return key


def publishable_origin_known(cur, origin: str) -> bool:
    """Whether a live publishable key allows this origin (answers a CORS preflight, which carries no key)."""
    cur.execute("""SELECT EXISTS (SELECT 1 FROM api_key WHERE kind = 'publishable' AND revoked_at IS NULL
                                  AND %s = ANY(allowed_origins))""", (origin,))
    return bool(cur.fetchone()[0])
