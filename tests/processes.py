"""Real platform processes and infrastructure for the integration and end-to-end tests.

Nothing here is mocked: the stack fixture starts the project's own Kafka broker and PostgreSQL
(on test ports, under .crm/test, so a running demo is never disturbed) and the services run as
the same console scripts a user starts.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import psycopg2
import psycopg2.extensions

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


OWNER_ROLE, SERVICE_ROLE = "crm", "crm_service"  # deploy/postgres.sh: CRM_PG_USER, CRM_PG_SERVICE_USER


@dataclass
class Stack:
    env: dict[str, str]
    kafka_bootstrap: str
    pg_admin_dsn: str
    home: Path

    @classmethod
    def on_ports(cls, home: Path, kafka_port: str, controller_port: str, pg_port: str) -> "Stack":
        """The project's Kafka and PostgreSQL under ``home`` on these ports (not started yet)."""
        env = {
            **os.environ,
            "CRM_HOME": str(home),
            "CRM_KAFKA_PORT": kafka_port,
            "CRM_KAFKA_CONTROLLER_PORT": controller_port,
            "CRM_PG_PORT": pg_port,
            "CRM_PARTITIONS": "4",
            "CRM_PYTHON": str(VENV_BIN / "python"),
        }
        env.pop("CRM_PG_DSN", None)
        env.pop("CRM_MASTER_KEY_FILE", None)
        env.pop("CRM_TOPIC_PREFIX", None)  # each test's platform names its own
        # the session's master key (personal data is sealed under it); never a file of the repository
        from services.common.vault import new_master_key

        env["CRM_MASTER_KEY"] = new_master_key()
        # the session's database passwords, which deploy/postgres.sh sets on the owner and the
        # services' role at start (hex: nothing to escape in a URL)
        env["CRM_PG_PASSWORD"], env["CRM_PG_SERVICE_PASSWORD"] = secrets.token_hex(24), secrets.token_hex(24)
        stack = cls(env=env, kafka_bootstrap=f"127.0.0.1:{kafka_port}",
                    pg_admin_dsn=f"postgresql://{OWNER_ROLE}:{env['CRM_PG_PASSWORD']}@127.0.0.1:{pg_port}/crm",
                    home=home)
        env["CRM_KAFKA_BOOTSTRAP"] = stack.kafka_bootstrap
        return stack

    def fresh_start(self) -> None:
        """Start PostgreSQL and a broker with an empty log (a leftover broker is stopped; jars stay)."""
        self.script("kafka.sh", "stop", check=False)
        shutil.rmtree(self.home / "kafka" / "data", ignore_errors=True)
        self.script("postgres.sh", "start")
        self.script("kafka.sh", "start")

    def as_role(self, dsn: str, role: str) -> str:
        """``dsn`` for the owner (``owner``: migrations, ``crm replay``) or the services' role
        (``service``), with the session's password in it (test databases only)."""
        params = psycopg2.extensions.parse_dsn(dsn)
        user, password = ((SERVICE_ROLE, self.env["CRM_PG_SERVICE_PASSWORD"]) if role == "service"
                          else (OWNER_ROLE, self.env["CRM_PG_PASSWORD"]))
        return f"postgresql://{user}:{password}@{params['host']}:{params['port']}/{params['dbname']}"

    def new_database(self) -> str:
        """A fresh database, migrated by the owner; returns the DSN of the services' role, which
        may read and write its rows and nothing more, as the services' role of the demo."""
        name = "crm_t_" + uuid.uuid4().hex[:10]
        conn = psycopg2.connect(self.pg_admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        from services.common.db import migrate

        owner = self.pg_admin_dsn.rsplit("/", 1)[0] + "/" + name
        migrate(owner, SERVICE_ROLE)
        return self.as_role(owner, "service")

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a deploy script; on failure, say what it printed."""
        done = subprocess.run([str(REPO / "deploy" / args[0]), *args[1:]], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"deploy/{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


class Service:
    """One platform process (e.g. ``crm-processor``) started as a user would start it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], health_url: str | None, log_dir: Path):
        self.name, self.argv, self.env, self.health_url = name, argv, env, health_url
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "Service":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if self.health_url:
            def healthy() -> bool:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                return httpx.get(self.health_url, timeout=2).status_code == 200
            wait_for(healthy, timeout, f"{self.name} to be healthy")
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def create_keys(dsn: str) -> dict[str, str]:
    """An API key per scope (``admin`` among them) in a fresh database, made by the key store
    itself; scope -> the key. They exist only in the test database."""
    from services.common import apikeys

    keys: dict[str, str] = {}
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        for scope in apikeys.SCOPES:
            _, keys[scope] = apikeys.create(cur, name=f"tests {scope}", scopes=[scope], created_by="tests")
    conn.close()
    return keys


class Platform:
    """Starts services wired to the test stack, one database and one topic namespace; stops them
    at the end. Each test owns what it writes: its database, its consumer groups and its topics
    (``topic(TOUCHPOINTS)`` names this test's copy), so no test sees another's log."""

    def __init__(self, stack: Stack, dsn: str, log_dir: Path):
        self.stack, self.dsn, self.log_dir = stack, dsn, log_dir
        self.processor_id = "crm-test-" + uuid.uuid4().hex[:8]
        self.topic_prefix = f"t{uuid.uuid4().hex[:10]}."
        self.services: list[Service] = []
        self.keys = create_keys(dsn)  # scope -> API key; tests send keys["admin"] by default (tests/http.py)
        self.create_topics()

    def topic(self, name: str) -> str:
        """This test's copy of the platform topic ``name`` (a constant of services.common.topics)."""
        from services.common.topics import NAMESPACE

        return self.topic_prefix + name.removeprefix(NAMESPACE)

    @property
    def topics(self) -> list[str]:
        from services.common.topics import in_namespace

        return [spec.name for spec in in_namespace(self.topic_prefix)]

    def create_topics(self) -> None:
        """This test's topics, as ``deploy/kafka.sh`` creates the demo's (partitions, configs)."""
        from services.common.kafka_admin import ensure_topics
        from services.common.topics import in_namespace

        ensure_topics(self.stack.kafka_bootstrap, int(self.stack.env["CRM_PARTITIONS"]),
                      specs=in_namespace(self.topic_prefix))

    def delete_topics(self) -> None:
        """Drop this test's topics, so the single test broker does not collect thousands."""
        from kafka.admin import KafkaAdminClient

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.stack.kafka_bootstrap, request_timeout_ms=15000)
            try:
                admin.delete_topics(self.topics, timeout_ms=15000)
            finally:
                admin.close()
        except Exception:  # noqa: BLE001 - a broker a fault test left stopped; the session's end wipes it
            pass

    @property
    def admin_key(self) -> str:
        return self.keys["admin"]

    def owner_env(self, **extra: str) -> dict[str, str]:
        """``env`` as the database's owner: for what changes the schema (``crm replay``)."""
        return self.env(CRM_PG_DSN=self.stack.as_role(self.dsn, "owner"), **extra)

    def env(self, **extra: str) -> dict[str, str]:
        # the services' role: its password is in the DSN, and no other may override it
        stack_env = {k: v for k, v in self.stack.env.items() if k not in ("CRM_PG_PASSWORD", "CRM_PG_SERVICE_PASSWORD")}
        env = {**stack_env, "CRM_PG_DSN": self.dsn, "CRM_KAFKA_BOOTSTRAP": self.stack.kafka_bootstrap,
               "CRM_PROCESSOR_ID": self.processor_id, "CRM_TOPIC_PREFIX": self.topic_prefix,
               "CRM_LOG_JSON": "true", "CRM_BATCH_WITHIN_S": "0.05",
               # the tests' webhook receivers listen on 127.0.0.1 (tests/e2e/test_security_review.py
               # starts services without it, to see loopback refused)
               "CRM_WEBHOOKS_ALLOWED_HOSTS": "127.0.0.1"}
        env.update(extra)
        return env

    def _start(self, name: str, script: str, health: str | None, **env: str) -> Service:
        svc = Service(name, [str(VENV_BIN / script)], self.env(**env), health, self.log_dir).start()
        self.services.append(svc)
        return svc

    def processor(self, **env: str) -> Service:
        port = free_port()
        return self._start("processor", "crm-processor", f"http://127.0.0.1:{port}/healthz",
                           CRM_PROCESSOR_WEB_PORT=str(port), **env)

    def collector(self, **env: str) -> tuple[Service, str]:
        port = free_port()
        svc = self._start("ingest", "crm-ingest", f"http://127.0.0.1:{port}/healthz", CRM_INGEST_PORT=str(port), **env)
        return svc, f"http://127.0.0.1:{port}"

    def api(self, **env: str) -> tuple[Service, str]:
        port = free_port()
        svc = self._start("api", "crm-api", f"http://127.0.0.1:{port}/healthz", CRM_API_PORT=str(port), **env)
        return svc, f"http://127.0.0.1:{port}"

    def webhooks(self, **env: str) -> Service:
        """A webhook dispatcher (``crm-webhooks``); several share the partitions and the deliveries."""
        port = free_port()
        return self._start("webhooks", "crm-webhooks", f"http://127.0.0.1:{port}/healthz",
                           CRM_WEBHOOKS_PORT=str(port), CRM_WEBHOOKS_ID=f"{self.processor_id}-webhooks", **env)

    def mail(self, collector: str, **env: str) -> tuple[Service, int]:
        """``crm-mail`` posting to ``collector`` with an events:write key; returns it and its SMTP port."""
        smtp_port, web_port = free_port(), free_port()
        svc = self._start("mail", "crm-mail", f"http://127.0.0.1:{web_port}/healthz", CRM_MAIL_PORT=str(smtp_port),
                          CRM_MAIL_WEB_PORT=str(web_port), CRM_COLLECTOR_URL=collector,
                          CRM_API_KEY=self.keys["events:write"], **env)
        return svc, smtp_port

    def stop_all(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.delete_topics()
