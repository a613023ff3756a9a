"""Turn operators' CustomResourceDefinitions into the JSON Schemas that tests/unit/test_k8s_manifests.py
checks the custom resources of deploy/k8s against.

    python deploy/k8s/schemas/crd2schema.py CRD.yaml... [--out deploy/k8s/schemas]

Writes ``<group>/<kind>_<version>.json`` for every served version. The schemas are made strict the way
the API server treats a structural schema with field validation ``Strict`` (kubectl's default): a field
that the schema does not declare is an error, except under ``x-kubernetes-preserve-unknown-fields``.
Descriptions are dropped (they are most of a CRD's size and checked by nothing).
"""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import yaml


# Branches of these only add value checks to the structure declared beside them (structural
# schemas); a branch naming some properties must not forbid the others.
VALUE_VALIDATIONS = ("oneOf", "anyOf", "allOf", "not")


def strict(node: Any, structural: bool = True) -> Any:
    if isinstance(node, list):
        return [strict(n, structural) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v, structural and k not in VALUE_VALIDATIONS) for k, v in node.items() if k != "description"}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if structural and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def convert(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    schemas = {}
    for version in spec["versions"]:
        if not version.get("served"):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"const": f"{group}/{version['name']}"}
        props["kind"] = {"const": kind}
        props["metadata"] = {"type": "object"}
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schemas[f"{group}/{kind.lower()}_{version['name']}.json"] = schema
    return schemas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crds", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent)
    args = parser.parse_args()
    for path in args.crds:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            for name, schema in convert(doc).items():
                target = args.out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
                print(target)


if __name__ == "__main__":
    main()
