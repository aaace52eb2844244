"""Apply `InstallValues` to the objects of manifests/base: a pure function of its inputs.

The base is written for namespace idmesh-system, trust domain cluster.local and the default
image. `render` changes exactly the fields each value owns and nothing else, so that
`render(base, InstallValues())` equals the base, apart from the apply order. The mesh
ConfigMap that results is checked with the control plane's own parser, so an install never
writes settings the control plane would reject.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from controlplane.install.errors import InstallError
from controlplane.install.kinds import apply_rank, kind_of, reference
from controlplane.install.kustomize import load_kustomization
from controlplane.install.values import InstallValues
from controlplane.model.meshconfig import CONFIGMAP_KEY, CONFIGMAP_NAME, parse_mesh_config
from controlplane.model.types import MeshConfig

CONTROL_PLANE = "idmesh-controlplane"
CONTAINER = "controlplane"
WEBHOOK = "idmesh-sidecar-injector"
# In a source checkout: <repository>/manifests, two levels above this package.
DEFAULT_MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def load_base(manifests: Path = DEFAULT_MANIFESTS) -> list[dict[str, Any]]:
    """Read the objects of `manifests/base`, CRDs included."""
    base = manifests / "base"
    if not base.is_dir():
        raise InstallError(
            f"the install manifests are not at {base}; pass --manifests with the manifests "
            "directory of an idmesh source checkout",
            path=str(base),
        )
    return load_kustomization(base)


def render(base: Iterable[dict[str, Any]], values: InstallValues) -> list[dict[str, Any]]:
    """Return copies of the `base` objects set to `values`, in apply order."""
    objects = [copy.deepcopy(obj) for obj in base]
    for obj in objects:
        kind_of(obj)
    old_namespace = _find(objects, "Namespace")["metadata"]["name"]

    _move_namespace(objects, old_namespace, values.namespace)
    deployment = _find(objects, "Deployment", CONTROL_PLANE)
    container = _container(deployment, CONTAINER)
    if values.trust_domain is not None:
        _set_flag(deployment, container, "--trust-domain", values.trust_domain)
        _set_mesh_setting(objects, "trustDomain", values.trust_domain)
    if values.cert_ttl is not None:
        _set_mesh_setting(objects, "defaultCertificateTTL", values.cert_ttl)
    if values.image is not None:
        pod = deployment["spec"]["template"]["spec"]
        for each in [*pod.get("initContainers", []), *pod["containers"]]:
            each["image"] = values.image
    if values.proxy_image is not None:
        _set_flag(deployment, container, "--proxy-image", values.proxy_image)
    if values.replicas is not None:
        deployment["spec"]["replicas"] = values.replicas
    if deployment["spec"].get("replicas", 1) < 2:
        # A budget of minAvailable 1 over a single replica blocks every node drain.
        objects = [obj for obj in objects if obj["kind"] != "PodDisruptionBudget"]
    _set_flag(deployment, container, "--ca-secret", values.ca_source.secret_name)
    _grant_ca_secret(_find(objects, "Role", CONTROL_PLANE), values.ca_source.secret_name)
    webhooks = _find(objects, "MutatingWebhookConfiguration", WEBHOOK)["webhooks"]
    for webhook in webhooks:
        if values.webhook_failure_policy is not None:
            webhook["failurePolicy"] = values.webhook_failure_policy
        if values.ca_bundle is not None:
            webhook["clientConfig"]["caBundle"] = values.ca_bundle

    _check_mesh_config(objects)
    return sorted(objects, key=apply_rank)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the mesh settings, scripts) as `|` blocks, as they are written by hand."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _represent_str)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """Dump `objects` as one multi-document YAML stream, keys in their written order."""
    return yaml.dump_all(list(objects), Dumper=_BlockDumper, sort_keys=False, explicit_start=True)


def _find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name):
            return obj
    wanted = f"{kind.lower()}/{name}" if name else f"a {kind}"
    raise InstallError(f"the install manifests contain no {wanted}", object=wanted)


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container["name"] == name:
            return container
    raise InstallError(f"{reference(deployment)} has no container {name!r}", object=reference(deployment))


def _grant_ca_secret(role: dict[str, Any], secret_name: str) -> None:
    """Point the Role's rule for the CA Secret at `secret_name`; the control plane reads it through the API."""
    rules = [rule for rule in role.get("rules", []) if rule.get("resources") == ["secrets"] and rule.get("resourceNames")]
    if len(rules) != 1:
        raise InstallError(f"{reference(role)} must have exactly one rule for the CA Secret by name", object=reference(role))
    rules[0]["resourceNames"] = [secret_name]


def _set_flag(deployment: dict[str, Any], container: dict[str, Any], flag: str, value: str) -> None:
    """Replace the argument `FLAG=VALUE`; the manifests write every flag in that one-token form."""
    args = container.get("args", [])
    for index, arg in enumerate(args):
        if arg.startswith(f"{flag}="):
            args[index] = f"{flag}={value}"
            return
    raise InstallError(
        f"{reference(deployment)} container {container['name']!r} has no argument {flag}=VALUE",
        object=reference(deployment),
    )


def _move_namespace(objects: list[dict[str, Any]], old: str, new: str) -> None:
    """Put every object, and every reference to the namespace, into `new`."""
    deployment = _find(objects, "Deployment", CONTROL_PLANE)
    _set_flag(deployment, _container(deployment, CONTAINER), "--root-namespace", new)
    for obj in objects:
        metadata = obj["metadata"]
        if obj["kind"] == "Namespace" and metadata["name"] == old:
            metadata["name"] = new
        if metadata.get("namespace") == old:
            metadata["namespace"] = new
        for subject in obj.get("subjects", []):
            if subject.get("namespace") == old:
                subject["namespace"] = new
        for webhook in obj.get("webhooks", []):
            service = webhook.get("clientConfig", {}).get("service", {})
            if service.get("namespace") == old:
                service["namespace"] = new


def _mesh_configmap(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _find(objects, "ConfigMap", CONFIGMAP_NAME)


def _set_mesh_setting(objects: list[dict[str, Any]], key: str, value: Any) -> None:
    configmap = _mesh_configmap(objects)
    document = yaml.safe_load(configmap["data"][CONFIGMAP_KEY]) or {}
    document[key] = value
    configmap["data"][CONFIGMAP_KEY] = yaml.safe_dump(document, sort_keys=False)


def _check_mesh_config(objects: list[dict[str, Any]]) -> None:
    configmap = _mesh_configmap(objects)
    _config, errors = parse_mesh_config(configmap, base=MeshConfig())
    if errors:
        problems = "; ".join(str(error) for error in errors)
        raise InstallError(f"the mesh settings would be invalid: {problems}", object=reference(configmap))


def mesh_settings(objects: list[dict[str, Any]]) -> MeshConfig:
    """Return the settings of the rendered mesh ConfigMap, as the control plane would read them."""
    config, _errors = parse_mesh_config(_mesh_configmap(objects), base=MeshConfig())
    return config
