"""Operators: the people who sign in to the operations dashboard (migration ``011_dashboard.sql``).

An operator has a username and a password, kept as a salted scrypt hash. Signing in does not hand
the browser the operator's password or any lasting key: it makes a *session*, an API key of the
read scopes only (``customers:read``, ``indicators:read``) that expires after
``CRM_SESSION_HOURS``, which the browser keeps as an HttpOnly cookie and the API accepts on reads
only (``services/api/routes/session.py``). Operators are managed with ``crm operators``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

# scrypt's cost: about 50 ms and 16 MiB per check on a 2-core machine (OWASP's minimum is N=2^17
# with r=8 for a cost similar to this with p=1; the N is stored with each hash, so it can be raised)
_N, _R, _P = 2 ** 14, 8, 1
_DUMMY = None  # a hash to check unknown usernames against, so they take as long as known ones


class InvalidOperator(ValueError):
    """An operator that cannot be made as asked (bad username, short password, exists already)."""


@dataclass(frozen=True)
class Operator:
    username: str
    display_name: str
    created_at: datetime | None = None
    created_by: str = ""
    disabled_at: datetime | None = None
    last_sign_in: datetime | None = None

    def as_dict(self) -> dict:
        return {"username": self.username, "display_name": self.display_name, "created_at": self.created_at,
                "created_by": self.created_by, "disabled_at": self.disabled_at, "last_sign_in": self.last_sign_in}


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2 ** 20, dklen=32)
    return "$".join(("scrypt", str(n), str(r), str(p), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 2 ** 20, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_new(username: str, password: str) -> str:
    """The username normalized, or ``InvalidOperator`` saying what is wrong."""
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise InvalidOperator("username must be 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidOperator(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return name


_COLUMNS = "username, display_name, created_at, created_by, disabled_at, last_sign_in"


def create(cur, username: str, password: str, *, display_name: str = "", created_by: str = "") -> Operator:
    name = check_new(username, password)
    cur.execute(f"""INSERT INTO operator (username, display_name, password_hash, created_by)
                    VALUES (%s, %s, %s, %s) ON CONFLICT (username) DO NOTHING RETURNING {_COLUMNS}""",
                (name, display_name.strip()[:200], hash_password(password), created_by))
    row = cur.fetchone()
    if row is None:
        raise InvalidOperator(f"operator {name} exists already (crm operators password {name} sets a new password)")
    return Operator(*row)


def set_password(cur, username: str, password: str) -> bool:
    """A new password (signs the operator out everywhere); False: no such operator."""
    name = check_new(username, password)
    cur.execute("UPDATE operator SET password_hash = %s WHERE username = %s", (hash_password(password), name))
    if not cur.rowcount:
        return False
    end_sessions(cur, name, by=f"password changed for {name}")
    return True


def disable(cur, username: str, *, by: str = "") -> bool:
    """Disable an operator and end their sessions; False: no such operator."""
    cur.execute("UPDATE operator SET disabled_at = coalesce(disabled_at, now()) WHERE username = %s",
                (username.strip().lower(),))
    if not cur.rowcount:
        return False
    end_sessions(cur, username.strip().lower(), by=by or "operator disabled")
    return True


def enable(cur, username: str) -> bool:
    cur.execute("UPDATE operator SET disabled_at = NULL WHERE username = %s", (username.strip().lower(),))
    return bool(cur.rowcount)


def end_sessions(cur, username: str, *, by: str) -> int:
    """Revoke every live session of an operator; returns how many."""
    cur.execute("""UPDATE api_key SET revoked_at = now(), revoked_by = %s
                   WHERE operator = %s AND revoked_at IS NULL""", (by, username))
    return cur.rowcount


def list_operators(cur) -> list[Operator]:
    cur.execute(f"SELECT {_COLUMNS} FROM operator ORDER BY username")
    return [Operator(*row) for row in cur.fetchall()]


def authenticate(cur, username: str, password: str) -> Operator | None:
    """The operator these credentials name (None: unknown, disabled or a wrong password). Takes the
    same time whether the username exists or not."""
    global _DUMMY
    name = username.strip().lower()
    row = None
    if USERNAME.fullmatch(name) and len(password) <= MAX_PASSWORD:
        cur.execute(f"SELECT {_COLUMNS}, password_hash FROM operator WHERE username = %s", (name,))
        row = cur.fetchone()
    if row is None:
        _DUMMY = _DUMMY or hash_password(secrets.token_urlsafe(16))
        password_matches(password[:MAX_PASSWORD], _DUMMY)
        return None
    operator = Operator(*row[:-1])
    if not password_matches(password, row[-1]) or operator.disabled_at is not None:
        return None
    cur.execute("UPDATE operator SET last_sign_in = now() WHERE username = %s", (name,))
    return operator
