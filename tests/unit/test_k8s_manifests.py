"""deploy/k8s/ checked against schemas, as the API server would check it on `kubectl apply`.

* Built-in kinds (Deployment, Service, NetworkPolicy, Ingress, ...) against the Kubernetes OpenAPI
  schemas shipped inside the PyPI package kubernetes-validate (a test dependency), in strict mode: a
  misspelt or misplaced field is an error, as with kubectl's default field validation.
* The operators' kinds (Strimzi's Kafka, KafkaNodePool, KafkaTopic, KafkaUser; CloudNativePG's
  Cluster, ScheduledBackup) against JSON Schemas made from the operators' own CRDs by
  deploy/k8s/schemas/crd2schema.py (kept in deploy/k8s/schemas/, sources named in its README), also
  strict.

The same documents also go through kubeconform (built with `go install` from the Go module proxy
when it is not on PATH) with the same schemas, as a second, independent validator.

Then what the platform needs of the manifests: every service has a Deployment, the TLS listener's
SCRAM users exist, PostgreSQL has the lock table the projections need, traffic is fenced by
NetworkPolicies and the HTTP services are reachable through an Ingress.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

import kubernetes_validate  # a test dependency (pyproject.toml): `make install`

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
SCHEMAS = K8S_DIR / "schemas"
# The oldest Kubernetes minor the manifests are meant for (README: Installing); the schemas of the
# package cover it and later ones.
KUBERNETES_VERSION = "1.30"


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


@cache
def _crd_schema(api_version: str, kind: str) -> dict | None:
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _errors(doc: dict) -> list[str]:
    """Why the API server would refuse this document (empty: it would accept it)."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    group = api_version.rpartition("/")[0]
    if "." in group and not group.endswith(".k8s.io"):  # a custom resource
        schema = _crd_schema(api_version, kind)
        if schema is None:
            return [f"no schema for {api_version} {kind} in {SCHEMAS.relative_to(ROOT)}"]
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [str(e)]
    return []


def _named(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == kind}


@pytest.mark.parametrize("name,doc", [(f"{f}:{d['kind']}/{d['metadata']['name']}", d) for f, d in _documents()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_matches_its_schema(name, doc):
    assert _errors(doc) == [], name


def test_the_schemas_refuse_mistakes():
    """The check above can fail: a misspelt field, a wrong type and an unknown kind are all refused."""
    docs = _documents()
    deployment = copy.deepcopy(_named(docs, "Deployment")["crm-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    assert _errors(deployment)
    kafka = copy.deepcopy(_named(docs, "Kafka")["crm"])
    kafka["spec"]["kafka"]["listeners"][0]["port"] = "9092"  # must be an integer
    assert _errors(kafka)
    user = copy.deepcopy(next(iter(_named(docs, "KafkaUser").values())))
    user["spec"]["authentication"]["kind"] = "scram-sha-512"  # not a field of the CRD
    assert _errors(user)
    cluster = copy.deepcopy(_named(docs, "Cluster")["crm-pg"])
    cluster["spec"]["instance"] = 3
    assert _errors(cluster)
    assert _errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_every_service_has_a_deployment():
    docs = _documents()
    deployments = _named(docs, "Deployment")
    assert set(deployments) == {"crm-ingest", "crm-processor", "crm-api", "crm-webhooks", "crm-mail"}
    commands = {name: d["spec"]["template"]["spec"]["containers"][0]["command"][0] for name, d in deployments.items()}
    assert commands == {name: name for name in deployments}
    mail = deployments["crm-mail"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in mail["ports"]} == {2525, 8025}
    assert _named(docs, "Service")["crm-mail"]["spec"]["ports"][0]["port"] == 25


def test_kafka_users_for_the_scram_listener():
    docs = _documents()
    (kafka,) = _named(docs, "Kafka").values()
    scram = [l for l in kafka["spec"]["kafka"]["listeners"] if l.get("authentication", {}).get("type") == "scram-sha-512"]
    assert scram, "the downstream listener authenticates with SCRAM"
    assert kafka["spec"]["kafka"].get("authorization", {}).get("type") == "simple", \
        "without an authorizer every SCRAM user could read and write every topic"
    users = _named(docs, "KafkaUser")
    assert users
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "crm", name
        assert user["spec"]["authentication"]["type"] == "scram-sha-512", name
        assert user["spec"]["authorization"]["type"] == "simple", name
    config = _named(docs, "ConfigMap")["crm-config"]["data"]
    assert config["CRM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["CRM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["CRM_KAFKA_BOOTSTRAP"].endswith(f":{scram[0]['port']}")
    services = users[config["CRM_KAFKA_SASL_USERNAME"]]
    assert _may(services, "topic", "crm.touchpoints", "Write")
    assert _may(services, "group", "crm-processors", "Read")
    for name, dep in _named(docs, "Deployment").items():
        if name == "crm-mail":  # posts to the collector, no Kafka
            continue
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["CRM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == services["metadata"]["name"], name
    downstream = [u for u in users.values() if u is not services]
    assert downstream, "an example user for a downstream subscriber"
    for user in downstream:
        assert _may(user, "topic", "crm.customer-changes", "Read")
        assert not any(_may(user, "topic", t, "Write") for t in ("crm.touchpoints", "crm.customer-changes")), \
            "downstream systems only read"


def _may(user: dict, kind: str, name: str, operation: str) -> bool:
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        if res["type"] != kind or acl.get("type", "allow") != "allow":
            continue
        named = res.get("name", "")
        if (named == name or named == "*" if res.get("patternType", "literal") == "literal"
                else name.startswith(named)) and (operation in acl["operations"] or "All" in acl["operations"]):
            return True
    return False


def test_postgres_has_the_lock_table_the_projections_need():
    (cluster,) = _named(_documents(), "Cluster").values()
    assert cluster["spec"]["postgresql"]["parameters"]["max_locks_per_transaction"] == "256"
    assert "max_locks_per_transaction = 256" in (ROOT / "deploy" / "postgres.sh").read_text()


def test_network_policies_and_ingress():
    docs = _documents()
    policies = _named(docs, "NetworkPolicy")
    default = [p for p in policies.values() if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
               and not p["spec"].get("ingress")]
    assert default, "a default-deny policy for the namespace"
    allowed = {name for p in policies.values() for name in
               [p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")] if name}
    assert {"crm-ingest", "crm-api", "crm-mail", "crm-processor", "crm-webhooks"} <= allowed
    ingresses = _named(docs, "Ingress")
    backends = {path["backend"]["service"]["name"] for ing in ingresses.values()
                for rule in ing["spec"]["rules"] for path in rule["http"]["paths"]}
    assert backends == {"crm-ingest", "crm-api"}
    for ing in ingresses.values():
        assert ing["spec"].get("tls"), "TLS at the Ingress"


def test_no_stale_claims():
    text = (K8S_DIR / "kafka.yaml").read_text() + (K8S_DIR / "app.yaml").read_text()
    assert "once the services' Kafka client settings support it" not in text


# -- kubeconform: the same schemas through a second validator -------------------------------------------

KUBECONFORM = "github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0"
TOOLS = ROOT / ".crm" / "tools" / "bin"  # git-ignored; built once, reused by later runs


def _kubeconform() -> str:
    found = shutil.which("kubeconform") or (str(TOOLS / "kubeconform") if (TOOLS / "kubeconform").is_file() else None)
    if found:
        return found
    go = shutil.which("go")
    if go is None:
        pytest.skip("kubeconform is not on PATH and there is no Go toolchain to build it (`go install "
                    f"{KUBECONFORM}`); the schema checks above ran all the same")
    TOOLS.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([go, "install", KUBECONFORM], env={**os.environ, "GOBIN": str(TOOLS), "CGO_ENABLED": "0"},
                           capture_output=True, text=True)
    assert built.returncode == 0, f"go install {KUBECONFORM} failed:\n{built.stderr}"
    return str(TOOLS / "kubeconform")


def _standalone_core_schemas(target: Path) -> Path:
    """kubernetes-validate's strict schemas refer to a shared _definitions.json, which kubeconform does
    not resolve; each kind used here is written with the definitions inside it."""
    source = (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
              / f"v{KUBERNETES_VERSION}.0-local-strict")
    shared = '"/api/_definitions.json#/$defs/'  # how the package's schemas point into the shared file

    def local(text: str) -> dict:
        return json.loads(text.replace(shared, '"#/$defs/'))
    definitions = local((source / "_definitions.json").read_text())["$defs"]
    folder = target / f"v{KUBERNETES_VERSION}.0-standalone-strict"
    folder.mkdir(parents=True)
    for _, doc in _documents():
        group, _, version = doc["apiVersion"].rpartition("/")
        if "." in group and not group.endswith(".k8s.io"):
            continue
        name = "-".join([doc["kind"].lower()] + ([group.split(".")[0]] if group else []) + [version]) + ".json"
        (folder / name).write_text(json.dumps({**local((source / name).read_text()), "$defs": definitions}))
    return target


def _run_kubeconform(binary: str, schemas: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([
        binary, "-strict", "-summary", "-output", "json", "-kubernetes-version", f"{KUBERNETES_VERSION}.0",
        "-schema-location", str(schemas) + "/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/"
                                           "{{ .ResourceKind }}{{ .KindSuffix }}.json",
        "-schema-location", str(SCHEMAS) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
        *map(str, files)], capture_output=True, text=True)


def test_kubeconform_agrees(tmp_path):
    binary = _kubeconform()
    schemas = _standalone_core_schemas(tmp_path / "schemas")
    done = _run_kubeconform(binary, schemas, *sorted(K8S_DIR.glob("*.yaml")))
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["summary"]["invalid"] == report["summary"]["errors"] == 0, done.stdout
    assert report["summary"]["valid"] == len(_documents()) and report["summary"]["skipped"] == 0
    # and it can refuse: a misspelt field in a Deployment, one in a KafkaUser
    broken = tmp_path / "broken.yaml"
    deployment = copy.deepcopy(_named(_documents(), "Deployment")["crm-mail"])
    deployment["spec"]["replica"] = 2
    user = copy.deepcopy(_named(_documents(), "KafkaUser")["crm-services"])
    user["spec"]["authorisation"] = user["spec"].pop("authorization")
    broken.write_text(yaml.safe_dump_all([deployment, user]))
    refused = _run_kubeconform(binary, schemas, broken)
    assert refused.returncode != 0 and json.loads(refused.stdout)["summary"]["invalid"] == 2, refused.stdout
