"""Inbound listeners: mutual TLS termination, authorization and forwarding to the app.

Each workload port gets filter chains chosen by its effective PeerAuthentication mode, as in
Istio: STRICT has one chain that requires a client certificate; PERMISSIVE has a TLS chain
(`transport_protocol: tls`, found by the TLS inspector) and a plaintext chain; DISABLE has a
plaintext chain only. In kubernetes mode every chain sits in `virtualInbound` on 0.0.0.0:15006
and is selected by the original destination port. In local mode each port is its own listener
on `<proxy ip>:<port>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from controlplane.model.types import MeshState, MtlsMode, Proxy
from controlplane.translate import access_log, names, tls
from controlplane.translate.authz import authorization_for
from controlplane.translate.clusters import inbound_cluster
from controlplane.translate.mesh import InboundPort, inbound_ports, workload_labels
from controlplane.translate.mtls import resolve_mtls
from controlplane.translate.options import TranslateOptions
from controlplane.translate.resources import INBOUND_CAPTURE_PORT, inbound_cluster_name
from controlplane.translate.validate import Built

HCM = hcm_pb2.HttpConnectionManager


@dataclass(slots=True)
class InboundResult:
    listeners: list[Built] = field(default_factory=list)
    clusters: list[Built] = field(default_factory=list)
    problems: list[Exception] = field(default_factory=list)


def router_filter() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=names.HTTP_ROUTER, typed_config=names.pack(router_pb2.Router()))


def _inbound_http_manager(port: int, rbac_filters: list, options: TranslateOptions) -> HCM:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        # A zero timeout disables the route timeout, so long gRPC streams are not cut.
        route=route_components_pb2.RouteAction(
            cluster=inbound_cluster_name(port), timeout=duration_pb2.Duration()
        ),
    )
    return HCM(
        stat_prefix=f"inbound_{port}",
        codec_type=HCM.CodecType.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name=f"inbound|{port}",
            virtual_hosts=[
                route_components_pb2.VirtualHost(name=f"inbound|http|{port}", domains=["*"], routes=[route])
            ],
        ),
        http_filters=[*rbac_filters, router_filter()],
        # RBAC must match the same path the app receives, so the path is normalized, slashes
        # merged and %2F decoded before the RBAC filter runs.
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=HCM.PathWithEscapedSlashesAction.UNESCAPE_AND_FORWARD,
        # Drop any x-forwarded-client-cert the caller sent and set one from the verified peer
        # certificate, so the app can trust the URI SAN in it.
        forward_client_cert_details=HCM.ForwardClientCertDetails.SANITIZE_SET,
        set_current_client_cert_details=HCM.SetCurrentClientCertDetails(
            subject=wrappers_pb2.BoolValue(value=True), uri=True, dns=True
        ),
        access_log=[access_log.http_access_log(options.access_log_path)],
    )


def _chain_filters(port: InboundPort, authz, options: TranslateOptions) -> tuple[list, list[Exception]]:
    """Network filters of one port's chains: RBAC, then the HTTP manager or the TCP proxy."""
    if port.protocol != "tcp":
        rbac_filters, problems = authz.http_filters(port.port)
        manager = _inbound_http_manager(port.port, rbac_filters, options)
        return [listener_components_pb2.Filter(name=names.HTTP_CONNECTION_MANAGER, typed_config=names.pack(manager))], problems
    rbac_filters, problems = authz.network_filters(port.port)
    proxy_config = tcp_proxy_pb2.TcpProxy(
        stat_prefix=f"inbound_{port.port}",
        cluster=inbound_cluster_name(port.port),
        access_log=[access_log.tcp_access_log(options.access_log_path)],
    )
    return [*rbac_filters, listener_components_pb2.Filter(name=names.TCP_PROXY, typed_config=names.pack(proxy_config))], problems


def _chains(
    port: InboundPort, mode: MtlsMode, filters: list, *, trust_domains: tuple[str, ...], match_port: bool
) -> list[listener_components_pb2.FilterChain]:
    """The filter chains of one port under one mTLS mode."""
    alpn = tls.ALPN_HTTP if port.protocol != "tcp" else ()

    def chain(kind: str, transport_protocol: str, secure: bool) -> listener_components_pb2.FilterChain:
        match = listener_components_pb2.FilterChainMatch(transport_protocol=transport_protocol)
        if match_port:
            match.destination_port.value = port.port
        built = listener_components_pb2.FilterChain(
            name=f"inbound|{port.port}|{kind}", filter_chain_match=match, filters=filters
        )
        if secure:
            built.transport_socket.CopyFrom(tls.downstream_tls_socket(trust_domains=trust_domains, alpn=alpn))
        return built

    if mode == "STRICT":
        return [chain("mtls", "", secure=True)]
    if mode == "PERMISSIVE":
        return [chain("mtls", "tls", secure=True), chain("plaintext", "raw_buffer", secure=False)]
    return [chain("plaintext", "", secure=False)]


def _listener_filter(name: str, config) -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(name=name, typed_config=names.pack(config))


def _listener(name: str, ip: str, port: int, chains: list, *, original_dst: bool) -> listener_pb2.Listener:
    listener_filters = []
    if original_dst:
        listener_filters.append(_listener_filter(names.ORIGINAL_DST, original_dst_pb2.OriginalDst()))
    if any(chain.filter_chain_match.transport_protocol for chain in chains):
        listener_filters.append(_listener_filter(names.TLS_INSPECTOR, tls_inspector_pb2.TlsInspector()))
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port)),
        filter_chains=chains,
        listener_filters=listener_filters,
        traffic_direction=base_pb2.TrafficDirection.INBOUND,
    )


def build_inbound(state: MeshState, proxy: Proxy, options: TranslateOptions) -> InboundResult:
    """Inbound listeners and `inbound|<port>||` clusters for the proxy's workload."""
    result = InboundResult()
    ports, problems = inbound_ports(state, proxy)
    result.problems.extend(problems)
    labels = workload_labels(state, proxy)
    mtls = resolve_mtls(state, namespace=proxy.namespace, labels=labels)
    authz = authorization_for(state, namespace=proxy.namespace, labels=labels)
    result.problems.extend(mtls.problems)
    origin = f"Workload {proxy.namespace}/{proxy.workload}"
    local = proxy.mode == "local"

    all_chains = []
    for port in ports:
        filters, problems = _chain_filters(port, authz, options)
        result.problems.extend(problems)
        chains = _chains(
            port,
            mtls.mode_for_port(port.port),
            filters,
            trust_domains=state.config.trust_domains,
            match_port=not local,
        )
        if local:
            name = names.local_inbound_listener_name(proxy.ip, port.port)
            result.listeners.append(Built(name, _listener(name, proxy.ip, port.port, chains, original_dst=False), origin))
        all_chains.extend(chains)
        cluster = inbound_cluster(
            port.port, port.protocol, app_address=proxy.app_address, connect_timeout=options.connect_timeout_seconds
        )
        result.clusters.append(Built(cluster.name, cluster, origin))

    # NOTE: kubernetes mode has no chain for ports the workload does not declare, so such
    # connections are closed instead of being passed to the app unauthenticated.
    if not local and all_chains:
        listener = _listener(names.VIRTUAL_INBOUND, "0.0.0.0", INBOUND_CAPTURE_PORT, all_chains, original_dst=True)
        result.listeners.append(Built(names.VIRTUAL_INBOUND, listener, origin))
    return result
