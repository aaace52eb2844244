"""`meshctl install` and `meshctl uninstall` against the API emulator, through a kubeconfig and the
official client: every object is created and read back, a second install changes nothing,
uninstall removes what it should, and the wait for the control plane has a timeout.

The emulator runs no controllers, so a Deployment never becomes ready by itself: the wait tests
write `status.readyReplicas` the way the Deployment controller would.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from controlplane.install.render import load_base, render
from controlplane.install.values import InstallValues
from meshctl.cli import main as meshctl
from tests.kubernetes.conftest import ApiServer, Kube, wait_until


@pytest.fixture()
def kubeconfig(api_server: ApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": api_server.url}}],
        "users": [{"name": "admin", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "admin"}}],
        "current-context": "emulator",
    }))
    return path


async def run_meshctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(meshctl, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


READERS = {
    "CustomResourceDefinition": ("ApiextensionsV1Api", "read_custom_resource_definition"),
    "Namespace": ("CoreV1Api", "read_namespace"),
    "ServiceAccount": ("CoreV1Api", "read_namespaced_service_account"),
    "ClusterRole": ("RbacAuthorizationV1Api", "read_cluster_role"),
    "ClusterRoleBinding": ("RbacAuthorizationV1Api", "read_cluster_role_binding"),
    "Role": ("RbacAuthorizationV1Api", "read_namespaced_role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "read_namespaced_role_binding"),
    "ConfigMap": ("CoreV1Api", "read_namespaced_config_map"),
    "Secret": ("CoreV1Api", "read_namespaced_secret"),
    "Service": ("CoreV1Api", "read_namespaced_service"),
    "Deployment": ("AppsV1Api", "read_namespaced_deployment"),
    "PodDisruptionBudget": ("PolicyV1Api", "read_namespaced_pod_disruption_budget"),
    "MutatingWebhookConfiguration": ("AdmissionregistrationV1Api", "read_mutating_webhook_configuration"),
}


async def read(kube: Kube, obj: dict[str, Any]) -> dict[str, Any] | None:
    """GET the object with the client's generated read method; None when the API returns 404."""
    api_class, method = READERS[obj["kind"]]
    reader = getattr(getattr(kubernetes.client, api_class)(kube.api_client), method)
    args = [obj["metadata"]["name"]]
    if "namespace" in obj["metadata"]:
        args.append(obj["metadata"]["namespace"])

    def get() -> dict[str, Any] | None:
        try:
            response = reader(*args, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(response.data)

    return await kube(get)


async def read_all(kube: Kube, objects: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    return {f"{obj['kind']}/{obj['metadata']['name']}": await read(kube, obj) for obj in objects}


def ca_secret_probe(namespace: str = "idmesh-system", name: str = "idmesh-ca") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}}


async def set_ready_replicas(kube: Kube, namespace: str, name: str, ready: int) -> None:
    apps = kubernetes.client.AppsV1Api(kube.api_client)
    await kube(apps.patch_namespaced_deployment_status, name, namespace, {"status": {"readyReplicas": ready}},
               _preload_content=False)


def installed(**values: Any) -> list[dict[str, Any]]:
    return render(load_base(), InstallValues(**values))


async def test_install_creates_every_object(kube, kubeconfig):
    code, out, err = await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    assert out == ""
    expected = installed()
    found = await read_all(kube, expected)
    assert [name for name, obj in found.items() if obj is None] == []
    for obj in expected:
        live = found[f"{obj['kind']}/{obj['metadata']['name']}"]
        for webhook in live.get("webhooks", []):
            del webhook["clientConfig"]["caBundle"]
        for field in ("spec", "data", "rules", "subjects", "roleRef", "webhooks"):
            assert live.get(field) == obj.get(field), f"{obj['kind']}/{obj['metadata']['name']} {field}"
        assert live["metadata"]["labels"] == obj["metadata"].get("labels")
    assert err.splitlines()[0] == "customresourcedefinition/authorizationpolicies.security.idmesh.io created"
    assert err.splitlines()[-1] == "mutatingwebhookconfiguration/idmesh-sidecar-injector created"


async def test_install_generates_ca_secret_and_webhook_ca_bundle(kube, kubeconfig):
    code, _out, err = await run_meshctl("install", "--no-wait", "--trust-domain", "example.org",
                                        "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    secret = await read(kube, ca_secret_probe())
    assert yaml.safe_load(base64.b64decode(secret["data"]["ca.yaml"]))["trust_domain"] == "example.org"
    root_pem = base64.b64decode(secret["data"]["root-cert.pem"])
    assert root_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    webhook = await read(kube, installed()[-1])
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["root-cert.pem"]
    assert "secret/idmesh-ca created (a new CA for trust domain example.org)" in err.splitlines()


async def test_second_install_changes_nothing(kube, kubeconfig):
    first = await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))
    expected = installed()
    before = await read_all(kube, [*expected, ca_secret_probe()])

    code, _out, err = await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    assert first[0] == 0, first[2]
    assert code == 0, err
    assert [line for line in err.splitlines() if not line.endswith(" unchanged")] == []
    after = await read_all(kube, [*expected, ca_secret_probe()])
    versions = {name: obj["metadata"]["resourceVersion"] for name, obj in after.items()}
    assert versions == {name: obj["metadata"]["resourceVersion"] for name, obj in before.items()}
    assert after["Secret/idmesh-ca"]["data"] == before["Secret/idmesh-ca"]["data"]


async def test_changed_value_updates_only_its_objects(kube, kubeconfig):
    await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    code, _out, err = await run_meshctl("install", "--no-wait", "--replicas", "3", "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    assert [line for line in err.splitlines() if not line.endswith(" unchanged")] == [
        "deployment/idmesh-controlplane configured"
    ]
    deployment = await read(kube, installed()[-3])
    assert deployment["spec"]["replicas"] == 3


async def test_uninstall_keeps_crds_namespace_and_ca(kube, kubeconfig):
    await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    code, _out, err = await run_meshctl("uninstall", "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    found = await read_all(kube, [*installed(), ca_secret_probe()])
    kept = sorted(name for name, obj in found.items() if obj is not None)
    assert kept == [
        "CustomResourceDefinition/authorizationpolicies.security.idmesh.io",
        "CustomResourceDefinition/peerauthentications.security.idmesh.io",
        "Namespace/idmesh-system",
        "Secret/idmesh-ca",
    ]
    assert err.splitlines()[0] == "mutatingwebhookconfiguration/idmesh-sidecar-injector deleted"


async def test_uninstall_purge_removes_everything(kube, kubeconfig):
    await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    code, _out, err = await run_meshctl("uninstall", "--purge", "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    found = await read_all(kube, [*installed(), ca_secret_probe()])
    assert sorted(name for name, obj in found.items() if obj is not None) == []


async def test_uninstall_of_nothing_reports_not_found(kubeconfig):
    code, _out, err = await run_meshctl("uninstall", "--kubeconfig", str(kubeconfig))

    assert code == 0, err
    assert all(line.endswith(" not found") for line in err.splitlines())


async def test_install_waits_for_ready_replicas_before_webhook(kube, kubeconfig):
    task = asyncio.create_task(run_meshctl("install", "--timeout", "20s", "--kubeconfig", str(kubeconfig)))
    deployment = installed()[-3]
    webhook = installed()[-1]

    async def deployment_exists() -> bool:
        return await read(kube, deployment) is not None

    for _attempt in range(200):
        if await deployment_exists() or task.done():
            break
        await asyncio.sleep(0.05)
    assert await read(kube, webhook) is None
    await set_ready_replicas(kube, "idmesh-system", "idmesh-controlplane", 2)
    code, _out, err = await asyncio.wait_for(task, 30)

    assert code == 0, err
    assert "deployment/idmesh-controlplane ready: 2/2 replicas" in err.splitlines()
    assert await read(kube, webhook) is not None


async def test_install_wait_times_out_without_webhook(kube, kubeconfig):
    code, _out, err = await run_meshctl("install", "--timeout", "1s", "--kubeconfig", str(kubeconfig))

    assert code == 1
    assert err.splitlines()[-1].startswith(
        "meshctl install: error: deployment/idmesh-controlplane in namespace idmesh-system is not ready after 1 s: "
        "0 of 2 replicas ready"
    )
    assert await read(kube, installed()[-1]) is None


async def test_missing_named_ca_secret_is_reported(kube, kubeconfig):
    code, _out, err = await run_meshctl("install", "--no-wait", "--ca-source", "secret:corp-ca",
                                        "--kubeconfig", str(kubeconfig))

    assert code == 1
    assert "Secret corp-ca not found in namespace idmesh-system. Create it from a CA directory" in err
    assert await read(kube, installed()[-3]) is None


async def test_existing_ca_for_other_trust_domain_is_rejected(kube, kubeconfig):
    await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    code, _out, err = await run_meshctl("install", "--no-wait", "--trust-domain", "example.org",
                                        "--kubeconfig", str(kubeconfig))

    assert code == 1
    assert ("secret/idmesh-ca contains a CA for trust domain 'cluster.local', but the install is for 'example.org'"
            in err)


async def test_ca_for_other_trust_domain_leaves_settings_unchanged(kube, kubeconfig):
    await run_meshctl("install", "--no-wait", "--trust-domain", "example.org", "--kubeconfig", str(kubeconfig))
    (configmap,) = [obj for obj in installed() if obj["kind"] == "ConfigMap"]
    before = await read(kube, configmap)

    code, _out, err = await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    assert code == 1
    assert err.splitlines() == [
        "meshctl install: error: secret/idmesh-ca contains a CA for trust domain "
        "'example.org', but the install is for 'cluster.local'; pass --trust-domain example.org or use another "
        "CA Secret"
    ]
    after = await read(kube, configmap)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert yaml.safe_load(after["data"]["mesh"])["trustDomain"] == "example.org"


async def test_unreachable_api_server_is_reported(api_server, kubeconfig):
    await api_server.stop()

    code, _out, err = await run_meshctl("install", "--no-wait", "--kubeconfig", str(kubeconfig))

    assert code == 1
    assert "meshctl install: error: GET /api/v1/namespaces/idmesh-system/secrets/idmesh-ca failed" in err
    assert "the API server is unreachable" in err
