"""Filter-chain semantics of the evaluator: engines, order, shadow rules, LOG and metadata."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, text_format

from controlplane.authz import NO_ALLOW_MATCHED, InvalidRequestError, Request, UnsupportedRbacError, evaluate

REQUEST = Request("10.0.0.5", 8080, principal="spiffe://example.org/ns/shop/sa/web", method="GET", path="/data")


def pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def http_filter(name: str, text: str) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(text_format.Parse(text, http_rbac_pb2.RBAC())))


def network_filter(name: str, text: str) -> listener_components_pb2.Filter:
    config = text_format.Parse(text, network_rbac_pb2.RBAC())
    return listener_components_pb2.Filter(name=name, typed_config=pack(config))


ANY = "permissions { any: true } principals { any: true }"
PORT_1 = "permissions { destination_port: 1 } principals { any: true }"


def rules(action: str, policies: dict[str, str], field: str = "rules") -> str:
    body = " ".join(f'policies {{ key: "{name}" value {{ {policy} }} }}' for name, policy in policies.items())
    return f"{field} {{ action: {action} {body} }}"


def test_allow_engine_with_no_policies_denies_with_no_matched_policy():
    decision = evaluate([http_filter("allow", "rules { }")], REQUEST)
    assert not decision.allowed
    assert decision.reason == NO_ALLOW_MATCHED
    assert decision.filter_name == "allow"
    assert decision.policy is None
    assert decision.response_code_details == "rbac_access_denied_matched_policy[none]"


def test_deny_engine_reports_first_matching_policy_in_name_order():
    config = rules("DENY", {"b-second": ANY, "a-first": ANY, "0-no-match": PORT_1})
    decision = evaluate([http_filter("deny", config + ' rules_stat_prefix: "d_"')], REQUEST)
    assert not decision.allowed
    assert decision.policy == "a-first"
    assert decision.reason == "denied by DENY policy a-first"
    assert decision.response_code_details == "rbac_access_denied_matched_policy[a-first]"
    assert dict(decision.dynamic_metadata["envoy.filters.http.rbac"]) == {
        "d_enforced_effective_policy_id": "a-first",
        "d_enforced_engine_result": "denied",
    }


def test_policy_names_order_bytewise_like_std_map():
    # "rule[10]" sorts before "rule[2]", so a request matching both reports rule[10].
    config = rules("ALLOW", {"rule[2]": ANY, "rule[10]": ANY})
    assert evaluate([http_filter("allow", config)], REQUEST).policy == "rule[10]"


def test_filter_without_rules_allows():
    decision = evaluate([http_filter("empty", "")], REQUEST)
    assert decision.allowed
    assert decision.enforced == ()
    assert decision.dynamic_metadata == {}


def test_denial_stops_the_chain_before_later_shadow_rules():
    chain = [
        http_filter("deny", rules("DENY", {"all": ANY})),
        http_filter("shadow", rules("ALLOW", {"all": ANY}, field="shadow_rules") + ' shadow_rules_stat_prefix: "s_"'),
    ]
    decision = evaluate(chain, REQUEST)
    assert not decision.allowed
    assert decision.shadow == ()


def test_shadow_runs_before_enforced_in_the_same_filter_and_never_decides():
    text = rules("ALLOW", {"none": PORT_1}) + " " + rules("DENY", {"all": ANY}, field="shadow_rules")
    decision = evaluate([http_filter("both", text + ' shadow_rules_stat_prefix: "s_" rules_stat_prefix: "r_"')], REQUEST)
    assert not decision.allowed
    assert decision.reason == NO_ALLOW_MATCHED
    assert [(r.action, r.allowed, r.matched_policy) for r in decision.shadow] == [("DENY", False, "all")]
    assert dict(decision.dynamic_metadata["envoy.filters.http.rbac"]) == {
        "s_shadow_effective_policy_id": "all",
        "s_shadow_engine_result": "denied",
        "r_enforced_engine_result": "denied",
    }


def test_log_engine_allows_and_sets_access_log_hint():
    matched = evaluate([http_filter("audit", rules("LOG", {"all": ANY}))], REQUEST)
    assert matched.allowed
    assert [r.matched_policy for r in matched.logged] == ["all"]
    assert matched.dynamic_metadata["envoy.common"] == {"access_log_hint": True}
    assert matched.dynamic_metadata["envoy.filters.http.rbac"] == {
        "enforced_effective_policy_id": "all",
        "enforced_engine_result": "allowed",
    }
    unmatched = evaluate([http_filter("audit", rules("LOG", {"none": PORT_1}))], REQUEST)
    assert unmatched.logged == ()
    assert unmatched.dynamic_metadata["envoy.common"] == {"access_log_hint": False}


def test_shadow_log_engine_sets_no_access_log_hint():
    decision = evaluate([http_filter("audit", rules("LOG", {"all": ANY}, field="shadow_rules"))], REQUEST)
    assert "envoy.common" not in decision.dynamic_metadata
    assert decision.shadow[0].matched_policy == "all"


def test_allowed_request_names_the_last_allow_engine():
    chain = [
        http_filter("deny", rules("DENY", {"none": PORT_1})),
        http_filter("allow", rules("ALLOW", {"p": ANY})),
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())),
    ]
    decision = evaluate(chain, REQUEST)
    assert decision.allowed
    assert (decision.filter_name, decision.policy) == ("allow", "p")
    assert decision.reason == "allowed by ALLOW policy p"
    assert decision.response_code_details is None


def test_router_ends_the_chain():
    chain = [
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())),
        http_filter("never-reached", "rules { }"),
    ]
    assert evaluate(chain, REQUEST).allowed


def test_non_rbac_filter_is_unsupported():
    lua_like = hcm_pb2.HttpFilter(name="other", typed_config=pack(network_rbac_pb2.RBAC(stat_prefix="x")))
    with pytest.raises(UnsupportedRbacError, match="is not an http RBAC filter"):
        evaluate([lua_like], REQUEST)


def test_matcher_tree_is_unsupported():
    config = http_rbac_pb2.RBAC()
    config.matcher.on_no_match.action.name = "x"
    with pytest.raises(UnsupportedRbacError, match="matcher"):
        evaluate([config], REQUEST)


def test_network_filters_write_only_shadow_metadata():
    chain = [
        network_filter("shadow", rules("DENY", {"all": ANY}, field="shadow_rules") + ' stat_prefix: "t." shadow_rules_stat_prefix: "s_"'),
        network_filter("deny", rules("DENY", {"all": ANY}) + ' stat_prefix: "t."'),
        listener_components_pb2.Filter(name="tcp", typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix="t"))),
    ]
    decision = evaluate(chain, REQUEST, kind="network")
    assert not decision.allowed
    assert decision.response_code_details == "rbac_access_denied_matched_policy[all]"
    assert dict(decision.dynamic_metadata) == {
        "envoy.filters.network.rbac": {"s_shadow_effective_policy_id": "all", "s_shadow_engine_result": "denied"}
    }


def test_http_filter_in_network_chain_is_unsupported():
    with pytest.raises(UnsupportedRbacError):
        evaluate([http_filter("allow", "rules { }")], REQUEST, kind="network")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source_ip": "not-an-ip", "destination_port": 80},
        {"source_ip": "10.0.0.1", "destination_port": 70000},
        {"source_ip": "10.0.0.1", "destination_port": 80, "remote_ip": "10.0.0"},
        {"source_ip": "10.0.0.1", "destination_port": 80, "headers": {":path": "/x"}},
    ],
)
def test_malformed_request_is_rejected(kwargs):
    with pytest.raises(InvalidRequestError):
        Request(**kwargs)
