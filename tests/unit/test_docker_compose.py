"""Static checks of the Docker and Kubernetes descriptions (docker-compose.yml, deploy/k8s/).

Nothing is started here: `docker-compose config` only parses, interpolates and validates the
file with Debian's docker-compose (1.29), and the Kubernetes manifests are only parsed here
(tests/unit/test_k8s_manifests.py checks them against schemas).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"

REQUIRED_SERVICES = {"ingest", "processor", "api", "webhooks", "init", "kafka", "postgres"}
APP_SERVICES = {"ingest", "processor", "api", "webhooks"}
TOPICS = {
    "crm.touchpoints",
    "crm.customer-events",
    "crm.customer-state",
    "crm.customer-changes",
    "crm.indicators",
    "crm.deadletter",
}

MISSING_COMPOSE = (
    "the `docker-compose` binary is not on PATH: install Debian's `docker-compose` package "
    "(`apt-get install -y docker-compose`; the project's Makefile installs it) and run again"
)


# ----------------------------------------------------------------------------- helpers


def _compose_binary() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(MISSING_COMPOSE, pytrace=False)
    return path


def _run_compose(tmp_path: Path, *args: str, password: str | None = "dummy-test-password"):
    """Run docker-compose against the repo's file, isolated from the caller's settings.

    The caller's POSTGRES_*, CRM_* and COMPOSE_* variables are left out, and an empty
    --env-file replaces any .env the user keeps at the repo root, so that the result depends on
    the committed file alone. The dummy password exists only in this subprocess's environment.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "CRM_", "COMPOSE_"))
    }
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
        env["CRM_MASTER_KEY"] = "dummy-master-key-for-config-only"
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    cmd = [
        _compose_binary(),
        "--project-directory", str(ROOT),
        "--env-file", str(empty_env_file),
        "-f", str(COMPOSE_FILE),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _compose_raw() -> dict:
    with COMPOSE_FILE.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _published_ports(service: dict) -> list:
    return list(service.get("ports") or [])


def _binds_loopback(port) -> bool:
    """True when a published port (short or long syntax) binds 127.0.0.1 on the host."""
    if isinstance(port, dict):
        return port.get("host_ip") == "127.0.0.1"
    text = str(port)
    # short syntax: HOST_IP:HOST_PORT:CONTAINER_PORT[/proto]; "8080:8080" or "8080" bind all
    # interfaces. The host port may be an interpolation such as ${CRM_API_HOST_PORT:-8000}.
    return text.startswith("127.0.0.1:") and text.count(":") >= 2


def _k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((path, doc))
    return docs


# ----------------------------------------------------------------------------- docker-compose


def test_compose_config_is_valid(tmp_path):
    for profile_args in ([], ["--profile", "demo"]):
        result = _run_compose(tmp_path, *profile_args, "config", "-q")
        assert result.returncode == 0, (
            f"docker-compose {' '.join(profile_args)} config -q failed "
            f"(exit {result.returncode}):\n{result.stderr}{result.stdout}"
        )


def test_compose_requires_postgres_password(tmp_path):
    """No password is committed: without POSTGRES_PASSWORD the file refuses to resolve."""
    result = _run_compose(tmp_path, "config", "-q", password=None)
    assert result.returncode != 0, "docker-compose.yml resolved without POSTGRES_PASSWORD"
    assert "POSTGRES_PASSWORD" in result.stderr + result.stdout


def test_compose_resolved_ports_bind_loopback(tmp_path):
    """After interpolation, every published port still binds 127.0.0.1 only."""
    result = _run_compose(tmp_path, "--profile", "demo", "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert REQUIRED_SERVICES | {"simulator"} <= set(resolved["services"])
    for name, service in resolved["services"].items():
        for port in _published_ports(service):
            assert _binds_loopback(port), f"service {name!r} publishes {port!r} beyond 127.0.0.1"
    dsn = resolved["services"]["api"]["environment"]["CRM_PG_DSN"]
    assert dsn == "postgresql://crm:dummy-test-password@postgres:5432/crm"


def test_compose_names_services_and_ports_bind_loopback():
    services = _compose_raw().get("services") or {}
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"
    published = 0
    for name, service in services.items():
        for port in _published_ports(service):
            published += 1
            assert _binds_loopback(port), (
                f"service {name!r} publishes {port!r}: host ports must bind 127.0.0.1 "
                '(e.g. "127.0.0.1:8080:8080")'
            )
    assert published, "no published ports at all (collector and API should be reachable)"


def test_compose_wiring():
    data = _compose_raw()
    assert "version" not in data or str(data["version"]).startswith(("2.", "3.")), data.get("version")
    services = data["services"]
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["postgres"]["image"] == "postgres:16"
    for name in ("kafka", "postgres"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")

    init_deps = services["init"]["depends_on"]
    for engine in ("kafka", "postgres"):
        assert init_deps[engine]["condition"] == "service_healthy"
    init_cmd = " ".join(services["init"]["command"])
    assert "crm db migrate" in init_cmd and "crm topics create" in init_cmd

    for name in APP_SERVICES | {"init", "simulator"}:
        build = services[name]["build"]
        assert build["context"] == "." and build["dockerfile"] == "deploy/Dockerfile", name
        env = services[name]["environment"]
        assert env["CRM_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["CRM_INGEST_HOST"] == "0.0.0.0" and env["CRM_API_HOST"] == "0.0.0.0", name
    for name in APP_SERVICES:
        condition = services[name]["depends_on"]["init"]["condition"]
        assert condition == "service_completed_successfully", name

    assert services["simulator"]["profiles"] == ["demo"]
    assert {"kafka-data", "pg-data"} <= set(data.get("volumes") or {})


# ----------------------------------------------------------------------------- Kubernetes


def test_k8s_manifests_parse_and_have_kind():
    files = sorted(K8S_DIR.glob("*.yaml"))
    assert {p.name for p in files} >= {"kafka.yaml", "postgres.yaml", "app.yaml"}
    assert (K8S_DIR / "README.md").is_file()
    docs = _k8s_documents()
    assert docs
    for path, doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
        assert doc.get("apiVersion"), f"{path.name}: document without apiVersion: {doc!r:.200}"
        assert doc.get("kind"), f"{path.name}: document without kind: {doc!r:.200}"
        assert (doc.get("metadata") or {}).get("name"), f"{path.name}: {doc['kind']} without a name"


def test_k8s_topics_and_deployments():
    docs = [doc for _, doc in _k8s_documents()]
    kinds = {doc["kind"] for doc in docs}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "Cluster", "ConfigMap", "Deployment",
            "Service", "Job"} <= kinds

    topics = {
        (doc["spec"].get("topicName") or doc["metadata"]["name"]): doc["spec"]
        for doc in docs
        if doc["kind"] == "KafkaTopic"
    }
    assert set(topics) == TOPICS
    assert topics["crm.customer-state"]["config"]["cleanup.policy"] == "compact"

    partitions = topics["crm.touchpoints"]["partitions"]
    deployments = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    assert set(deployments) == {"crm-ingest", "crm-processor", "crm-api", "crm-webhooks", "crm-mail"}
    processor_replicas = deployments["crm-processor"]["spec"]["replicas"]
    assert processor_replicas <= min(partitions, topics["crm.customer-events"]["partitions"])
    for name, dep in deployments.items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz", (name, probe)

    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "crm-config"]
    assert int(config_map["data"]["CRM_PARTITIONS"]) == partitions
