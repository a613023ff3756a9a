"""Dependencies of the query API routes: settings, a pooled read-only database connection, and the
Kafka publisher of operator actions (which are events, never writes to the read model)."""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Annotated, Iterator

import orjson
import psycopg2.extras
from fastapi import Depends, HTTPException, Request

from events.envelope import EARLIEST_TIME, LATEST_TIME, NUL_MESSAGE, TIME_RANGE
from services.common.db import KeepingPool, TransactionPool, connect_params
from services.common.publisher import KafkaPublisher
from services.common.settings import Settings


class _Connection(psycopg2.extensions.connection):
    """A pooled connection that remembers it has been set up."""

    ready = False


class Database:
    """A small pool of read-only PostgreSQL connections (the API never writes the read model)."""

    def __init__(self, dsn: str, maxconn: int = 16):
        self.dsn = dsn
        # psycopg2's pool raises when exhausted; requests wait for a free connection instead
        self.slots = threading.BoundedSemaphore(maxconn)
        self.pool = KeepingPool(maxconn, dsn, application_name="crm-api", connect_timeout=5,
                                connection_factory=_Connection, **connect_params(dsn))

    @contextmanager
    def cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        with self.slots:
            with self._cursor() as cur:
                yield cur

    @contextmanager
    def _cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        conn = self.pool.getconn()
        try:
            if not conn.ready:
                conn.set_session(readonly=True, autocommit=True)
                psycopg2.extras.register_default_jsonb(conn, loads=orjson.loads)
                conn.ready = True
            with conn.cursor() as cur:
                yield cur
        except psycopg2.OperationalError:
            self.pool.putconn(conn, close=True)
            conn = None
            raise
        finally:
            if conn is not None:
                self.pool.putconn(conn)

    def close(self) -> None:
        self.pool.closeall()


def refuse_nul(request: Request) -> None:
    """Refuse a path or query parameter holding U+0000 (400, naming it): no identifier, name or
    cursor can hold it, and PostgreSQL refuses it in a query parameter."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if isinstance(value, str) and "\x00" in value:
            raise HTTPException(400, f"{name}: {NUL_MESSAGE}")


def refuse_time_out_of_range(name: str, value: datetime | None) -> None:
    """Refuse (400) a time no event can have (a naive one is taken as UTC): windows and folds
    reaching past the range of a datetime would overflow."""
    if value is None:
        return
    if not EARLIEST_TIME <= (value if value.tzinfo else value.replace(tzinfo=timezone.utc)) < LATEST_TIME:
        raise HTTPException(400, f"{name} must be {TIME_RANGE}")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_publisher(request: Request) -> KafkaPublisher:
    return request.app.state.publisher


def get_writer(request: Request) -> TransactionPool:
    """The small read-write pool for the tables the API owns (webhook subscriptions), apart from
    the read-only pool of the read models."""
    return request.app.state.writer


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
PublisherDep = Annotated[KafkaPublisher, Depends(get_publisher)]
WriterDep = Annotated[TransactionPool, Depends(get_writer)]


@functools.lru_cache(maxsize=4)
def _rules(path: str):
    from projections.customer_state import load_rules

    return load_rules(path or None)


def state_rules(settings: Settings):
    """The customer-state rules the processors use (the same file, read once)."""
    return _rules(settings.customer_state_rules)
