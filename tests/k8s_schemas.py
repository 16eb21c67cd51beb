"""Renders deploy/k8s overlays and validates every object: core kinds with kubernetes-validate
(strict: unknown fields are errors), operator kinds with the CRD schemas vendored in
deploy/k8s/crds (Strimzi's whole schemas, excerpts for KEDA, Altinity and the Prometheus
operator), checked with jsonschema the way ``kubectl apply --validate=strict`` would: a field
a schema node does not list is an error unless the node preserves unknown fields."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
CRDS = K8S / "crds"
KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes the manifests target
STRIMZI = CRDS / "strimzi-0.45.0"
EXCERPTS = ("keda.yaml", "altinity.yaml", "prometheus-operator.yaml")


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(overlay: str) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command, "neither kustomize nor kubectl is installed (deploy/setup.sh installs one)"
    result = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def structural_to_jsonschema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, strict about unknown fields."""
    if isinstance(node, list):
        return [structural_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: structural_to_jsonschema(value)
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key not in ("nullable", "format")
    }
    if "properties" in node:
        out["properties"] = {k: structural_to_jsonschema(v) for k, v in node["properties"].items()}
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    # `type: object` with no properties (metadata, free-form maps) stays open, as in the CRDs
    if "properties" in node and not preserve and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema, from every vendored CRD schema."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(STRIMZI.glob("*.json")):
        kind, version, _ = path.name.split(".")
        schemas[(f"kafka.strimzi.io/{version}", kind)] = json.loads(path.read_text())
    for name in EXCERPTS:
        for kind, entry in yaml.safe_load((CRDS / name).read_text()).items():
            schemas[(entry["apiVersion"], kind)] = entry["schema"]
    return {key: structural_to_jsonschema(schema) for key, schema in schemas.items()}


def crd_errors(doc: dict[str, Any]) -> list[str] | None:
    """The CRD schema's complaints about ``doc``; None when no vendored CRD covers its kind."""
    schema = crd_schemas().get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return None
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def core_errors(doc: dict[str, Any]) -> list[str] | None:
    """kubernetes-validate's complaint about ``doc``; None when it has no schema for the kind."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path)) or '(root)'}: {exc.message}"]
    return []


@dataclass
class Report:
    """What validating one rendered overlay found."""

    core: Counter[str] = field(default_factory=Counter)
    crd: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def summary(self, overlay: str) -> str:
        total = sum(self.core.values()) + sum(self.crd.values())
        core = ", ".join(f"{kind} {n}" for kind, n in sorted(self.core.items()))
        crd = ", ".join(f"{kind} {n}" for kind, n in sorted(self.crd.items()))
        return (
            f"{overlay}: {total} objects, {len(self.errors)} errors\n"
            f"  kubernetes-validate {version('kubernetes-validate')} (Kubernetes "
            f"{KUBERNETES_VERSION}, strict): {core}\n"
            f"  CRD schemas (jsonschema {version('jsonschema')}): {crd}"
        )


def validate(docs: list[dict[str, Any]]) -> Report:
    report = Report()
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        errors = crd_errors(doc)
        counter = report.crd
        if errors is None:
            errors, counter = core_errors(doc), report.core
        if errors is None:
            report.errors.append(f"{name}: no schema (neither a core kind nor a vendored CRD)")
            continue
        counter[doc["kind"]] += 1
        report.errors += [f"{name}: {error}" for error in errors]
    return report
