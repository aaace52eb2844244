"""Which workloads a Service or a policy selects, and which container port a Service port reaches."""

from __future__ import annotations

from typing import Mapping

from controlplane.model.types import Service, ServicePort, Workload


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every selector label is present with the same value (an empty selector matches)."""
    return all(labels.get(key) == value for key, value in selector.items())


def service_selects(service: Service, workload: Workload) -> bool:
    """True when `service` sends traffic to `workload`; a Service without a selector selects none."""
    return (
        bool(service.selector)
        and service.namespace == workload.namespace
        and labels_match(service.selector, workload.labels)
    )


def policy_selects(
    *, namespace: str, selector: Mapping[str, str] | None, workload: Workload, root_namespace: str
) -> bool:
    """True when a policy in `namespace` with `selector` applies to `workload`.

    A policy in the root namespace applies to matching workloads in every namespace, as in Istio.
    """
    if namespace != root_namespace and namespace != workload.namespace:
        return False
    return selector is None or labels_match(selector, workload.labels)


def target_port_for(port: ServicePort, workload: Workload) -> int | None:
    """Return the container port that `port` reaches on `workload`, or None for an unknown name.

    A numeric targetPort is used as is, even when no container declares it, as in Kubernetes.
    """
    if isinstance(port.target_port, int):
        return port.target_port
    for container_port in workload.ports:
        if container_port.name == port.target_port and container_port.protocol == port.protocol:
            return container_port.port
    return None
