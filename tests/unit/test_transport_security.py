"""Transport security settings without servers: CRM_KAFKA_* to the keyword arguments of
kafka-python, aiokafka and faust; CRM_PG_* to the DSN and the password kept apart from it.
(tests/integration/test_transport_security.py runs them against a real broker and cluster.)"""
from __future__ import annotations

import copy
import pickle
import ssl
import subprocess

import psycopg2
import psycopg2.extensions
import pytest
from pydantic import SecretStr, ValidationError

from services.common import db
from services.common.kafka_security import PLAINTEXT, KafkaSecurity
from services.common.settings import Settings

PASSWORD = "pw-that-must-never-show"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Only what a test passes: none of the shell's CRM_ or libpq variables."""
    import os

    for name in list(os.environ):
        if name.startswith(("CRM_", "PG")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    """A self-signed certificate and its key (PEM), as a CA file and as a client certificate."""
    folder = tmp_path_factory.mktemp("pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "1", "-subj", "/CN=crm unit test"], cwd=folder, check=True, capture_output=True)
    return folder


def kafka(**values) -> KafkaSecurity:
    return KafkaSecurity.from_settings(Settings(**values))


# -- Kafka -------------------------------------------------------------------------------------------------

def test_plaintext_is_the_default_and_adds_nothing():
    security = kafka()
    assert security == PLAINTEXT
    assert security.kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert security.aiokafka() == {"security_protocol": "PLAINTEXT"}
    assert security.faust("a:9092,b:9092") == {"broker": "kafka://a:9092,b:9092", "broker_credentials": None}
    assert security.ssl_context() is None


def test_sasl_ssl_scram_maps_to_each_client_library(pem):
    security = kafka(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                     kafka_sasl_username="crm", kafka_sasl_password=PASSWORD,
                     kafka_ssl_cafile=str(pem / "cert.pem"))
    assert security.kafka_python() == {
        "security_protocol": "SASL_SSL", "ssl_cafile": str(pem / "cert.pem"), "ssl_certfile": None,
        "ssl_keyfile": None, "ssl_password": None, "ssl_check_hostname": True,
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "crm", "sasl_plain_password": PASSWORD}

    aio = security.aiokafka()
    context = aio.pop("ssl_context")
    assert aio == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                   "sasl_plain_username": "crm", "sasl_plain_password": PASSWORD}
    assert isinstance(context, ssl.SSLContext) and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "crm unit test"),),)]
    assert security.ssl_context() is context  # made once, shared by the process's clients

    options = security.faust("127.0.0.1:9093")
    credentials = options["broker_credentials"]
    assert options["broker"] == "kafka://127.0.0.1:9093"
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    assert credentials_to_aiokafka_auth(credentials) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "crm",
        "sasl_plain_password": PASSWORD, "ssl_context": context}
    assert PASSWORD not in repr(credentials)


def test_faust_app_takes_the_credentials(pem):
    import faust

    security = kafka(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN", kafka_sasl_username="crm",
                     kafka_sasl_password=PASSWORD, kafka_ssl_cafile=str(pem / "cert.pem"))
    app = faust.App("crm-unit-test", **security.faust("127.0.0.1:9093"), store="memory://")
    assert [str(url) for url in app.conf.broker] == ["kafka://127.0.0.1:9093"]
    assert app.conf.broker_credentials.protocol.value == "SASL_SSL"
    assert app.conf.broker_credentials.mechanism.value == "PLAIN"
    assert app.conf.broker_credentials.ssl_context is security.ssl_context()


def test_sasl_plaintext_plain_has_no_tls():
    security = kafka(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                     kafka_sasl_username="crm", kafka_sasl_password=PASSWORD, kafka_ssl_cafile="/ignored.pem")
    assert security.kafka_python() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                       "sasl_plain_username": "crm", "sasl_plain_password": PASSWORD}
    assert "ssl_context" not in security.aiokafka()
    credentials = security.faust_credentials()
    assert (credentials.protocol.value, credentials.mechanism.value, credentials.ssl_context) == (
        "SASL_PLAINTEXT", "PLAIN", None)


def test_mutual_tls_with_a_client_certificate(pem):
    security = kafka(kafka_security_protocol="SSL", kafka_ssl_cafile=str(pem / "cert.pem"),
                     kafka_ssl_certfile=str(pem / "cert.pem"), kafka_ssl_keyfile=str(pem / "key.pem"),
                     kafka_ssl_check_hostname=False)
    assert security.kafka_python() == {
        "security_protocol": "SSL", "ssl_cafile": str(pem / "cert.pem"), "ssl_certfile": str(pem / "cert.pem"),
        "ssl_keyfile": str(pem / "key.pem"), "ssl_password": None, "ssl_check_hostname": False}
    context = security.aiokafka()["ssl_context"]
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED
    credentials = security.faust_credentials()
    assert credentials.protocol.value == "SSL" and credentials.context is context


@pytest.mark.parametrize("values, missing", [
    ({"kafka_security_protocol": "SASL_SSL"},
     "CRM_KAFKA_SASL_MECHANISM, CRM_KAFKA_SASL_USERNAME, CRM_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "crm"},
     "CRM_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k.pem"}, "CRM_KAFKA_SSL_CERTFILE"),
])
def test_settings_that_cannot_work_are_refused_naming_the_variables(values, missing):
    with pytest.raises(ValueError, match=missing):
        kafka(**values)


def test_no_secret_in_a_repr_or_a_validation_error():
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN", kafka_sasl_username="crm",
                        kafka_sasl_password=PASSWORD, kafka_ssl_key_password=PASSWORD, pg_password=PASSWORD)
    security = KafkaSecurity.from_settings(settings)
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(security), security.describe()):
        assert PASSWORD not in text
    assert security.describe() == "SASL_SSL PLAIN as crm"
    for bad in ({"kafka_security_protocol": "TLS"}, {"kafka_sasl_mechanism": "GSSAPI"}, {"pg_sslmode": "always"}):
        with pytest.raises(ValidationError) as invalid:
            Settings(kafka_sasl_password=PASSWORD, pg_password=PASSWORD, **bad)
        assert PASSWORD not in str(invalid.value)


# -- PostgreSQL --------------------------------------------------------------------------------------------

def test_dsn_unchanged_without_transport_settings():
    settings = Settings(pg_dsn="postgresql://crm@127.0.0.1:5432/crm")
    assert settings.pg_dsn == "postgresql://crm@127.0.0.1:5432/crm"
    assert db.connect_params(settings.pg_dsn) == {}


def test_password_and_tls_settings_join_the_dsn_at_connect_time_only():
    settings = Settings(pg_dsn="postgresql://crm@db.example:5432/crm", pg_password=PASSWORD, pg_sslmode="verify-full",
                        pg_sslrootcert="/etc/crm/ca.pem", pg_sslcert="/etc/crm/client.pem",
                        pg_sslkey="/etc/crm/client.key")
    dsn = settings.pg_dsn
    assert psycopg2.extensions.parse_dsn(dsn) == {
        "user": "crm", "host": "db.example", "port": "5432", "dbname": "crm", "sslmode": "verify-full",
        "sslrootcert": "/etc/crm/ca.pem", "sslcert": "/etc/crm/client.pem", "sslkey": "/etc/crm/client.key"}
    assert PASSWORD not in str(dsn) and PASSWORD not in repr(dsn) and PASSWORD not in repr(settings)
    assert db.connect_params(dsn) == {"password": PASSWORD}
    # kept by copies (settings are copied), pickling and derived DSNs (the replay's rebuild schema)
    for same in (copy.deepcopy(dsn), pickle.loads(pickle.dumps(dsn)), settings.model_copy(deep=True).pg_dsn):
        assert db.connect_params(same) == {"password": PASSWORD}
    from services.replay import rebuild_dsn

    rebuilt = rebuild_dsn(dsn)
    assert "search_path=crm_rebuild" in rebuilt and db.connect_params(rebuilt) == {"password": PASSWORD}


def test_a_password_written_in_the_dsn_is_moved_out_of_the_string():
    settings = Settings(pg_dsn=f"postgresql://crm:{PASSWORD}@db.example/crm?sslmode=require")
    assert PASSWORD not in str(settings.pg_dsn) and PASSWORD not in repr(settings)
    assert psycopg2.extensions.parse_dsn(settings.pg_dsn)["sslmode"] == "require"
    assert db.connect_params(settings.pg_dsn) == {"password": PASSWORD}
    # CRM_PG_PASSWORD wins over one in the DSN
    assert db.connect_params(Settings(pg_dsn=f"postgresql://crm:{PASSWORD}@h/crm", pg_password="other").pg_dsn) == {
        "password": "other"}


def test_every_connection_site_passes_the_password(monkeypatch):
    seen = []
    monkeypatch.setattr(psycopg2, "connect", lambda dsn, **kwargs: seen.append((str(dsn), kwargs)) or _Closed())
    dsn = Settings(pg_dsn="postgresql://crm@h/crm", pg_password=PASSWORD).pg_dsn
    db.connect(dsn, application_name="crm-test")
    assert seen == [("postgresql://crm@h/crm", {"application_name": "crm-test", "connect_timeout": 5,
                                                  "password": PASSWORD})]
    pool = db.TransactionPool(dsn, maxconn=1)
    assert pool.pool._kwargs["password"] == PASSWORD
    from services.api.deps import Database

    assert Database(dsn, maxconn=1).pool._kwargs["password"] == PASSWORD


def test_an_unparsable_dsn_is_left_for_libpq_to_explain():
    settings = Settings(pg_dsn="host=h port", pg_password=PASSWORD)
    assert str(settings.pg_dsn) == "host=h port" and db.connect_params(settings.pg_dsn) == {"password": PASSWORD}


class _Closed:
    autocommit = False
    closed = True
