"""Outbound: domains as Kubernetes DNS resolves them, CONNECT for TCP, EDS clusters with mTLS."""

from __future__ import annotations

import pytest

from controlplane.translate import translate
from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.golden.meshes import LEDGER, WEB, proxy_for, small_mesh, synthetic_mesh
from tests.golden.walk import find, unpack

ROUTE_MESSAGE = "envoy.config.route.v3.Route"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
LEDGER_CLUSTER = "outbound|8080||ledger.payments.svc.cluster.local"


def domains_of(config, route_name: str) -> dict[str, list[str]]:
    return {host.name: list(host.domains) for host in config.resources[ROUTE][route_name].virtual_hosts}


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_every_route_cluster_exists(mode: str) -> None:
    state = synthetic_mesh(services=60, policies=20)
    config = translate(state, proxy_for(state.workloads[0], ip="127.1.0.1", mode=mode))
    clusters = set(config.resources[CLUSTER])
    named = [
        route.route.cluster
        for route_config in config.resources[ROUTE].values()
        for route in find(route_config, ROUTE_MESSAGE)
    ]
    named += [proxy.cluster for listener in config.resources[LISTENER].values() for proxy in find(listener, TCP_PROXY)]
    assert len(named) >= 60
    assert sorted(set(named) - clusters) == []


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_every_eds_cluster_has_load_assignment(mode: str) -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip=WEB.ip, mode=mode))
    eds = {name for name, cluster in config.resources[CLUSTER].items() if cluster.type == cluster.DiscoveryType.EDS}
    assert eds == set(config.resources[ENDPOINT])


def test_local_domains_include_short_name_only_in_same_namespace() -> None:
    domains = domains_of(translate(small_mesh(), proxy_for(WEB, ip=WEB.ip)), "15001")
    assert domains["ledger.payments.svc.cluster.local:8080"] == [
        "ledger.payments.svc.cluster.local:8080",
        "ledger.payments:8080",
    ]
    assert domains["legacy.shop.svc.cluster.local:8080"] == [
        "legacy.shop.svc.cluster.local:8080",
        "legacy.shop:8080",
        "legacy:8080",
    ]


def test_local_port_80_domains_also_without_port() -> None:
    domains = domains_of(translate(small_mesh(), proxy_for(WEB, ip=WEB.ip)), "15001")
    assert "web" in domains["web.shop.svc.cluster.local:80"]
    assert "web:80" in domains["web.shop.svc.cluster.local:80"]


def test_local_tcp_service_is_reached_with_connect() -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip=WEB.ip))
    host = next(h for h in config.resources[ROUTE]["15001"].virtual_hosts if h.name.startswith("ledger-tcp."))
    route = host.routes[0]
    assert "ledger-tcp.payments:9000" in host.domains
    assert route.match.HasField("connect_matcher")
    assert route.route.cluster == "outbound|9000||ledger-tcp.payments.svc.cluster.local"
    assert [c.upgrade_type for c in route.route.upgrade_configs] == ["CONNECT"]
    assert route.route.upgrade_configs[0].HasField("connect_config")


def test_local_outbound_listener_accepts_connect() -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip=WEB.ip))
    listener = config.resources[LISTENER]["virtualOutbound"]
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == (WEB.ip, 15001)
    manager = unpack(listener.filter_chains[0].filters[0].typed_config)
    assert manager.rds.route_config_name == "15001"
    assert [c.upgrade_type for c in manager.upgrade_configs] == ["CONNECT"]


def test_outbound_cluster_verifies_callee_spiffe_id() -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip=WEB.ip))
    cluster = config.resources[CLUSTER][LEDGER_CLUSTER]
    context = next(find(cluster, UPSTREAM_TLS))
    matchers = context.common_tls_context.combined_validation_context.default_validation_context
    sans = [(m.san_type, m.matcher.exact) for m in matchers.match_typed_subject_alt_names]
    assert sans == [(matchers.match_typed_subject_alt_names[0].SanType.URI, "spiffe://cluster.local/ns/payments/sa/ledger")]
    assert cluster.eds_cluster_config.eds_config.HasField("ads")


def test_sidecar_endpoint_gets_mtls_and_legacy_gets_plaintext() -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip=WEB.ip))
    ledger = config.resources[ENDPOINT][LEDGER_CLUSTER].endpoints[0].lb_endpoints[0]
    legacy = config.resources[ENDPOINT]["outbound|8080||legacy.shop.svc.cluster.local"].endpoints[0].lb_endpoints[0]
    assert ledger.metadata.filter_metadata["envoy.transport_socket_match"]["tlsMode"] == "idmesh"
    assert "envoy.transport_socket_match" not in legacy.metadata.filter_metadata
    assert len(config.resources[CLUSTER]["outbound|8080||legacy.shop.svc.cluster.local"].transport_socket_matches) == 0


def test_grpc_cluster_speaks_http2() -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip=WEB.ip))
    cluster = config.resources[CLUSTER]["outbound|9090||ledger.payments.svc.cluster.local"]
    options = unpack(cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"])
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_kubernetes_route_per_port_with_cluster_ip_domains() -> None:
    config = translate(small_mesh(), proxy_for(LEDGER, ip="10.0.0.4", mode="kubernetes"))
    assert sorted(config.resources[ROUTE]) == ["80", "8080", "9090"]
    domains = domains_of(config, "8080")
    assert "10.96.0.10:8080" in domains["ledger.payments.svc.cluster.local:8080"]
    assert "ledger" in domains["ledger.payments.svc.cluster.local:8080"]
    assert domains["allow_any"] == ["*"]


def test_kubernetes_tcp_chain_matches_cluster_ip_and_port() -> None:
    config = translate(small_mesh(), proxy_for(WEB, ip="10.0.0.2", mode="kubernetes"))
    listener = config.resources[LISTENER]["virtualOutbound"]
    chain = next(c for c in listener.filter_chains if c.name == "outbound|9000||ledger-tcp.payments.svc.cluster.local")
    match = chain.filter_chain_match
    assert (match.destination_port.value, match.prefix_ranges[0].address_prefix, match.prefix_ranges[0].prefix_len.value) == (
        9000,
        "10.96.0.11",
        32,
    )
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.original_dst"]
    assert unpack(listener.default_filter_chain.filters[0].typed_config).cluster == "PassthroughCluster"
