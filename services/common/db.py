"""PostgreSQL access shared by the services: connections and schema migrations."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from importlib import resources
from typing import Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
from pydantic import SecretStr

log = logging.getLogger(__name__)


# -- the connection string and its password (docs/transport-security.md) -----------------------------
class Dsn(str):
    """A libpq connection string whose password is kept apart: the string itself (what is passed
    around, shown and possibly logged) never holds it; :func:`connect_params` adds it when a
    connection is made. Any string operation on it gives a plain ``str`` without the password, so
    code deriving a DSN uses :func:`derive_dsn`."""

    password: SecretStr | None

    def __new__(cls, dsn: str, password: SecretStr | None = None) -> "Dsn":
        self = super().__new__(cls, dsn)
        self.password = password
        return self

    def __repr__(self) -> str:
        return f"Dsn({str.__repr__(self)}{', password=**********' if self.password is not None else ''})"


def settings_dsn(settings) -> Dsn:
    """``CRM_PG_DSN`` with ``pg_sslmode``, ``pg_sslrootcert``, ``pg_sslcert`` and ``pg_sslkey`` merged
    in, its password (``pg_password``, else one written in the DSN, moved out of the string) kept apart."""
    dsn = str(settings.pg_dsn)
    password = settings.pg_password if settings.pg_password is not None else getattr(settings.pg_dsn, "password", None)
    params = {name: value for name in ("sslmode", "sslrootcert", "sslcert", "sslkey")
              if (value := getattr(settings, f"pg_{name}", None))}
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:  # left as it is: connecting reports libpq's reason
        return Dsn(dsn, password)
    if "password" in parsed:
        written = parsed.pop("password")
        password = password if password is not None else SecretStr(written)
        dsn = psycopg2.extensions.make_dsn(**parsed, **params)
    elif params:
        dsn = psycopg2.extensions.make_dsn(dsn, **params)
    return Dsn(dsn, password)


def derive_dsn(dsn: str, **params: str) -> str:
    """``dsn`` with libpq parameters added or replaced, keeping its password apart."""
    return Dsn(psycopg2.extensions.make_dsn(dsn, **params), getattr(dsn, "password", None))


def connect_params(dsn: str) -> dict[str, str]:
    """What every connection adds to its DSN (:func:`connect`, the pools): the password, never
    part of a string that could be shown."""
    password = getattr(dsn, "password", None)
    return {"password": password.get_secret_value()} if password is not None else {}


def connect(dsn: str, *, application_name: str = "crm", autocommit: bool = False) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn, application_name=application_name, connect_timeout=5, **connect_params(dsn))
    conn.autocommit = autocommit
    return conn


class KeepingPool(psycopg2.pool.ThreadedConnectionPool):
    """psycopg2's threaded pool, keeping up to ``maxconn`` connections open between uses.

    psycopg2 keeps only ``minconn`` idle connections and closes the rest as they come back; with
    ``minconn`` 0 (so a process starts while PostgreSQL is still down) every request would open a
    connection of its own, some 3 ms and most of a query's time. This one opens connections lazily
    and keeps them; one idle for more than ``CHECK_AFTER_S`` is checked (``SELECT 1``) before it is
    handed out, so a database restart costs no request an error."""

    CHECK_AFTER_S = 2.0

    def __init__(self, maxconn: int, *args, **kwargs):
        super().__init__(0, maxconn, *args, **kwargs)
        self.minconn = maxconn  # after the constructor, which would open minconn connections at once
        self._idle_since: dict[int, float] = {}

    def getconn(self, key=None):
        while True:
            conn = super().getconn(key)
            idle_since = self._idle_since.pop(id(conn), None)
            if idle_since is None or time.monotonic() - idle_since < self.CHECK_AFTER_S or conn.closed:
                return conn
            try:
                if conn.autocommit:
                    conn.cursor().execute("SELECT 1")
                else:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    conn.rollback()
                return conn
            except psycopg2.Error:  # gone while idle (a restart): drop it and take another
                super().putconn(conn, key, close=True)

    def putconn(self, conn=None, key=None, close=False):
        if conn is not None and not close and not conn.closed:
            self._idle_since[id(conn)] = time.monotonic()
        super().putconn(conn, key, close)


class TransactionPool:
    """A small thread-safe pool of read-write connections, one transaction per use: for the
    processes' own small tables (webhook subscriptions and deliveries), never the read models."""

    def __init__(self, dsn: str, *, maxconn: int = 4, application_name: str = "crm"):
        # psycopg2's pool raises when exhausted; callers wait for a free connection instead
        self.slots = threading.BoundedSemaphore(maxconn)
        self.pool = KeepingPool(maxconn, dsn, application_name=application_name, connect_timeout=5,
                                **connect_params(dsn))

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in a transaction, committed when the block ends, rolled back when it raises."""
        with self.slots:
            conn = self.pool.getconn()
            broken = False
            try:
                with conn, conn.cursor() as cur:
                    yield cur
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True
                raise
            finally:
                self.pool.putconn(conn, close=broken or bool(conn.closed))

    def close(self) -> None:
        self.pool.closeall()


_lock_scope = ""


def set_lock_scope(scope: str) -> None:
    """Advisory locks are database-wide; a process writing a projection rebuilt beside the live one
    (``crm replay``, in its own schema) names its locks apart so it never waits for the live workers."""
    global _lock_scope
    _lock_scope = f"{scope}:" if scope else ""


def lock_id(name: str, *, scope: str | None = None) -> int:
    """The advisory-lock number of a name (64-bit hash), within this process's lock scope (or the
    given one; ``""`` names the live workers' locks)."""
    prefix = _lock_scope if scope is None else (f"{scope}:" if scope else "")
    return int.from_bytes(hashlib.blake2b((prefix + name).encode(), digest_size=8).digest(), "big", signed=True)


def lock(cur, names) -> None:
    """Take the transaction-scoped advisory locks of these names at once, in a fixed order, so
    that workers locking overlapping sets never deadlock (callers take each kind of lock once)."""
    wanted = sorted({lock_id(n) for n in names})
    if wanted:
        cur.execute("SELECT count(pg_advisory_xact_lock(h)) FROM unnest(%s::bigint[]) AS h", (wanted,))


PAGE_SIZE = 5000
"""Rows per statement of ``execute_values``: psycopg2's default of 100 sends a batch of a thousand
events' rows as ten statements, each a round trip."""


def execute_values(cur, sql: str, argslist, template: str | None = None, page_size: int = PAGE_SIZE,
                   fetch: bool = False):
    """``psycopg2.extras.execute_values`` with pages of PAGE_SIZE rows."""
    return psycopg2.extras.execute_values(cur, sql, argslist, template=template, page_size=page_size, fetch=fetch)


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration shipped with the package, in order."""
    folder = resources.files("services.common") / "migrations"
    return sorted((f.name, f.read_text(encoding="utf-8")) for f in folder.iterdir() if f.name.endswith(".sql"))


def migrate(dsn: str, service_role: str | None = None) -> list[str]:
    """Apply the migrations not yet applied, all in one transaction; returns their names. Run as
    the database's owner; ``service_role`` (when that role exists) is granted what the services
    need, on what the migrations made and on what the owner makes later (``grant_service_role``)."""
    applied: list[str] = []
    with connect(dsn, application_name="crm-migrate") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(727001)")  # one migrator at a time
            cur.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                               name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())""")
            cur.execute("SELECT name FROM schema_migrations")
            done = {r[0] for r in cur.fetchall()}
            for name, sql in migrations():
                if name in done:
                    continue
                cur.execute(sql)
                cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
                log.info("migration applied", extra={"migration": name})
            if service_role:
                grant_service_role(cur, service_role)
    conn.close()
    return applied


def grant_service_role(cur, role: str) -> bool:
    """Let ``role`` (the services' least-privilege login) read and write rows: SELECT, INSERT,
    UPDATE and DELETE on the tables of ``public`` and use of their sequences, now and, by default
    privileges, on every table and sequence the owner (``current_user``) makes from now on, in any
    schema (``crm replay`` builds its tables in a schema of its own and swaps them in). Nothing
    else: no DDL, no TRUNCATE, no other database. False: there is no such role (left alone)."""
    from psycopg2 import sql

    cur.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (role,))
    if not cur.fetchone()[0]:
        log.info("no such role: nothing granted", extra={"role": role})
        return False
    who = sql.Identifier(role)
    for statement in (
            "GRANT USAGE ON SCHEMA public TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}",
            "ALTER DEFAULT PRIVILEGES GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {}"):
        cur.execute(sql.SQL(statement).format(who))
    return True
