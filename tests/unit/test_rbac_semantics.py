"""AuthorizationPolicy semantics, checked by evaluating the generated RBAC filters."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2

from controlplane.authz import NO_ALLOW_MATCHED, Request, evaluate
from controlplane.model.types import (
    AuthorizationPolicy,
    Condition,
    MeshConfig,
    MeshState,
    Operation,
    Rule,
    Source,
)
from controlplane.translate.rbac import (
    policies_for_workload,
    translate_http_rbac,
    translate_network_rbac,
)

CONFIG = MeshConfig(trust_domain="example.org", trust_domain_aliases=("legacy.example",), root_namespace="idmesh-system")
PORT = 8080


def peer(namespace: str, service_account: str = "default", domain: str = "example.org") -> str:
    return f"spiffe://{domain}/ns/{namespace}/sa/{service_account}"


def http(
    namespace: str = "shop",
    method: str = "GET",
    path: str = "/data",
    *,
    principal: str | None = "",
    **kwargs,
) -> Request:
    if principal == "":
        principal = peer(namespace)
    return Request("10.1.2.3", PORT, principal=principal, method=method, path=path, **kwargs)


def tcp(namespace: str = "shop", *, port: int = PORT, **kwargs) -> Request:
    return Request("10.1.2.3", port, principal=peer(namespace), **kwargs)


def decide(policies, request: Request):
    translation = translate_http_rbac(policies, port=PORT, config=CONFIG)
    return evaluate(translation.filters, request)


def decide_tcp(policies, request: Request):
    translation = translate_network_rbac(policies, port=request.destination_port, config=CONFIG)
    return evaluate(translation.filters, request, kind="network")


def policy(name: str, *rules: Rule, action: str = "ALLOW", namespace: str = "ledger", **kwargs) -> AuthorizationPolicy:
    return AuthorizationPolicy(namespace, name, action=action, rules=tuple(rules), **kwargs)


DATA_PATH = Rule(operations=(Operation(paths=("/data",)),))
FROM_PAYMENTS = Rule(sources=(Source(namespaces=("payments",)),))
BOTH_IN_ONE_RULE = Rule(sources=(Source(namespaces=("payments",)),), operations=(Operation(paths=("/data",)),))


def test_rules_are_ored():
    decision = decide([policy("ledger-access", DATA_PATH, FROM_PAYMENTS)], http("shop", "GET", "/data"))
    assert decision.allowed
    assert decision.policy == "ns[ledger]-policy[ledger-access]-rule[0]"


def test_from_and_to_in_one_rule_are_anded():
    decision = decide([policy("ledger-access", BOTH_IN_ONE_RULE)], http("shop", "GET", "/data"))
    assert not decision.allowed
    assert decision.reason == NO_ALLOW_MATCHED
    assert decide([policy("ledger-access", BOTH_IN_ONE_RULE)], http("payments", "GET", "/data")).allowed


@pytest.mark.parametrize(
    ("policies", "allowed"),
    [
        pytest.param([policy("deny-everything")], False, id="allow-with-no-rules-denies-all"),
        pytest.param([policy("allow-everything", Rule())], True, id="allow-with-one-empty-rule-allows-all"),
        pytest.param([policy("deny-all", Rule(), action="DENY")], False, id="deny-with-one-empty-rule-denies-all"),
        pytest.param([policy("no-op", action="DENY")], True, id="deny-with-no-rules-has-no-effect"),
        pytest.param([], True, id="no-policy-allows-all"),
    ],
)
@pytest.mark.parametrize(
    "request_",
    [
        http("shop", "GET", "/data"),
        http("payments", "POST", "/other"),
        http(principal=None, method="DELETE", path="/"),
    ],
    ids=["shop-get", "payments-post", "plaintext-delete"],
)
def test_no_rules_versus_one_empty_rule(policies, allowed, request_):
    assert decide(policies, request_).allowed is allowed


def test_no_rules_versus_one_empty_rule_on_tcp():
    assert not decide_tcp([policy("deny-everything")], tcp()).allowed
    assert decide_tcp([policy("allow-everything", Rule())], tcp()).allowed
    assert not decide_tcp([policy("deny-all", Rule(), action="DENY")], tcp()).allowed
    assert decide_tcp([policy("no-op", action="DENY")], tcp()).allowed


def test_deny_policy_wins_over_allow():
    policies = [
        policy("allow-all", Rule()),
        policy("deny-shop", Rule(sources=(Source(namespaces=("shop",)),)), action="DENY"),
    ]
    denied = decide(policies, http("shop"))
    assert not denied.allowed
    assert denied.policy == "ns[ledger]-policy[deny-shop]-rule[0]"
    assert denied.reason == "denied by DENY policy ns[ledger]-policy[deny-shop]-rule[0]"
    assert decide(policies, http("payments")).allowed


def test_http_only_allow_rule_on_tcp_never_matches():
    get_only = policy("get-only", Rule(operations=(Operation(methods=("GET",)),)))
    translation = translate_network_rbac([get_only], port=PORT, config=CONFIG)
    assert not evaluate(translation.filters, tcp(), kind="network").allowed
    assert len(translation.notes) == 1
    note = translation.notes[0]
    assert note.policy == "get-only"
    assert note.fields == ("spec.rules[0].to[0].operation.methods",)
    assert "never matches" in note.message


def test_http_only_allow_rule_on_tcp_leaves_other_rules():
    mixed = policy(
        "mixed",
        Rule(operations=(Operation(methods=("GET",)),)),
        Rule(sources=(Source(namespaces=("payments",)),)),
    )
    assert decide_tcp([mixed], tcp("payments")).allowed
    assert not decide_tcp([mixed], tcp("shop")).allowed


def test_http_only_deny_fields_on_tcp_are_ignored():
    deny = policy(
        "deny-get-9000",
        Rule(operations=(Operation(methods=("GET",), ports=("9000",)),)),
        action="DENY",
    )
    translation = translate_network_rbac([deny], port=9000, config=CONFIG)
    assert not evaluate(translation.filters, tcp(port=9000), kind="network").allowed
    assert "ignored" in translation.notes[0].message
    # The port condition still holds: other ports are not denied.
    assert decide_tcp([deny], tcp(port=9001)).allowed


def test_http_only_deny_condition_on_tcp_is_ignored():
    deny = policy(
        "deny-header",
        Rule(sources=(Source(namespaces=("shop",)),), conditions=(Condition("request.headers[x-debug]", ("1",)),)),
        action="DENY",
    )
    assert not decide_tcp([deny], tcp("shop")).allowed
    assert decide_tcp([deny], tcp("payments")).allowed
    # Over HTTP the header condition applies.
    assert decide([deny], http("shop")).allowed
    assert not decide([deny], http("shop", headers={"X-Debug": "1"})).allowed


def test_dry_run_policy_never_enforces_but_reports():
    dry_deny = policy("dry-deny-shop", Rule(sources=(Source(namespaces=("shop",)),)), action="DENY", dry_run=True)
    decision = decide([dry_deny], http("shop"))
    assert decision.allowed
    assert len(decision.shadow) == 1
    assert decision.shadow[0].allowed is False
    assert decision.shadow[0].matched_policy == "ns[ledger]-policy[dry-deny-shop]-rule[0]"
    fields = decision.dynamic_metadata["envoy.filters.http.rbac"]
    assert fields["idmesh_dry_run_ledger_dry-deny-shop_shadow_engine_result"] == "denied"
    assert fields["idmesh_dry_run_ledger_dry-deny-shop_shadow_effective_policy_id"] == (
        "ns[ledger]-policy[dry-deny-shop]-rule[0]"
    )


def test_dry_run_allow_policy_reports_what_it_would_deny():
    dry_allow = policy("dry-allow-payments", FROM_PAYMENTS, dry_run=True)
    decision = decide([dry_allow], http("shop"))
    assert decision.allowed
    assert decision.shadow[0].allowed is False
    assert decision.shadow[0].matched_policy is None
    assert decide([dry_allow], http("payments")).shadow[0].allowed is True


def test_dry_run_allow_policy_does_not_make_workload_deny_by_default():
    decision = decide([policy("dry-nothing", dry_run=True)], http("shop"))
    assert decision.allowed
    assert decision.shadow[0].allowed is False


def test_policy_with_error_fails_closed():
    broken = policy("broken", Rule(), error="spec.rules[0].to[0].operation.methods[0]: \"get\" is not an HTTP method")
    good = policy("allow-all", Rule())
    translation = translate_http_rbac([broken, good], port=PORT, config=CONFIG)
    decision = evaluate(translation.filters, http("payments"))
    assert not decision.allowed
    assert decision.policy == "ns[ledger]-policy[broken]-fail-closed"
    assert len(translation.problems) == 1
    problem = translation.problems[0]
    assert problem.name == "broken"
    assert "is not an HTTP method" in str(problem)
    assert "fails closed" in str(problem)


def test_untranslatable_policy_fails_closed_without_stopping_others():
    bad_ip = policy("bad-ip", Rule(sources=(Source(ip_blocks=("10.0.0.300",)),)), action="DENY")
    deny_shop = policy("deny-shop", Rule(sources=(Source(namespaces=("shop",)),)), action="DENY")
    translation = translate_http_rbac([bad_ip, deny_shop], port=PORT, config=CONFIG)
    assert [p.name for p in translation.problems] == ["bad-ip"]
    assert translation.problems[0].path == "spec.rules[0].from[0].source.ipBlocks[0]"
    decision = evaluate(translation.filters, http("payments"))
    assert decision.policy == "ns[ledger]-policy[bad-ip]-fail-closed"
    deny_filter = http_rbac_pb2.RBAC()
    translation.filters[0].typed_config.Unpack(deny_filter)
    assert sorted(deny_filter.rules.policies) == [
        "ns[ledger]-policy[bad-ip]-fail-closed",
        "ns[ledger]-policy[deny-shop]-rule[0]",
    ]


def test_custom_action_fails_closed():
    custom = policy("ext-authz", Rule(), action="CUSTOM")
    translation = translate_http_rbac([custom], port=PORT, config=CONFIG)
    assert not evaluate(translation.filters, http()).allowed
    assert "CUSTOM" in str(translation.problems[0])


@pytest.mark.parametrize(
    ("principal", "allowed"),
    [
        (peer("payments", "api", "example.org"), True),
        (peer("payments", "api", "legacy.example"), True),
        (peer("payments", "api", "other.org"), False),
        (peer("payments", "web", "example.org"), False),
    ],
)
def test_trust_domain_alias_principals(principal, allowed):
    allow = policy("allow-api", Rule(sources=(Source(principals=("cluster.local/ns/payments/sa/api",)),)))
    assert decide([allow], http(principal=principal)).allowed is allowed


def test_principal_in_an_alias_matches_the_trust_domain_too():
    allow = policy("allow-api", Rule(sources=(Source(principals=("legacy.example/ns/payments/sa/api",)),)))
    assert decide([allow], http(principal=peer("payments", "api", "example.org"))).allowed


def test_principal_of_a_foreign_trust_domain_is_kept():
    allow = policy("allow-foreign", Rule(sources=(Source(principals=("partner.org/ns/x/sa/y",)),)))
    assert decide([allow], http(principal="spiffe://partner.org/ns/x/sa/y")).allowed
    assert not decide([allow], http(principal=peer("x", "y"))).allowed


@pytest.mark.parametrize(
    ("value", "principal", "allowed"),
    [
        ("*", peer("any"), True),
        ("*", None, False),
        ("example.org/ns/payments/*", peer("payments", "api"), True),
        ("example.org/ns/payments/*", peer("paymentsx", "api"), False),
        ("*/sa/api", peer("shop", "api"), True),
        ("*/sa/api", peer("shop", "web"), False),
    ],
)
def test_principal_wildcards(value, principal, allowed):
    allow = policy("allow", Rule(sources=(Source(principals=(value,)),)))
    assert decide([allow], http(principal=principal)).allowed is allowed


def test_not_fields_exclude_values():
    allow = policy(
        "allow-but",
        Rule(
            sources=(Source(not_namespaces=("shop",)),),
            operations=(Operation(not_paths=("/admin*",), not_methods=("DELETE",)),),
        ),
    )
    assert decide([allow], http("payments", "GET", "/data")).allowed
    assert not decide([allow], http("shop", "GET", "/data")).allowed
    assert not decide([allow], http("payments", "GET", "/admin/users")).allowed
    assert not decide([allow], http("payments", "DELETE", "/data")).allowed


def test_not_namespaces_matches_plaintext_peers():
    # A peer with no certificate is in no namespace, so it is "not in shop".
    allow = policy("allow-not-shop", Rule(sources=(Source(not_namespaces=("shop",)),)))
    assert decide([allow], http(principal=None)).allowed


def test_values_in_a_field_are_ored_and_entries_are_ored():
    allow = policy(
        "allow",
        Rule(operations=(Operation(methods=("GET", "HEAD")), Operation(paths=("/public*",)))),
    )
    assert decide([allow], http(method="HEAD", path="/private")).allowed
    assert decide([allow], http(method="POST", path="/public/x")).allowed
    assert not decide([allow], http(method="POST", path="/private")).allowed


def test_root_namespace_policy_applies_mesh_wide():
    mesh_deny = policy("deny-delete", Rule(operations=(Operation(methods=("DELETE",)),)), action="DENY", namespace="idmesh-system")
    local = policy("allow-local", Rule(), namespace="ledger")
    other = policy("other-namespace", namespace="shop")
    state = MeshState(config=CONFIG, authorization_policies=(local, other, mesh_deny))
    selected = policies_for_workload(state, namespace="ledger", labels={"app": "ledger"})
    assert selected == (mesh_deny, local)
    assert not decide(selected, http(method="DELETE")).allowed
    assert decide(selected, http(method="GET")).allowed


@pytest.mark.parametrize(
    ("hosts", "authority", "allowed"),
    [
        (("ledger.example.com",), "ledger.example.com", True),
        (("ledger.example.com",), "Ledger.Example.COM", True),
        (("ledger.example.com",), "ledger.example.com:8080", False),
        (("ledger.example.com", "ledger.example.com:*"), "ledger.example.com:8080", True),
        (("*.example.com",), "LEDGER.example.com", True),
        (("*",), "anything", True),
    ],
)
def test_hosts_match_authority_case_insensitively(hosts, authority, allowed):
    allow = policy("allow-host", Rule(operations=(Operation(hosts=hosts),)))
    assert decide([allow], http(host=authority)).allowed is allowed


def test_paths_ignore_query_string():
    allow = policy("allow-data", Rule(operations=(Operation(paths=("/data", "*.json")),)))
    assert decide([allow], http(path="/data?page=2")).allowed
    assert decide([allow], http(path="/export/all.json?x=1")).allowed
    assert not decide([allow], http(path="/data/x")).allowed


@pytest.mark.parametrize(
    ("condition", "request_", "allowed"),
    [
        (Condition("source.ip", ("10.1.0.0/16",)), http(), True),
        (Condition("source.ip", ("10.2.0.0/16",)), http(), False),
        (Condition("source.ip", not_values=("10.1.2.3",)), http(), False),
        (Condition("remote.ip", ("192.0.2.7",)), http(remote_ip="192.0.2.7"), True),
        (Condition("remote.ip", ("192.0.2.7",)), http(), False),
        (Condition("source.namespace", ("shop",)), http("shop"), True),
        (Condition("source.principal", ("cluster.local/ns/shop/sa/default",)), http("shop"), True),
        (Condition("destination.ip", ("127.0.0.0/8",)), http(), True),
        (Condition("destination.port", ("8080",)), http(), True),
        (Condition("destination.port", ("9090",)), http(), False),
        (Condition("connection.sni", ("ledger.*",)), http(sni="ledger.svc"), True),
        (Condition("connection.sni", ("ledger.*",)), http(), False),
        (Condition("request.headers[x-tenant]", ("blue",)), http(headers={"X-Tenant": "blue"}), True),
        (Condition("request.headers[x-tenant]", ("*",)), http(), False),
        (Condition("request.headers[x-tenant]", not_values=("blue",)), http(headers={"x-tenant": "red"}), True),
    ],
)
def test_when_conditions(condition, request_, allowed):
    allow = policy("allow-when", Rule(conditions=(condition,)))
    assert decide([allow], request_).allowed is allowed


def test_ip_blocks_use_direct_address_and_remote_ip_blocks_forwarded_address():
    direct = policy("direct", Rule(sources=(Source(ip_blocks=("10.1.2.0/24",)),)))
    forwarded = policy("forwarded", Rule(sources=(Source(remote_ip_blocks=("203.0.113.0/24",)),)))
    request_ = http(remote_ip="203.0.113.9")
    assert decide([direct], request_).allowed
    assert decide([forwarded], request_).allowed
    assert not decide([forwarded], http()).allowed


def test_ports_match_destination_port_on_tcp():
    allow = policy("allow-9000", Rule(operations=(Operation(ports=("9000",)),)))
    assert decide_tcp([allow], tcp(port=9000)).allowed
    assert not decide_tcp([allow], tcp(port=9001)).allowed


def test_audit_policy_logs_and_never_denies():
    audit = policy("audit-shop", Rule(sources=(Source(namespaces=("shop",)),)), action="AUDIT")
    logged = decide([audit], http("shop"))
    assert logged.allowed
    assert [r.matched_policy for r in logged.logged] == ["ns[ledger]-policy[audit-shop]-rule[0]"]
    assert logged.dynamic_metadata["envoy.common"]["access_log_hint"] is True
    quiet = decide([audit], http("payments"))
    assert quiet.logged == ()
    assert quiet.dynamic_metadata["envoy.common"]["access_log_hint"] is False


def test_request_principals_fail_closed():
    jwt = policy("jwt", Rule(sources=(Source(request_principals=("issuer/subject",)),)))
    translation = translate_http_rbac([jwt], port=PORT, config=CONFIG)
    assert not evaluate(translation.filters, http()).allowed
    assert "JWT" in str(translation.problems[0])
