"""The control plane's RBAC grants what it needs and no more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.install.render import load_base
from controlplane.model.policy import POLICY_GROUPS

READ = ["get", "list", "watch"]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return load_base()


def rules(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    (role,) = [obj for obj in objects if obj["kind"] == kind]
    return role["rules"]


def grants(rule_list: list[dict[str, Any]], group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    return [
        rule for rule in rule_list
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
    ]


def test_no_wildcards(objects):
    for kind in ("ClusterRole", "Role"):
        for rule in rules(objects, kind):
            assert "*" not in rule["verbs"]
            assert "*" not in rule["resources"]
            assert "*" not in rule["apiGroups"]


@pytest.mark.parametrize("group,resource", [
    ("", "namespaces"), ("", "pods"), ("", "services"), ("", "serviceaccounts"), ("", "configmaps"),
    ("discovery.k8s.io", "endpointslices"),
    ("security.idmesh.io", "authorizationpolicies"), ("security.idmesh.io", "peerauthentications"),
])
def test_cluster_role_reads_mesh_inputs(objects, group, resource):
    for verb in READ:
        assert grants(rules(objects, "ClusterRole"), group, resource, verb)


def test_secrets_are_only_granted_in_root_namespace(objects):
    assert not [rule for rule in rules(objects, "ClusterRole") if "secrets" in rule["resources"]]
    (read,) = grants(rules(objects, "Role"), "", "secrets", "get")
    assert read["resourceNames"] == ["idmesh-ca"]
    assert not grants(rules(objects, "Role"), "", "secrets", "list")
    assert not grants(rules(objects, "Role"), "", "secrets", "watch")


def test_configmap_changes_are_limited_to_root_cert(objects):
    for verb in ("update", "patch"):
        (rule,) = grants(rules(objects, "ClusterRole"), "", "configmaps", verb)
        assert rule["resourceNames"] == ["idmesh-root-cert"]
    assert not grants(rules(objects, "ClusterRole"), "", "configmaps", "delete")


def test_leases_are_named_and_namespaced(objects):
    assert not [rule for rule in rules(objects, "ClusterRole") if "leases" in rule["resources"]]
    for verb in ("get", "update", "patch"):
        (rule,) = grants(rules(objects, "Role"), "coordination.k8s.io", "leases", verb)
        assert rule["resourceNames"] == ["idmesh-controlplane"]


def test_webhook_patch_is_limited_to_the_injector(objects):
    (rule,) = grants(rules(objects, "ClusterRole"), "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch")
    assert rule["resourceNames"] == ["idmesh-sidecar-injector"]
    assert not grants(rules(objects, "ClusterRole"), "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "list")


@pytest.mark.parametrize("group", POLICY_GROUPS)
@pytest.mark.parametrize("resource", ["authorizationpolicies/status", "peerauthentications/status"])
def test_status_patch_allowed_for_every_policy_group(objects, group, resource):
    assert grants(rules(objects, "ClusterRole"), group, resource, "patch")


def test_status_writes_only_for_policy_groups(objects):
    status_rules = [rule for rule in rules(objects, "ClusterRole") if any(r.endswith("/status") for r in rule["resources"])]

    assert [rule["apiGroups"] for rule in status_rules] == [list(POLICY_GROUPS)]


@pytest.mark.parametrize("verb", ["update", "patch", "delete"])
def test_ca_secret_is_never_changed(objects, verb):
    assert not grants(rules(objects, "Role"), "", "secrets", verb)


def test_bindings_name_the_control_plane_service_account(objects):
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (binding,) = [obj for obj in objects if obj["kind"] == kind]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "idmesh-controlplane", "namespace": "idmesh-system"}
        ]


RBAC_DOC = Path(__file__).resolve().parents[2] / "docs" / "kubernetes-controlplane.md"


def words(cell: str) -> tuple[str, ...]:
    """Split a table cell into its sorted comma-separated words without backquotes; `""` is the core group."""
    return tuple(sorted(part.strip().strip("`").replace('""', "") for part in cell.split(",") if part.strip()))


def documented_rules() -> set[tuple[Any, ...]]:
    text = RBAC_DOC.read_text()
    section = text[text.index("## RBAC\n"):text.index("\n## ", text.index("## RBAC\n") + 1)]
    rows = [line for line in section.splitlines() if line.startswith(("| ClusterRole |", "| Role |"))]
    found = set()
    for row in rows:
        kind, groups, resources, names, verbs, _used_by = [cell.strip() for cell in row.strip("|").split("|")]
        found.add((kind, words(groups), words(resources), words(names), words(verbs)))
    return found


def test_rbac_doc_lists_exactly_the_manifest_rules(objects):
    manifest = set()
    for kind in ("ClusterRole", "Role"):
        for rule in rules(objects, kind):
            manifest.add((kind, tuple(sorted(rule["apiGroups"])), tuple(sorted(rule["resources"])),
                          tuple(sorted(rule.get("resourceNames", []))), tuple(sorted(rule["verbs"]))))

    assert documented_rules() == manifest
