"""The debug API documents meshctl reads, built from mesh state without a server."""

from __future__ import annotations

from types import MappingProxyType

from controlplane.admin.debug import (
    explain_mtls,
    istio_match,
    policy_mentions,
    principals_document,
    rule_json,
    workload_document,
)
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import (
    AuthorizationPolicy,
    Condition,
    MeshConfig,
    MeshState,
    Operation,
    PeerAuthentication,
    Rule,
    ServiceAccount,
    Source,
    Workload,
)
from controlplane.translate.mtls import resolve_mtls

CONFIG = MeshConfig(trust_domain="example.org", trust_domain_aliases=("old.example",))
WORKER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/worker")


def allow(name: str, *rules: Rule, namespace: str = "payments") -> AuthorizationPolicy:
    return AuthorizationPolicy(namespace, name, rules=rules)


def mentions(policy: AuthorizationPolicy, identity: SpiffeId = WORKER) -> list[tuple[str, str, str]]:
    state = MeshState(config=CONFIG, authorization_policies=(policy,))
    return [(m["field"], m["value"], m["matched_as"]) for m in policy_mentions(policy, identity, state)]


def test_istio_match_forms() -> None:
    assert istio_match("a/b", "a/b")
    assert not istio_match("a/b", "a/bc")
    assert istio_match("a/*", "a/bc")
    assert istio_match("*/sa/w", "x/ns/y/sa/w")
    assert istio_match("*", "anything")
    assert not istio_match("*", "")


def test_principal_in_own_trust_domain_matches() -> None:
    policy = allow("p", Rule(sources=(Source(principals=("example.org/ns/payments/sa/worker",)),)))
    assert mentions(policy) == [("principals", "example.org/ns/payments/sa/worker", "example.org/ns/payments/sa/worker")]


def test_cluster_local_principal_matches_mesh_domain() -> None:
    policy = allow("p", Rule(sources=(Source(principals=("cluster.local/ns/payments/sa/worker",)),)))
    assert mentions(policy) == [("principals", "cluster.local/ns/payments/sa/worker", "example.org/ns/payments/sa/worker")]


def test_alias_principal_matches_identity_in_main_domain() -> None:
    policy = allow("p", Rule(sources=(Source(principals=("old.example/ns/payments/sa/worker",)),)))
    assert mentions(policy)[0][2] == "example.org/ns/payments/sa/worker"


def test_foreign_trust_domain_principal_does_not_match() -> None:
    policy = allow("p", Rule(sources=(Source(principals=("other.org/ns/payments/sa/worker",)),)))
    assert mentions(policy) == []


def test_prefix_and_suffix_principals_match() -> None:
    policy = allow("p", Rule(sources=(Source(principals=("example.org/ns/payments/*", "*/sa/worker", "*/sa/api")),)))
    assert [value for _field, value, _ in mentions(policy)] == ["example.org/ns/payments/*", "*/sa/worker"]


def test_namespace_fields_match_namespace_wide() -> None:
    policy = allow("p", Rule(sources=(Source(namespaces=("pay*",), not_namespaces=("payments",)),)))
    assert [(field, value) for field, value, _ in mentions(policy)] == [("namespaces", "pay*"), ("notNamespaces", "payments")]


def test_not_principals_and_conditions_are_reported() -> None:
    policy = allow("p", Rule(
        sources=(Source(not_principals=("example.org/ns/payments/sa/worker",)),),
        conditions=(Condition("source.principal", values=("*/sa/worker",)), Condition("request.method", values=("GET",))),
    ))
    assert [field for field, _, _ in mentions(policy)] == ["notPrincipals", "when source.principal"]


def test_rule_index_is_reported() -> None:
    policy = allow("p", Rule(sources=(Source(principals=("x/ns/a/sa/b",)),)), Rule(sources=(Source(namespaces=("payments",)),)))
    state = MeshState(config=CONFIG, authorization_policies=(policy,))
    assert [m["rule"] for m in policy_mentions(policy, WORKER, state)] == [1]


def test_principals_document_joins_accounts_and_workloads() -> None:
    state = MeshState(
        config=CONFIG,
        service_accounts=(ServiceAccount("payments", "worker"), ServiceAccount("shop", "web")),
        workloads=(Workload("payments", "worker", service_account="worker"),
                   Workload("payments", "batch", service_account="undeclared")),
        authorization_policies=(allow("p", Rule(sources=(Source(namespaces=("payments",)),))),),
    )
    document = principals_document(state, [], namespace="payments")
    by_id = {p["spiffe_id"]: p for p in document["principals"]}

    assert document["trust_domain"] == "example.org"
    assert document["trust_domain_aliases"] == ["old.example"]
    assert set(by_id) == {"spiffe://example.org/ns/payments/sa/undeclared", str(WORKER)}
    assert by_id[str(WORKER)]["service_account_declared"] is True
    assert by_id[str(WORKER)]["workloads"] == ["payments/worker"]
    assert by_id["spiffe://example.org/ns/payments/sa/undeclared"]["service_account_declared"] is False
    assert [m["policy"] for m in by_id[str(WORKER)]["policies"]] == ["payments/p"]


def mtls_state(*policies: PeerAuthentication) -> MeshState:
    return MeshState(config=MeshConfig(root_namespace="idmesh-system", default_mtls_mode="PERMISSIVE"),
                     peer_authentications=policies)


def explain(*policies: PeerAuthentication, port: int = 8080) -> tuple[str, str, str | None]:
    policy = resolve_mtls(mtls_state(*policies), namespace="payments", labels={"app": "ledger"})
    explained = explain_mtls(policy, port)
    assert explained["mode"] == policy.mode_for_port(port)
    return explained["mode"], explained["decided_by"], explained["policy"]


def test_mtls_default_when_no_policy() -> None:
    assert explain() == ("PERMISSIVE", "default", None)


def test_mtls_mesh_policy_decides() -> None:
    assert explain(PeerAuthentication("idmesh-system", "mesh", mode="STRICT")) == ("STRICT", "mesh", "idmesh-system/mesh")


def test_mtls_namespace_beats_mesh() -> None:
    decided = explain(PeerAuthentication("idmesh-system", "mesh", mode="STRICT"),
                      PeerAuthentication("payments", "ns", mode="PERMISSIVE"))
    assert decided == ("PERMISSIVE", "namespace", "payments/ns")


def test_mtls_unset_workload_policy_inherits() -> None:
    decided = explain(PeerAuthentication("payments", "ns", mode="STRICT"),
                      PeerAuthentication("payments", "ledger", selector={"app": "ledger"}, mode="UNSET"))
    assert decided == ("STRICT", "namespace", "payments/ns")


def test_mtls_port_level_wins() -> None:
    workload = PeerAuthentication("payments", "ledger", selector={"app": "ledger"}, mode="STRICT",
                                  port_level=MappingProxyType({9000: "DISABLE"}))
    assert explain(workload, port=9000) == ("DISABLE", "workload port-level", "payments/ledger")
    assert explain(workload, port=8080) == ("STRICT", "workload", "payments/ledger")


def test_mtls_invalid_policy_is_strict() -> None:
    broken = PeerAuthentication("payments", "ns", mode="DISABLE", error="spec.mtls.mode: invalid")
    policy = resolve_mtls(mtls_state(broken), namespace="payments", labels={})
    assert explain_mtls(policy, 8080)["mode"] == "STRICT"
    assert explain_mtls(policy, 8080)["policy_error"] == "spec.mtls.mode: invalid"


def test_rule_json_uses_policy_yaml_names() -> None:
    rule = Rule(sources=(Source(not_principals=("a/ns/b/sa/c",)),),
                operations=(Operation(methods=("GET",), not_paths=("/admin",)),),
                conditions=(Condition("request.headers[x-env]", values=("prod",)),))
    assert rule_json(rule) == {
        "from": [{"source": {"notPrincipals": ["a/ns/b/sa/c"]}}],
        "to": [{"operation": {"methods": ["GET"], "notPaths": ["/admin"]}}],
        "when": [{"key": "request.headers[x-env]", "values": ["prod"]}],
    }


def test_workload_document_without_proxy_uses_state() -> None:
    ledger = Workload("payments", "ledger", service_account="api", labels=MappingProxyType({"app": "ledger"}), ip="10.0.0.5")
    state = MeshState(
        config=MeshConfig(trust_domain="example.org"),
        workloads=(ledger,),
        authorization_policies=(AuthorizationPolicy("payments", "deny-all-ledger", selector={"app": "ledger"}),
                                AuthorizationPolicy("payments", "other", selector={"app": "other"})),
    )
    document = workload_document(state, ledger, [])

    assert document["identity"] == "spiffe://example.org/ns/payments/sa/api"
    assert document["proxies"] == []
    assert [p["name"] for p in document["authorization_policies"]] == ["deny-all-ledger"]
    assert document["authorization_policies"][0]["rules"] == []
    assert document["inbound_services"] == []
