"""Namespaces, ServiceAccounts, and workloads from Pods and Deployments.

A Pod is one workload. In local mode a Deployment's pod template stands in for its pods as one
workload of kind "Deployment"; replicas are not modelled. Only the fields the mesh reads are
checked here: the API server validates the rest of a pod spec.
"""

from __future__ import annotations

from typing import Any, Mapping

from controlplane.errors import ValidationError
from controlplane.injector.decision import STATUS_ANNOTATION, injection_decision
from controlplane.model import names
from controlplane.model.fields import (
    ObjectErrors,
    as_bool,
    as_list,
    as_mapping,
    as_port_number,
    as_str,
    child,
    item,
    show,
)
from controlplane.model.metadata import Metadata, read_labels, read_metadata
from controlplane.model.types import ContainerPort, Namespace, ServiceAccount, Workload, frozen_map

PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")


def parse_namespace(obj: Mapping[str, Any]) -> tuple[Namespace | None, list[ValidationError]]:
    errors = ObjectErrors("Namespace")
    meta = read_metadata(obj, errors, namespaced=False, name_rule=names.dns1123_label)
    if meta is None or errors:
        return None, errors.errors
    return Namespace(name=meta.name, labels=frozen_map(meta.labels)), errors.errors


def parse_service_account(obj: Mapping[str, Any]) -> tuple[ServiceAccount | None, list[ValidationError]]:
    errors = ObjectErrors("ServiceAccount")
    meta = read_metadata(obj, errors)
    if meta is None or errors:
        return None, errors.errors
    return ServiceAccount(namespace=meta.namespace, name=meta.name), errors.errors


def parse_pod(
    obj: Mapping[str, Any], *, namespace_labels: Mapping[str, Mapping[str, str]]
) -> tuple[Workload | None, list[ValidationError]]:
    """Parse a Pod; `namespace_labels` maps namespace names to their labels."""
    errors = ObjectErrors("Pod")
    meta = read_metadata(obj, errors)
    if meta is None:
        return None, errors.errors
    spec = as_mapping(obj.get("spec", {}), "spec", errors) or {}
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    ip = status.get("podIP") if isinstance(status.get("podIP"), str) and status.get("podIP") else None
    workload = _workload(meta, spec, "spec", errors, kind="Pod", ip=ip, namespace_labels=namespace_labels)
    if errors:
        return None, errors.errors
    return workload, errors.errors


def parse_deployment(
    obj: Mapping[str, Any], *, namespace_labels: Mapping[str, Mapping[str, str]]
) -> tuple[Workload | None, list[ValidationError]]:
    """Parse a Deployment's pod template as one workload (local mode)."""
    errors = ObjectErrors("Deployment")
    meta = read_metadata(obj, errors)
    if meta is None:
        return None, errors.errors
    spec = as_mapping(obj.get("spec"), "spec", errors) or {}
    template = as_mapping(spec.get("template"), "spec.template", errors) or {}
    template_meta = as_mapping(template.get("metadata", {}), "spec.template.metadata", errors) or {}
    labels = read_labels(template_meta.get("labels", {}), errors, "spec.template.metadata.labels")
    annotations = template_meta.get("annotations", {})
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        errors.add("spec.template.metadata.annotations", "must be an object of strings", annotations)
        annotations = {}
    pod_meta = Metadata(name=meta.name, namespace=meta.namespace, labels=labels, annotations=annotations, uid=meta.uid)
    pod_spec = as_mapping(template.get("spec"), "spec.template.spec", errors) or {}
    workload = _workload(
        pod_meta, pod_spec, "spec.template.spec", errors, kind="Deployment", ip=None, namespace_labels=namespace_labels
    )
    if errors:
        return None, errors.errors
    return workload, errors.errors


def _workload(
    meta: Metadata,
    spec: Mapping[str, Any],
    path: str,
    errors: ObjectErrors,
    *,
    kind: str,
    ip: str | None,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> Workload:
    service_account = spec.get("serviceAccountName", spec.get("serviceAccount", "default"))
    service_account_path = child(path, "serviceAccountName")
    if as_str(service_account, service_account_path, errors) is None:
        service_account = "default"
    elif problem := names.dns1123_subdomain(service_account):
        errors.add(service_account_path, f"{show(service_account)} is not a ServiceAccount name: it {problem}", service_account)
    host_network = spec.get("hostNetwork", False)
    if as_bool(host_network, child(path, "hostNetwork"), errors) is None:
        host_network = False
    node_name = spec.get("nodeName", "")
    node_name = node_name if isinstance(node_name, str) else ""

    decision = injection_decision(
        namespace_labels=namespace_labels.get(meta.namespace, {}),
        pod_annotations=meta.annotations,
        host_network=host_network,
        owner_kind=kind,
    )
    # A pod the webhook already injected runs a sidecar whatever the labels say now.
    injected = decision.inject or (kind == "Pod" and STATUS_ANNOTATION in meta.annotations and not host_network)
    return Workload(
        namespace=meta.namespace,
        name=meta.name,
        service_account=service_account,
        labels=frozen_map(meta.labels),
        annotations=frozen_map(meta.annotations),
        ports=_container_ports(spec, path, errors),
        ip=ip,
        node_name=node_name,
        host_network=host_network,
        injected=injected,
        kind=kind,
        uid=meta.uid,
    )


def _container_ports(spec: Mapping[str, Any], path: str, errors: ObjectErrors) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    containers_path = child(path, "containers")
    for index, container in enumerate(as_list(spec.get("containers", []), containers_path, errors) or ()):
        container_path = item(containers_path, index)
        container = as_mapping(container, container_path, errors)
        if container is None or "ports" not in container:
            continue
        ports_path = child(container_path, "ports")
        for port_index, port in enumerate(as_list(container["ports"], ports_path, errors) or ()):
            parsed = _container_port(port, item(ports_path, port_index), errors)
            if parsed is not None:
                ports.append(parsed)
    return tuple(ports)


def _container_port(value: Any, path: str, errors: ObjectErrors) -> ContainerPort | None:
    port = as_mapping(value, path, errors)
    if port is None:
        return None
    number = as_port_number(port.get("containerPort"), child(path, "containerPort"), errors)
    name = port.get("name", "")
    if name != "" and (as_str(name, child(path, "name"), errors) is None):
        return None
    if name and (problem := names.iana_service_name(name)):
        errors.add(child(path, "name"), f"{show(name)} is not a port name: it {problem}", name)
    protocol = port.get("protocol", "TCP")
    if protocol not in PORT_PROTOCOLS:
        errors.add(child(path, "protocol"), f"{show(protocol)} is not a protocol; use one of {', '.join(PORT_PROTOCOLS)}", protocol)
        return None
    if number is None:
        return None
    return ContainerPort(port=number, name=name, protocol=protocol)
