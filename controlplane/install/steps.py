"""The order of an install and an uninstall, on top of the requests in `cluster`.

An install applies the CRDs, the Namespace, RBAC and the mesh ConfigMap first. Then it makes
sure the CA Secret exists, which needs its Namespace. The workloads follow, with the webhook's
caBundle taken from that Secret. After the wait for the Deployment, the webhook comes last: with
failurePolicy Fail, a failed install then never leaves a webhook that blocks pod creation.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from controlplane.install.cluster import (
    Cluster,
    Progress,
    apply_objects,
    ca_secret,
    check_existing_ca_secret,
    delete_objects,
    ensure_ca_secret,
    wait_for_rollout,
)
from controlplane.install.kinds import apply_rank, kind_of
from controlplane.install.render import CONTROL_PLANE, mesh_settings, render
from controlplane.install.values import GENERATED_CA_SECRET, InstallValues

# Applied before the CA Secret, which needs its Namespace.
FOUNDATION_KINDS = (
    "CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
    "RoleBinding", "ConfigMap",
)
# Kept by an uninstall unless it purges: removing them deletes every policy, or the mesh's roots.
KEPT_KINDS = ("CustomResourceDefinition", "Namespace")


def _is(obj: dict[str, Any], *kinds: str) -> bool:
    return kind_of(obj).kind in kinds


def install(
    cluster: Cluster,
    base: list[dict[str, Any]],
    values: InstallValues,
    *,
    wait: bool,
    timeout: float,
    now: datetime,
    progress: Progress,
) -> None:
    """Apply the rendered objects in dependency order and, with `wait`, wait for the rollout."""
    objects = render(base, values)
    trust_domain = mesh_settings(objects).trust_domain
    # Checked before anything is applied: a reinstall that names another trust domain than the
    # existing CA would otherwise rewrite the mesh settings before it stops.
    check_existing_ca_secret(cluster, namespace=values.namespace, source=values.ca_source, trust_domain=trust_domain)
    apply_objects(cluster, [obj for obj in objects if _is(obj, *FOUNDATION_KINDS)], progress)

    bundle = ensure_ca_secret(
        cluster,
        namespace=values.namespace,
        source=values.ca_source,
        trust_domain=trust_domain,
        now=now,
        progress=progress,
    )
    objects = render(base, dataclasses.replace(values, ca_bundle=bundle))
    workloads = [obj for obj in objects if not _is(obj, *FOUNDATION_KINDS, "MutatingWebhookConfiguration")]
    apply_objects(cluster, workloads, progress)

    if wait:
        deployment = next(obj for obj in workloads if _is(obj, "Deployment") and obj["metadata"]["name"] == CONTROL_PLANE)
        wait_for_rollout(cluster, deployment, timeout=timeout, progress=progress)
    apply_objects(cluster, [obj for obj in objects if _is(obj, "MutatingWebhookConfiguration")], progress)


def uninstall_objects(base: list[dict[str, Any]], namespace: str, *, purge: bool) -> list[dict[str, Any]]:
    """Return the objects an uninstall deletes, in apply order (they are deleted in reverse).

    Without `purge`, the CRDs (and so every policy), the Namespace and the CA Secret stay.
    """
    objects = render(base, InstallValues(namespace=namespace))
    if not purge:
        return [obj for obj in objects if not _is(obj, *KEPT_KINDS)]
    secret = ca_secret(namespace, GENERATED_CA_SECRET, {})
    del secret["data"]
    return sorted([*objects, secret], key=apply_rank)


def uninstall(cluster: Cluster, base: list[dict[str, Any]], namespace: str, *, purge: bool, progress: Progress) -> None:
    delete_objects(cluster, uninstall_objects(base, namespace, purge=purge), progress)
