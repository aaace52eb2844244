"""Which AuthorizationPolicies apply to a workload."""

from __future__ import annotations

from types import MappingProxyType

from controlplane.model.types import AuthorizationPolicy, MeshConfig, MeshState
from controlplane.translate.rbac import policies_for_workload

CONFIG = MeshConfig(root_namespace="idmesh-system")


def select(*policies: AuthorizationPolicy, namespace: str = "ledger", labels=None):
    state = MeshState(config=CONFIG, authorization_policies=policies)
    chosen = policies_for_workload(state, namespace=namespace, labels=labels or {"app": "ledger", "tier": "db"})
    return [(p.namespace, p.name) for p in chosen]


def test_policy_without_selector_selects_its_namespace():
    assert select(AuthorizationPolicy("ledger", "all")) == [("ledger", "all")]


def test_empty_selector_selects_every_workload():
    assert select(AuthorizationPolicy("ledger", "all", selector=MappingProxyType({}))) == [("ledger", "all")]


def test_selector_needs_every_label():
    matching = AuthorizationPolicy("ledger", "db", selector={"app": "ledger", "tier": "db"})
    partial = AuthorizationPolicy("ledger", "web", selector={"app": "ledger", "tier": "web"})
    assert select(matching, partial) == [("ledger", "db")]


def test_policies_of_other_namespaces_do_not_apply():
    assert select(AuthorizationPolicy("shop", "all")) == []


def test_root_namespace_selector_applies_in_every_namespace():
    mesh_db = AuthorizationPolicy("idmesh-system", "mesh-db", selector={"tier": "db"})
    mesh_web = AuthorizationPolicy("idmesh-system", "mesh-web", selector={"tier": "web"})
    assert select(mesh_db, mesh_web) == [("idmesh-system", "mesh-db")]


def test_order_is_root_namespace_first_then_by_name():
    policies = (
        AuthorizationPolicy("ledger", "b"),
        AuthorizationPolicy("ledger", "a"),
        AuthorizationPolicy("idmesh-system", "z-mesh"),
    )
    assert select(*policies) == [("idmesh-system", "z-mesh"), ("ledger", "a"), ("ledger", "b")]


def test_workload_in_root_namespace_gets_each_policy_once():
    mesh = AuthorizationPolicy("idmesh-system", "mesh")
    assert select(mesh, namespace="idmesh-system") == [("idmesh-system", "mesh")]
