"""The leader's duties in `controlplane serve --source kubernetes`: CA Secret, root ConfigMaps, policy status."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes

from controlplane.kube.leader import LEASE_NAME
from controlplane.kube.root_configmap import ROOT_CERT_KEY, ROOT_CONFIGMAP_NAME
from tests.kubernetes.conftest import Kube
from tests.kubernetes.k8s_extras import api_server  # noqa: F401 - fixture
from tests.kubernetes.test_serve_kubernetes_harness import (  # noqa: F401 - fixtures
    CA_SECRET,
    POLICY_GROUP,
    POLICY_VERSION,
    ROOT_NAMESPACE,
    control_plane,
    create_policy,
    eventually,
    read_json,
    serve_overrides,
)

NAMESPACE = "orders"


async def read_lease(kube: Kube) -> dict[str, Any] | None:
    coordination = kubernetes.client.CoordinationV1Api(kube.api_client)
    return await read_json(kube, coordination.read_namespaced_lease, LEASE_NAME, ROOT_NAMESPACE)


async def accepted_condition(kube: Kube, name: str) -> dict[str, Any] | None:
    obj = await read_json(kube, kube.custom.get_namespaced_custom_object, POLICY_GROUP, POLICY_VERSION, NAMESPACE,
                          "authorizationpolicies", name)
    for condition in ((obj or {}).get("status") or {}).get("conditions", []):
        if condition["type"] == "Accepted":
            return condition
    return None


async def test_first_replica_creates_ca_secret(control_plane, kube):
    secret = await read_json(kube, kube.core.read_namespaced_secret, CA_SECRET, ROOT_NAMESPACE)
    lease = await read_lease(kube)

    assert control_plane.kubernetes.elector.is_leader
    assert lease["spec"]["holderIdentity"] == control_plane.kubernetes.elector.identity
    stored_root = base64.b64decode(secret["data"]["root-cert.pem"]).decode()
    assert stored_root == control_plane.ca.trust_bundle().to_pem()


async def test_new_namespace_gets_root_configmap(control_plane, kube):
    await kube(kube.core.create_namespace, {"metadata": {"name": NAMESPACE}})

    configmap = await eventually(
        lambda: read_json(kube, kube.core.read_namespaced_config_map, ROOT_CONFIGMAP_NAME, NAMESPACE),
        what=f"ConfigMap {NAMESPACE}/{ROOT_CONFIGMAP_NAME}",
    )

    assert configmap["data"] == {ROOT_CERT_KEY: control_plane.ca.trust_bundle().to_pem()}


async def test_invalid_policy_gets_accepted_false(control_plane, kube):
    await kube(kube.core.create_namespace, {"metadata": {"name": NAMESPACE}})
    await create_policy(kube, NAMESPACE, "lowercase-method", {
        "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["get"]}}]}],
    })

    condition = await eventually(lambda: accepted_condition(kube, "lowercase-method"), what="the Accepted condition")

    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "spec.rules[0].to[0].operation.methods[0]" in condition["message"]


async def test_untranslatable_policy_gets_translation_failed(control_plane, kube):
    await kube(kube.core.create_namespace, {"metadata": {"name": NAMESPACE}})
    await create_policy(kube, NAMESPACE, "path-template", {
        "action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/orders/{id}"]}}]}],
    })

    condition = await eventually(lambda: accepted_condition(kube, "path-template"), what="the Accepted condition")

    assert (condition["status"], condition["reason"]) == ("False", "TranslationFailed")
    assert condition["message"] == (
        "AuthorizationPolicy orders/path-template: spec.rules[0].to[0].operation.paths[0]: path '/orders/{id}' "
        'uses a path template, which idmesh does not support; use an exact path, "prefix*", "*suffix" or "*"; '
        "the policy fails closed: every request to the workloads it selects is denied"
    )


async def test_valid_policy_gets_accepted_true(control_plane, kube):
    await kube(kube.core.create_namespace, {"metadata": {"name": NAMESPACE}})
    await create_policy(kube, NAMESPACE, "get-only", {
        "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
    })

    condition = await eventually(lambda: accepted_condition(kube, "get-only"), what="the Accepted condition")

    assert (condition["status"], condition["reason"]) == ("True", "Accepted")


async def test_stop_releases_the_lease(control_plane, kube):
    await control_plane.kubernetes.stop()

    lease = await read_lease(kube)

    assert lease["spec"].get("holderIdentity") is None
