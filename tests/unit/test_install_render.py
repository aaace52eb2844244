"""Rendering the install objects: each value changes exactly the fields it owns."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controlplane.install.errors import InstallError
from controlplane.install.kinds import APPLY_ORDER
from controlplane.install.render import load_base, render, to_yaml
from controlplane.install.values import InstallValues, parse_ca_source


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return load_base()


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Map every leaf of `value` to its path, such as `spec.replicas` or `spec.args[3]`."""
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for name, child in value.items():
            leaves.update(flatten(child, f"{path}.{name}" if path else name))
        return leaves
    if isinstance(value, list):
        leaves = {}
        for index, child in enumerate(value):
            leaves.update(flatten(child, f"{path}[{index}]"))
        return leaves
    return {path: value}


def changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    """Return `KIND/NAME path -> (old, new)` for every leaf that differs between two renders."""
    old = {key(obj): flatten(obj) for obj in before}
    new = {key(obj): flatten(obj) for obj in after}
    assert old.keys() == new.keys()
    found = {}
    for object_key in old:
        for path in old[object_key].keys() | new[object_key].keys():
            if old[object_key].get(path) != new[object_key].get(path):
                found[f"{object_key[0]}/{object_key[2]} {path}"] = (old[object_key].get(path), new[object_key].get(path))
    return found


def mesh_document(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (configmap,) = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    return yaml.safe_load(configmap["data"]["mesh"])


def test_default_values_reproduce_the_base(base):
    rendered = render(base, InstallValues())

    assert sorted(map(key, rendered)) == sorted(map(key, base))
    assert {key(obj): obj for obj in rendered} == {key(obj): obj for obj in base}


def test_objects_come_in_dependency_order(base):
    kinds = [obj["kind"] for obj in render(base, InstallValues())]

    assert kinds[:2] == ["CustomResourceDefinition", "CustomResourceDefinition"]
    assert kinds[2] == "Namespace"
    assert kinds[-1] == "MutatingWebhookConfiguration"
    order = [kind.kind for kind in APPLY_ORDER]
    assert kinds == sorted(kinds, key=order.index)


def test_trust_domain_sets_mesh_setting_and_server_flag(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(trust_domain="example.org"))

    found = changes(before, after)
    assert set(found) == {"ConfigMap/idmesh data.mesh", "Deployment/idmesh-controlplane spec.template.spec.containers[0].args[3]"}
    assert found["Deployment/idmesh-controlplane spec.template.spec.containers[0].args[3]"][1] == "--trust-domain=example.org"
    assert mesh_document(after)["trustDomain"] == "example.org"
    assert {k: v for k, v in mesh_document(after).items() if k != "trustDomain"} == {
        k: v for k, v in mesh_document(before).items() if k != "trustDomain"
    }


def test_cert_ttl_sets_only_the_default_certificate_ttl(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(cert_ttl="12h"))

    assert set(changes(before, after)) == {"ConfigMap/idmesh data.mesh"}
    assert mesh_document(after)["defaultCertificateTTL"] == "12h"
    assert mesh_document(after)["maxCertificateTTL"] == mesh_document(before)["maxCertificateTTL"]


def test_cert_ttl_above_maximum_is_rejected(base):
    with pytest.raises(InstallError, match=r"defaultCertificateTTL: 200h is longer than maxCertificateTTL \(168h\)"):
        render(base, InstallValues(cert_ttl="200h"))


def test_cert_ttl_below_one_minute_is_rejected(base):
    with pytest.raises(InstallError, match="must be whole seconds and at least 1m"):
        render(base, InstallValues(cert_ttl="30s"))


def test_replicas_sets_only_the_deployment(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(replicas=5))

    assert changes(before, after) == {"Deployment/idmesh-controlplane spec.replicas": (2, 5)}


def test_single_replica_leaves_out_disruption_budget(base):
    rendered = render(base, InstallValues(replicas=1))

    assert "PodDisruptionBudget" not in [obj["kind"] for obj in rendered]
    assert len(rendered) == len(base) - 1


def test_image_sets_every_container_of_the_deployment(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(image="registry.example/idmesh/cp:1.2"))

    found = changes(before, after)
    assert set(found) == {
        "Deployment/idmesh-controlplane spec.template.spec.containers[0].image",
    }
    assert all(new == "registry.example/idmesh/cp:1.2" for _old, new in found.values())


def test_proxy_image_sets_only_the_proxy_image_flag(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(proxy_image="registry.example/idmesh/proxy:1.2"))

    assert changes(before, after) == {
        "Deployment/idmesh-controlplane spec.template.spec.containers[0].args[11]": (
            "--proxy-image=ghcr.io/idmesh/proxy:0.1.0",
            "--proxy-image=registry.example/idmesh/proxy:1.2",
        ),
    }


def test_proxy_image_flag_is_the_last_argument(base):
    (deployment,) = [obj for obj in base if obj["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    assert args[-1] == "--proxy-image=ghcr.io/idmesh/proxy:0.1.0"


def test_ca_secret_source_sets_the_ca_secret_flag(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(ca_source=parse_ca_source("secret:corp-ca")))

    found = changes(before, after)
    assert found.pop("Deployment/idmesh-controlplane spec.template.spec.containers[0].args[2]") == (
        "--ca-secret=idmesh-ca",
        "--ca-secret=corp-ca",
    )
    assert len(found) == 1
    [(path, (old, new))] = found.items()
    assert path.startswith("Role/idmesh-controlplane rules[")
    assert path.endswith("].resourceNames[0]")
    assert (old, new) == ("idmesh-ca", "corp-ca")


def test_webhook_failure_policy_and_ca_bundle(base):
    before = render(base, InstallValues())
    after = render(base, InstallValues(webhook_failure_policy="Ignore", ca_bundle="Y2VydA=="))

    assert changes(before, after) == {
        "MutatingWebhookConfiguration/idmesh-sidecar-injector webhooks[0].failurePolicy": ("Fail", "Ignore"),
        "MutatingWebhookConfiguration/idmesh-sidecar-injector webhooks[0].clientConfig.caBundle": (None, "Y2VydA=="),
    }


def test_namespace_moves_every_reference(base):
    rendered = render(base, InstallValues(namespace="mesh-root"))
    text = to_yaml(rendered)

    assert "idmesh-system" not in text
    namespaced = [obj for obj in rendered if "namespace" in obj["metadata"]]
    assert {obj["metadata"]["namespace"] for obj in namespaced} == {"mesh-root"}
    (namespace,) = [obj for obj in rendered if obj["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "mesh-root"
    (deployment,) = [obj for obj in rendered if obj["kind"] == "Deployment"]
    assert "--root-namespace=mesh-root" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_render_leaves_the_base_unchanged(base):
    snapshot = to_yaml(base)

    render(base, InstallValues(namespace="other", trust_domain="example.org", replicas=1, image="x/y:1"))

    assert to_yaml(base) == snapshot


def test_unknown_kind_in_manifests_is_rejected(base):
    extra = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "idmesh-system"}}

    with pytest.raises(InstallError, match=r"job/migrate has apiVersion 'batch/v1' and kind 'Job', which an install does not contain"):
        render([*base, extra], InstallValues())


def test_dry_run_yaml_round_trips(base):
    rendered = render(base, InstallValues(trust_domain="example.org"))

    assert list(yaml.safe_load_all(to_yaml(rendered))) == rendered
