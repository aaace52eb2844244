"""Inbound chains: mTLS mode per port, HTTP manager settings, RBAC placement, access logs."""

from __future__ import annotations

from controlplane.model.types import (
    AuthorizationPolicy,
    MeshConfig,
    PeerAuthentication,
    Rule,
    Source,
)
from controlplane.translate import TranslateOptions, translate
from controlplane.translate.resources import CLUSTER, LISTENER
from tests.golden.meshes import LEDGER, WEB, proxy_for, small_mesh
from tests.golden.walk import find, unpack

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def with_peer_authentications(*policies: PeerAuthentication, default: str = "PERMISSIVE"):
    state = small_mesh()
    return state.__class__(
        config=MeshConfig(default_mtls_mode=default),
        namespaces=state.namespaces,
        workloads=state.workloads,
        services=state.services,
        endpoints=state.endpoints,
        authorization_policies=state.authorization_policies,
        peer_authentications=policies,
    )


def ledger_listener(state, port: int):
    config = translate(state, proxy_for(LEDGER, ip=LEDGER.ip, app_address="127.0.20.1"))
    return config, config.resources[LISTENER][f"inbound_{LEDGER.ip}_{port}"]


def chain_kinds(listener) -> list[tuple[str, str, bool]]:
    return [
        (chain.name, chain.filter_chain_match.transport_protocol, chain.HasField("transport_socket"))
        for chain in listener.filter_chains
    ]


def test_strict_namespace_has_one_mtls_chain() -> None:
    _, listener = ledger_listener(small_mesh(), 8080)
    assert chain_kinds(listener) == [("inbound|8080|mtls", "", True)]


def test_strict_chain_requires_client_certificate() -> None:
    _, listener = ledger_listener(small_mesh(), 8080)
    context = next(find(listener, TLS_CONTEXT))
    assert context.require_client_certificate.value is True
    assert context.common_tls_context.tls_params.tls_minimum_protocol_version == 3  # TLSv1_2


def test_port_level_permissive_has_tls_and_plaintext_chains() -> None:
    _, listener = ledger_listener(small_mesh(), 9090)
    assert chain_kinds(listener) == [("inbound|9090|mtls", "tls", True), ("inbound|9090|plaintext", "raw_buffer", False)]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]


def test_disable_has_plaintext_chain_only() -> None:
    state = with_peer_authentications(PeerAuthentication("payments", "off", mode="DISABLE"))
    _, listener = ledger_listener(state, 8080)
    assert chain_kinds(listener) == [("inbound|8080|plaintext", "", False)]


def test_workload_policy_wins_over_namespace_and_mesh() -> None:
    state = with_peer_authentications(
        PeerAuthentication("idmesh-system", "mesh", mode="DISABLE"),
        PeerAuthentication("payments", "ns", mode="PERMISSIVE"),
        PeerAuthentication("payments", "ledger", selector={"app": "ledger"}, mode="STRICT"),
    )
    _, listener = ledger_listener(state, 8080)
    assert chain_kinds(listener) == [("inbound|8080|mtls", "", True)]


def test_unset_workload_mode_inherits_namespace_mode() -> None:
    state = with_peer_authentications(
        PeerAuthentication("idmesh-system", "mesh", mode="STRICT"),
        PeerAuthentication("payments", "ns", mode="DISABLE"),
        PeerAuthentication("payments", "ledger", selector={"app": "ledger"}, mode="UNSET"),
    )
    _, listener = ledger_listener(state, 8080)
    assert chain_kinds(listener) == [("inbound|8080|plaintext", "", False)]


def test_mesh_config_default_applies_without_policies() -> None:
    _, listener = ledger_listener(with_peer_authentications(default="STRICT"), 8080)
    assert chain_kinds(listener) == [("inbound|8080|mtls", "", True)]


def test_invalid_peer_authentication_fails_closed_to_strict() -> None:
    broken = PeerAuthentication("payments", "broken", mode="DISABLE", error="spec.mtls.mode: 'OFF' is not a mode")
    config, listener = ledger_listener(with_peer_authentications(broken), 8080)
    assert chain_kinds(listener) == [("inbound|8080|mtls", "", True)]
    assert any("PeerAuthentication payments/broken" in str(problem) for problem in config.problems)


def test_http_manager_normalizes_paths_and_sets_xfcc() -> None:
    _, listener = ledger_listener(small_mesh(), 8080)
    manager = next(find(listener, HCM))
    assert manager.normalize_path.value is True
    assert manager.merge_slashes is True
    assert manager.path_with_escaped_slashes_action == manager.PathWithEscapedSlashesAction.UNESCAPE_AND_FORWARD
    assert manager.forward_client_cert_details == manager.ForwardClientCertDetails.SANITIZE_SET
    assert manager.set_current_client_cert_details.uri is True


def test_rbac_filters_come_before_router() -> None:
    _, listener = ledger_listener(small_mesh(), 8080)
    manager = next(find(listener, HCM))
    assert [f.name for f in manager.http_filters] == ["idmesh.rbac.deny", "idmesh.rbac.allow", "envoy.filters.http.router"]


def test_tcp_chain_has_network_rbac_then_tcp_proxy() -> None:
    _, listener = ledger_listener(small_mesh(), 9000)
    names = [f.name for f in listener.filter_chains[0].filters]
    assert names == ["idmesh.rbac.deny", "idmesh.rbac.allow", "envoy.filters.network.tcp_proxy"]


def test_access_log_records_peer_principal_and_serial() -> None:
    _, listener = ledger_listener(small_mesh(), 8080)
    manager = next(find(listener, HCM))
    log_config = unpack(manager.access_log[0].typed_config)
    fields = dict(log_config.log_format.json_format)
    assert fields["peer_principal"] == "%DOWNSTREAM_PEER_URI_SAN%"
    assert fields["peer_certificate_serial"] == "%DOWNSTREAM_PEER_SERIAL%"
    assert fields["response_code"] == "%RESPONSE_CODE%"
    assert log_config.path == "/dev/stdout"


def test_local_listener_binds_proxy_ip_and_cluster_targets_app() -> None:
    config, listener = ledger_listener(small_mesh(), 8080)
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == (LEDGER.ip, 8080)
    cluster = config.resources[CLUSTER]["inbound|8080||"]
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.20.1", 8080)


def test_kubernetes_inbound_matches_destination_port() -> None:
    config = translate(small_mesh(), proxy_for(LEDGER, ip="10.0.0.4", mode="kubernetes"))
    listener = config.resources[LISTENER]["virtualInbound"]
    assert listener.address.socket_address.port_value == 15006
    assert [f.name for f in listener.listener_filters] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.tls_inspector",
    ]
    assert sorted({c.filter_chain_match.destination_port.value for c in listener.filter_chains}) == [8080, 9000, 9090]


def test_named_target_port_resolves_to_container_port() -> None:
    config, _ = ledger_listener(small_mesh(), 9090)
    assert "inbound|9090||" in config.resources[CLUSTER]


def test_policy_regex_rejected_by_re2_fails_closed() -> None:
    # A leading `*` in a principal becomes a regex; this one compiles to a program too large for Envoy.
    greedy = AuthorizationPolicy(
        "payments", "greedy", action="ALLOW", selector={"app": "ledger"},
        rules=(Rule(sources=(Source(principals=("*/sa/" + "x" * 150,)),)),),
    )
    config, listener = ledger_listener(small_mesh(extra_policies=(greedy,)), 8080)
    manager = next(find(listener, HCM))
    assert [f.name for f in manager.http_filters] == ["idmesh.rbac.fail_closed", "envoy.filters.http.router"]
    rbac = unpack(manager.http_filters[0].typed_config)
    assert rbac.rules.action == rbac.rules.Action.ALLOW
    assert len(rbac.rules.policies) == 0
    messages = [str(problem) for problem in config.problems]
    assert any("ns[payments]-policy[greedy]-rule[0]" in message for message in messages), messages


def test_bad_regex_on_one_workload_leaves_others_untouched() -> None:
    greedy = AuthorizationPolicy(
        "payments", "greedy", action="ALLOW", selector={"app": "ledger"},
        rules=(Rule(sources=(Source(principals=("*/sa/" + "x" * 150,)),)),),
    )
    config = translate(small_mesh(extra_policies=(greedy,)), proxy_for(WEB, ip=WEB.ip))
    assert config.problems == ()
    assert f"inbound_{WEB.ip}_8080" in config.resources[LISTENER]


def test_access_log_path_follows_option() -> None:
    options = TranslateOptions(access_log_path="/var/log/idmesh/access.log")
    config = translate(small_mesh(), proxy_for(LEDGER, ip=LEDGER.ip), options)
    for port in (8080, 9000, 9090):
        listener = config.resources[LISTENER][f"inbound_{LEDGER.ip}_{port}"]
        paths = {unpack(log.typed_config).path for log in find(listener, "envoy.config.accesslog.v3.AccessLog")}
        assert paths == {"/var/log/idmesh/access.log"}
