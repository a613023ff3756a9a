"""Kafka over SASL_SSL and PostgreSQL over verified TLS with a password, against real servers.

The module starts its own broker and cluster with the deploy scripts' secured modes (nothing
mocked): certificates made by ``openssl`` in a temporary folder (a CA, a server certificate for
127.0.0.1, the broker's PKCS12 keystore), random passwords that exist only in this process's
environment, PostgreSQL with ``ssl = on`` and ``hostssl ... scram-sha-256`` only, and a broker
whose SASL_SSL listener authenticates a SCRAM-SHA-512 user. The platform's code then runs with
the settings from the environment, as a deployment would: migrations and the connection pools,
the publisher, the topic admin, the API's live consumer, and a real ``crm-processor`` (faust, the
feed relay) folding events end to end. Wrong passwords, a missing password, plain TCP and an
unknown CA are refused, with errors that say why and never hold a secret; no log holds one.

Its own folder and ports, beside the session's test stack (which it never touches):
``CRM_TEST_TLS_HOME`` (default: the folder ``secured`` in the test stack's), ``CRM_TEST_TLS_KAFKA_PORT``
(default: the test stack's Kafka port + 100; the controller and the SASL_SSL listener take the next
two) and ``CRM_TEST_TLS_PG_PORT`` (default: the test stack's PostgreSQL port + 100).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg2
import pytest

from services.common import db, kafka_admin
from services.common.kafka_security import KafkaSecurity
from services.common.publisher import KafkaPublisher, KafkaUnavailable
from services.common.settings import Settings
from services.common.topics import CUSTOMER_CHANGES, INDICATORS, TOUCHPOINTS
from tests.processes import REPO, VENV_BIN, Service, Stack, free_port, wait_for

HOME = Path(os.environ.get("CRM_TEST_TLS_HOME") or Path(os.environ.get("CRM_TEST_HOME") or REPO / ".crm" / "test")
            / "secured")
KAFKA_PORT = int(os.environ.get("CRM_TEST_TLS_KAFKA_PORT") or int(os.environ.get("CRM_TEST_KAFKA_PORT", "19092")) + 100)
PG_PORT = int(os.environ.get("CRM_TEST_TLS_PG_PORT") or int(os.environ.get("CRM_TEST_PG_PORT", "15432")) + 100)
USER = "crm-app"


def openssl(folder: Path, *args: str, env: dict | None = None) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, env=env)


def make_certificates(folder: Path, keystore_password: str) -> None:
    """A CA, a server certificate for 127.0.0.1 / localhost signed by it, the broker's PKCS12
    keystore, and an unrelated CA (a client trusting only it must refuse the servers)."""
    for ca in ("ca", "other-ca"):
        openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                "-days", "2", "-subj", f"/CN=crm test {ca}")
    openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                       "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    openssl(folder, "pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-certfile", "ca.crt",
            "-name", "broker", "-out", "broker.p12", "-passout", "env:KEYSTORE_PASSWORD",
            env={**os.environ, "KEYSTORE_PASSWORD": keystore_password})
    (folder / "server.key").chmod(0o600)


@dataclass
class Secured:
    certs: Path
    kafka_password: str = field(repr=False)  # random, in this process's environment only; kept out of reports too
    pg_password: str = field(repr=False)
    keystore_password: str = field(repr=False)
    stack: Stack | None = None
    outputs: list[str] = field(default_factory=list)  # what the deploy scripts printed
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{KAFKA_PORT + 2}"

    @property
    def secrets(self) -> list[str]:
        return [self.kafka_password, self.pg_password, self.keystore_password]

    def pg_env(self, **extra: str) -> dict[str, str]:
        """A client's PostgreSQL settings: the DSN without a password, the password apart, verify-full."""
        return {"CRM_PG_DSN": f"postgresql://crm@127.0.0.1:{PG_PORT}/crm", "CRM_PG_PASSWORD": self.pg_password,
                "CRM_PG_SSLMODE": "verify-full", "CRM_PG_SSLROOTCERT": str(self.certs / "ca.crt"), **extra}

    def kafka_env(self, **extra: str) -> dict[str, str]:
        """A client's Kafka settings: SASL_SSL with SCRAM-SHA-512, the broker checked against the CA."""
        return {"CRM_KAFKA_BOOTSTRAP": self.secure_bootstrap, "CRM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "CRM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "CRM_KAFKA_SASL_USERNAME": USER,
                "CRM_KAFKA_SASL_PASSWORD": self.kafka_password, "CRM_KAFKA_SSL_CAFILE": str(self.certs / "ca.crt"),
                **extra}

    def script(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(REPO / "deploy" / args[0]), *args[1:]], env={**self.stack.env, **env}, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        self.outputs.append(done.stdout + done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"deploy/{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


def _without_client_settings(environ) -> dict[str, str]:
    """The environment minus every CRM_ and libpq (PG*) variable of the shell running the tests."""
    return {k: v for k, v in environ.items() if not k.startswith(("CRM_", "PG"))}


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Secured:
    """This module's broker (PLAINTEXT on loopback for its own tooling, SASL_SSL for clients) and
    PostgreSQL (TLS and scram-sha-256 only over TCP), started fresh by the deploy scripts."""
    certs = tmp_path_factory.mktemp("tls")
    sec = Secured(certs, kafka_password=secrets.token_urlsafe(18), pg_password=secrets.token_urlsafe(18),
                  keystore_password=secrets.token_urlsafe(18))
    started = time.monotonic()
    make_certificates(certs, sec.keystore_password)
    sec.timings["certificates"] = time.monotonic() - started
    env = {**_without_client_settings(os.environ), "CRM_HOME": str(HOME), "CRM_PYTHON": str(VENV_BIN / "python"),
           "CRM_KAFKA_PORT": str(KAFKA_PORT), "CRM_KAFKA_CONTROLLER_PORT": str(KAFKA_PORT + 1),
           "CRM_KAFKA_SECURE_PORT": str(KAFKA_PORT + 2), "CRM_PG_PORT": str(PG_PORT), "CRM_PARTITIONS": "2",
           "CRM_KAFKA_SSL_KEYSTORE": str(certs / "broker.p12"), "CRM_KAFKA_SSL_KEYSTORE_PASSWORD": sec.keystore_password,
           "CRM_PG_SERVER_CERT": str(certs / "server.crt"), "CRM_PG_SERVER_KEY": str(certs / "server.key"),
           **sec.pg_env(), **sec.kafka_env()}
    env.pop("CRM_KAFKA_BOOTSTRAP")
    sec.stack = Stack(env=env, kafka_bootstrap=f"127.0.0.1:{KAFKA_PORT}",
                      pg_admin_dsn=f"postgresql://crm@127.0.0.1:{PG_PORT}/crm", home=HOME)
    sec.script("kafka.sh", "stop", check=False)
    sec.script("postgres.sh", "stop", check=False)
    shutil.rmtree(HOME / "kafka" / "data", ignore_errors=True)
    shutil.rmtree(HOME / "postgres", ignore_errors=True)
    for name, script in (("postgres", "postgres.sh"), ("kafka", "kafka.sh")):
        started = time.monotonic()
        sec.script(script, "start")
        sec.timings[name] = time.monotonic() - started
    print(f"\nsecured stack up: " + ", ".join(f"{k} {v:.1f}s" for k, v in sec.timings.items()))
    yield sec
    if os.environ.get("CRM_TEST_KEEP_STACK") != "1":
        sec.script("kafka.sh", "stop", check=False)
        sec.script("postgres.sh", "stop", check=False)


@pytest.fixture
def environ(monkeypatch, tmp_path):
    """Sets the process environment to exactly these CRM_ and PG variables and returns the
    Settings a process would build from it (libpq reads PG* at connect time, too)."""

    def settings(**values: str) -> Settings:
        for name in list(os.environ):
            if name.startswith(("CRM_", "PG")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # never the user's ~/.pgpass
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return Settings()

    return settings


def assert_no_secret(secured: Secured, *texts: str) -> None:
    for text in texts:
        for secret in secured.secrets:
            assert secret not in text, "a password was printed"


# -- PostgreSQL ------------------------------------------------------------------------------------------

def test_postgres_verify_full_with_the_password_from_the_environment(secured, environ):
    cfg = environ(**secured.pg_env())
    assert_no_secret(secured, str(cfg.pg_dsn), repr(cfg.pg_dsn), repr(cfg), cfg.model_dump_json())
    name = "crm_tls_" + uuid.uuid4().hex[:8]
    conn = db.connect(cfg.pg_dsn, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    dsn = db.derive_dsn(cfg.pg_dsn, dbname=name)
    assert db.migrate(dsn) == [m for m, _ in db.migrations()]

    pool = db.TransactionPool(dsn, maxconn=2, application_name="crm-tls-test")
    try:
        with pool.transaction() as cur:
            # the owner is no superuser (pg_authid is closed to it): pg_hba allows only scram-sha-256
            # on TCP, so a password stored otherwise could not have signed in
            cur.execute("""SELECT s.ssl, s.version, current_user, current_setting('password_encryption') = 'scram-sha-256'
                           FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()""")
            ssl_on, version, user, scram = cur.fetchone()
            cur.execute("SELECT count(*) FROM schema_migrations")
            migrated = cur.fetchone()[0]
    finally:
        pool.close()
    assert (ssl_on, user, scram) == (True, "crm", True) and version.startswith("TLSv1.")
    assert migrated == len(db.migrations())

    from services.api.deps import Database  # the API's read-only pool, the other pool the platform makes

    api_db = Database(dsn, maxconn=1)
    try:
        with api_db.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone()[0] is True
    finally:
        api_db.close()


def test_postgres_refuses_a_wrong_password_no_password_plain_tcp_and_an_unknown_ca(secured, environ):
    wrong = "wrong-" + secrets.token_urlsafe(8)
    attempts = {
        "password authentication failed": secured.pg_env(CRM_PG_PASSWORD=wrong),
        "no password supplied": {k: v for k, v in secured.pg_env().items() if k != "CRM_PG_PASSWORD"},
        "no encryption": secured.pg_env(CRM_PG_SSLMODE="disable"),
        "certificate verify failed": secured.pg_env(CRM_PG_SSLROOTCERT=str(secured.certs / "other-ca.crt")),
    }
    for reason, env in attempts.items():
        cfg = environ(**env)
        with pytest.raises(psycopg2.OperationalError) as refused:
            db.connect(cfg.pg_dsn)
        assert reason in str(refused.value), (reason, str(refused.value))
        assert_no_secret(secured, str(refused.value), repr(refused.value))
        assert wrong not in str(refused.value)


def test_postgres_password_from_a_pgpass_file(secured, environ, tmp_path):
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{PG_PORT}:*:crm:{secured.pg_password}\n")
    pgpass.chmod(0o600)
    cfg = environ(**{k: v for k, v in secured.pg_env().items() if k != "CRM_PG_PASSWORD"}, PGPASSFILE=str(pgpass))
    conn = db.connect(cfg.pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone()[0] is True
    finally:
        conn.close()


# -- Kafka -----------------------------------------------------------------------------------------------

def test_kafka_admin_publisher_and_live_consumer_over_sasl_ssl(secured, environ):
    cfg = environ(**secured.kafka_env())
    security = KafkaSecurity.from_settings(cfg)
    assert_no_secret(secured, repr(cfg), repr(security), security.describe(), cfg.model_dump_json())
    bootstrap = cfg.kafka_bootstrap

    kafka_admin.wait_ready(bootstrap, 30, security)  # topic admin + produce + fetch, as `crm kafka ready`
    topic = f"crm.tls-test-{uuid.uuid4().hex[:8]}"
    with contextlib.closing(kafka_admin._admin(bootstrap, 15000, security)) as admin:
        assert kafka_admin._create(admin, {topic: {"num_partitions": 1, "replication_factor": 1}}, 15000) == [topic]
    assert kafka_admin.ensure_topics(bootstrap, 2, 1, security) == []  # the deploy script made them

    async def live_round_trip() -> dict:
        from services.api.live import Hub

        hub = Hub(bootstrap, security=security)
        publisher = KafkaPublisher(bootstrap, client_id="crm-tls-test", security=security)
        try:
            await hub.start(wait_s=30)
            assert hub.ready.is_set(), hub.error
            queue = hub.subscribe()
            await publisher.send_all([(INDICATORS, b"tls", orjson.dumps({"tls": topic}), [])])
            return await asyncio.wait_for(queue.get(), 30)
        finally:
            publisher.close()
            await hub.stop()

    assert asyncio.run(live_round_trip()) == {"tls": topic}


def test_kafka_refuses_wrong_credentials_an_unknown_ca_and_plaintext_clearly(secured, environ, capsys):
    wrong = "wrong-" + secrets.token_urlsafe(8)
    bootstrap = secured.secure_bootstrap
    cases = {
        "invalid credentials": secured.kafka_env(CRM_KAFKA_SASL_PASSWORD=wrong),
        "CERTIFICATE_VERIFY_FAILED": secured.kafka_env(CRM_KAFKA_SSL_CAFILE=str(secured.certs / "other-ca.crt")),
    }
    for reason, env in cases.items():
        environ(**env)
        # long enough for a TLS and SCRAM handshake on a busy machine to get as far as the refusal
        assert kafka_admin.main(["ready", "--bootstrap", bootstrap, "--timeout", "30"]) == 1
        said = capsys.readouterr().err
        assert reason in said, said
        assert_no_secret(secured, said)
        assert wrong not in said

    # the collector's publisher: 503 (KafkaUnavailable) rather than an accepted event
    cfg = environ(**secured.kafka_env(CRM_KAFKA_SASL_PASSWORD=wrong))
    publisher = KafkaPublisher(bootstrap, ack_timeout_s=3, security=KafkaSecurity.from_settings(cfg))
    with pytest.raises(KafkaUnavailable) as unavailable:
        asyncio.run(publisher.send_all([(INDICATORS, b"k", b"{}", [])]))
    assert "SASL_SSL SCRAM-SHA-512 as crm-app" in str(unavailable.value)
    assert_no_secret(secured, str(unavailable.value))
    assert wrong not in str(unavailable.value)

    async def aiokafka_start(security: KafkaSecurity) -> str:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **security.aiokafka())
        try:
            await consumer.start()
        except Exception as exc:  # noqa: BLE001 - what a follower would log
            return f"{type(exc).__name__}: {exc}"
        finally:
            await consumer.stop()
        return "started"

    refused = asyncio.run(aiokafka_start(KafkaSecurity.from_settings(cfg)))
    assert refused.startswith("KafkaConnectionError") and wrong not in refused
    plaintext = asyncio.run(aiokafka_start(KafkaSecurity()))  # a PLAINTEXT client on the SASL_SSL port
    assert plaintext != "started"

    # and settings that cannot work are refused before any connection, naming what is missing
    cfg = environ(**{k: v for k, v in secured.kafka_env().items() if k != "CRM_KAFKA_SASL_PASSWORD"})
    with pytest.raises(ValueError, match="CRM_KAFKA_SASL_PASSWORD"):
        KafkaSecurity.from_settings(cfg)


def test_the_secured_listener_needs_its_secrets_before_anything_starts(secured):
    done = secured.script("kafka.sh", "start", check=False, CRM_KAFKA_SSL_KEYSTORE_PASSWORD="")
    assert done.returncode == 1 and "set CRM_KAFKA_SSL_KEYSTORE_PASSWORD" in done.stderr, done.stderr


# -- the platform end to end: crm-processor (faust, the feed relay) over SASL_SSL and TLS ------------------

def test_processor_folds_events_end_to_end_over_sasl_ssl_and_tls(secured, environ):
    cfg = environ(**secured.pg_env(), **secured.kafka_env())
    security = KafkaSecurity.from_settings(cfg)
    name = "crm_tls_" + uuid.uuid4().hex[:8]
    conn = db.connect(cfg.pg_dsn, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    dsn = db.derive_dsn(cfg.pg_dsn, dbname=name)
    db.migrate(dsn)

    port = free_port()
    env = {**_without_client_settings(os.environ), **secured.pg_env(CRM_PG_DSN=f"postgresql://crm@127.0.0.1:{PG_PORT}/{name}"),
           **secured.kafka_env(), "CRM_HOME": str(HOME), "CRM_PARTITIONS": "2", "CRM_PROCESSOR_ID": f"crm-tls-{name}",
           "CRM_PROCESSOR_WEB_PORT": str(port), "CRM_LOG_JSON": "true", "CRM_BATCH_WITHIN_S": "0.05",
           "CRM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    processor = Service("processor", [str(VENV_BIN / "crm-processor")], env, f"http://127.0.0.1:{port}/healthz",
                        HOME / "logs" / "tls-test")
    started = time.monotonic()
    try:
        processor.start(timeout=90)
        unique = uuid.uuid4().hex[:10]
        events = [{"specversion": "1.0", "id": f"{unique}-{n}", "source": "urn:test:web", "type": "web.page_viewed",
                   "time": f"2026-11-01T10:0{n}:00Z", "data": {"url": "https://shop/x", "anonymous_id": f"ck-{unique}"}}
                  for n in (1, 2)]
        publisher = KafkaPublisher(cfg.kafka_bootstrap, client_id="crm-tls-test", security=security)
        try:
            asyncio.run(publisher.send_all([(TOUCHPOINTS, f"anonymous_id:ck-{unique}".encode(), orjson.dumps(e),
                                             [("content-type", b"application/cloudevents+json")]) for e in events]))
        finally:
            publisher.close()

        def folded():
            with contextlib.closing(db.connect(dsn)) as c, c.cursor() as cur:
                cur.execute("""SELECT v.customer_id, v.event_count FROM customer_view v
                               JOIN customer_view_identifier i USING (customer_id) WHERE i.key = %s""",
                            (f"anonymous_id:ck-{unique}",))
                row = cur.fetchone()
                return row if row and row[1] == 2 else None

        customer_id, _ = wait_for(folded, 90, "both events folded into one customer over TLS")
        secured.timings["processor round trip"] = time.monotonic() - started

        async def changes_of(customer: str) -> list[dict]:
            """crm.customer-changes as a downstream aiokafka consumer reads it (read_committed: the
            relay publishes in Kafka transactions)."""
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(CUSTOMER_CHANGES, bootstrap_servers=cfg.kafka_bootstrap, group_id=None,
                                        isolation_level="read_committed", auto_offset_reset="earliest",
                                        enable_auto_commit=False, **security.aiokafka())
            await consumer.start()  # no group: every partition of the topic is assigned
            try:
                parts = sorted(consumer.assignment())
                end = await consumer.end_offsets(parts)
                found: list[dict] = []
                assert parts, "no partition of the change topic assigned"
                while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        found += [orjson.loads(r.value) for r in records if r.key == customer.encode()]
                return found
            finally:
                await consumer.stop()

        changes = wait_for(lambda: asyncio.run(changes_of(customer_id)), 60, "the feed relay's change over SASL_SSL")
        assert all(c["subject"] == customer_id for c in changes), changes
        print(f"\nprocessor over SASL_SSL + TLS: started, folded and relayed in {time.monotonic() - started:.1f}s "
              f"(events folded {secured.timings['processor round trip']:.1f}s after the start)")
    finally:
        processor.stop()
    assert_no_secret(secured, processor.log_path.read_text(errors="replace"))


def test_no_secret_in_any_log_or_script_output(secured):
    logs = [p for p in (HOME / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "kafka.log" for p in logs) and any(p.name == "postgres.log" for p in logs)
    for path in logs:
        assert_no_secret(secured, path.read_text(errors="replace"))
    rendered = (HOME / "kafka" / "server.properties").read_text()
    assert "${env:CRM_KAFKA_SSL_KEYSTORE_PASSWORD}" in rendered
    assert_no_secret(secured, rendered, *secured.outputs)
