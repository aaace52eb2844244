"""The kustomize base and overlays: meshctl reads the base as kustomize does, and every object of
every rendering is valid for the Kubernetes API.

Schemas come from kubernetes-validate in strict mode (unknown fields are errors). Two versions
are checked: 1.29, the first with native sidecars that the injector uses, and 1.37, the newest
the package ships. Renderings by `kubectl kustomize` are skipped when kubectl is not installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controlplane.install.render import DEFAULT_MANIFESTS, load_base
from meshctl.cli import main as meshctl

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def dry_run(*flags: str) -> list[dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    code = meshctl(["install", "--dry-run", *flags], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return [doc for doc in yaml.safe_load_all(out.getvalue()) if doc]


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]): obj for obj in objects}


def validation_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} for {version}: {exc.message} at {list(exc.path)}")
    return errors


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


@needs_kubectl
def test_base_loader_matches_kubectl_kustomize():
    assert by_key(load_base()) == by_key(kustomize(DEFAULT_MANIFESTS / "base"))


def test_dry_run_objects_are_valid():
    objects = dry_run()

    assert len(objects) == 13
    assert validation_errors(objects) == []


def test_dry_run_with_every_value_is_valid():
    objects = dry_run(
        "--trust-domain", "example.org", "--cert-ttl", "12h", "--image", "registry.example/cp:2",
        "--replicas", "3", "--ca-source", "secret:corp-ca", "--webhook-failure-policy", "Ignore", "-n", "mesh",
    )

    assert validation_errors(objects) == []


def test_strict_validation_rejects_unknown_field():
    deployment = find(load_base(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullSecret"] = "typo"

    assert len(validation_errors([deployment])) == len(KUBERNETES_VERSIONS)


@needs_kubectl
@pytest.mark.parametrize("folder", ["base", "overlays/dev", "overlays/production"])
def test_kustomize_rendering_is_valid(folder):
    objects = kustomize(DEFAULT_MANIFESTS / folder)

    assert len(objects) >= 12
    assert validation_errors(objects) == []


@needs_kubectl
def test_dev_overlay_runs_one_debug_replica_and_ignores_webhook_failures():
    objects = kustomize(DEFAULT_MANIFESTS / "overlays/dev")
    deployment = find(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    assert deployment["spec"]["replicas"] == 1
    assert "--log-level=debug" in args
    assert "--log-level=info" not in args
    assert find(objects, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"] == "Ignore"
    assert "PodDisruptionBudget" not in [obj["kind"] for obj in objects]


@needs_kubectl
def test_production_overlay_runs_three_replicas_and_fails_closed():
    objects = kustomize(DEFAULT_MANIFESTS / "overlays/production")
    deployment = find(objects, "Deployment")

    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    assert find(objects, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"] == "Fail"
    assert find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_control_plane_runs_non_root_with_read_only_root():
    deployment = find(load_base(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "initContainers" not in pod
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_probes_use_admin_port_health_and_readiness():
    container = find(load_base(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert ports == {"grpc-xds": 15012, "grpc-bootstrap": 15013, "http-admin": 15014, "https-webhook": 15017}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}
