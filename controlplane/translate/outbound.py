"""Outbound listeners and route configurations: how the app reaches services.

Local mode has no iptables. The app sends plain HTTP to `<proxy ip>:15001` with the service in
the authority (`ledger:8080`, `ledger.payments:8080`, `ledger.payments.svc.cluster.local:8080`),
and reaches a TCP service with `CONNECT ledger-tcp.payments:9000`, which Envoy terminates and
then relays the payload over mTLS to the callee's inbound TCP chain. One route configuration,
`15001`, serves the whole listener.

Kubernetes mode follows Istio: iptables sends outbound connections to `virtualOutbound` on
0.0.0.0:15001, the original destination listener filter restores the address the app dialed,
and a filter chain per destination port (plus the cluster IP for TCP services) picks an HTTP
connection manager with route configuration `<port>` or a TCP proxy. Destinations the mesh
does not know go to `PassthroughCluster`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from controlplane.errors import TranslationError
from controlplane.model.types import MeshState, Proxy
from controlplane.translate import names
from controlplane.translate.clusters import OutboundTarget, load_assignment, outbound_cluster, passthrough_cluster
from controlplane.translate.inbound import router_filter
from controlplane.translate.options import TranslateOptions
from controlplane.translate.resources import OUTBOUND_CAPTURE_PORT
from controlplane.translate.validate import Built

HCM = hcm_pb2.HttpConnectionManager
ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.ApiVersion.V3
)


@dataclass(slots=True)
class OutboundResult:
    listeners: list[Built] = field(default_factory=list)
    routes: list[Built] = field(default_factory=list)
    clusters: list[Built] = field(default_factory=list)
    endpoints: list[Built] = field(default_factory=list)
    problems: list[Exception] = field(default_factory=list)
    # Virtual host name -> the object it was generated for, for validation messages.
    virtual_host_origins: dict[str, str] = field(default_factory=dict)


def _outbound_http_manager(route_name: str, *, stat_prefix: str, connect: bool) -> HCM:
    manager = HCM(
        stat_prefix=stat_prefix,
        codec_type=HCM.CodecType.AUTO,
        rds=hcm_pb2.Rds(config_source=ADS, route_config_name=route_name),
        http_filters=[router_filter()],
    )
    if connect:
        # CONNECT is terminated here. The route's connect_config makes Envoy reply 200 and
        # relay the tunnelled bytes to the route's cluster.
        manager.upgrade_configs.append(HCM.UpgradeConfig(upgrade_type="CONNECT"))
        manager.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions(allow_connect=True))
    return manager


def _http_filter_chain(manager: HCM, name: str, match=None) -> listener_components_pb2.FilterChain:
    chain = listener_components_pb2.FilterChain(
        name=name,
        filters=[listener_components_pb2.Filter(name=names.HTTP_CONNECTION_MANAGER, typed_config=names.pack(manager))],
    )
    if match is not None:
        chain.filter_chain_match.CopyFrom(match)
    return chain


def _tcp_filter_chain(cluster: str, *, name: str, match=None) -> listener_components_pb2.FilterChain:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    chain = listener_components_pb2.FilterChain(
        name=name, filters=[listener_components_pb2.Filter(name=names.TCP_PROXY, typed_config=names.pack(proxy))]
    )
    if match is not None:
        chain.filter_chain_match.CopyFrom(match)
    return chain


def _route(target: OutboundTarget) -> route_components_pb2.Route:
    """Build a catch-all route to the target's cluster, or a CONNECT-only route for a TCP service."""
    action = route_components_pb2.RouteAction(cluster=target.cluster, timeout=duration_pb2.Duration())
    if target.port.is_http:
        return route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/"), route=action)
    action.upgrade_configs.append(
        route_components_pb2.RouteAction.UpgradeConfig(
            upgrade_type="CONNECT", connect_config=route_components_pb2.RouteAction.UpgradeConfig.ConnectConfig()
        )
    )
    return route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(connect_matcher=route_components_pb2.RouteMatch.ConnectMatcher()),
        route=action,
    )


def _virtual_host(target: OutboundTarget, domains: list[str]) -> route_components_pb2.VirtualHost:
    return route_components_pb2.VirtualHost(
        name=names.virtual_host_name(target.host, target.port.port), domains=domains, routes=[_route(target)]
    )


def _add_clusters(
    result: OutboundResult, targets: list[OutboundTarget], options: TranslateOptions, *, source_address: str | None
) -> None:
    for target in targets:
        origin = str(target.service.ref)
        cluster = outbound_cluster(
            target, connect_timeout=options.connect_timeout_seconds, source_address=source_address
        )
        result.clusters.append(Built(target.cluster, cluster, origin))
        result.endpoints.append(Built(target.cluster, load_assignment(target), origin))
        result.virtual_host_origins[names.virtual_host_name(target.host, target.port.port)] = origin


def _build_local(result: OutboundResult, state: MeshState, proxy: Proxy, targets: list[OutboundTarget]) -> None:
    config = route_pb2.RouteConfiguration(name=names.LOCAL_OUTBOUND_ROUTE)
    for target in targets:
        domains = names.service_domains(
            target.service,
            target.port.port,
            proxy_namespace=proxy.namespace,
            cluster_domain=state.config.cluster_domain,
            with_bare_host=False,
        )
        config.virtual_hosts.append(_virtual_host(target, domains))
    result.routes.append(Built(config.name, config, f"Workload {proxy.namespace}/{proxy.workload}"))

    manager = _outbound_http_manager(names.LOCAL_OUTBOUND_ROUTE, stat_prefix="outbound", connect=True)
    listener = listener_pb2.Listener(
        name=names.VIRTUAL_OUTBOUND,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=proxy.ip, port_value=OUTBOUND_CAPTURE_PORT)
        ),
        filter_chains=[_http_filter_chain(manager, "outbound|http")],
        traffic_direction=base_pb2.TrafficDirection.OUTBOUND,
    )
    result.listeners.append(Built(listener.name, listener, f"Workload {proxy.namespace}/{proxy.workload}"))


def _host_prefixes(target: OutboundTarget) -> list[str]:
    """Addresses a TCP service is dialed on: its cluster IP, or each endpoint of a headless one."""
    addresses = [target.service.cluster_ip] if target.service.cluster_ip else [e.address for e, _ in target.endpoints]
    return sorted(set(addresses))


def _cidr(address: str) -> address_pb2.CidrRange | None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return address_pb2.CidrRange(
        address_prefix=str(parsed), prefix_len=wrappers_pb2.UInt32Value(value=parsed.max_prefixlen)
    )


def _build_kubernetes(result: OutboundResult, state: MeshState, proxy: Proxy, targets: list[OutboundTarget]) -> None:
    route_configs: dict[int, route_pb2.RouteConfiguration] = {}
    chains: list[listener_components_pb2.FilterChain] = []
    claimed: dict[tuple, str] = {}  # filter chain match key -> the service that claimed it

    for target in targets:
        port = target.port.port
        origin = str(target.service.ref)
        if target.port.is_http:
            config = route_configs.setdefault(port, route_pb2.RouteConfiguration(name=names.kubernetes_route_name(port)))
            domains = names.service_domains(
                target.service, port, proxy_namespace=proxy.namespace,
                cluster_domain=state.config.cluster_domain, with_bare_host=True,
            )
            config.virtual_hosts.append(_virtual_host(target, domains))
            continue
        ranges = [cidr for cidr in map(_cidr, _host_prefixes(target)) if cidr is not None]
        if not ranges:
            continue
        key = (port, tuple(r.address_prefix for r in ranges))
        if key in claimed:
            result.problems.append(
                TranslationError(
                    f"{origin}: port {port} on {', '.join(r.address_prefix for r in ranges)} is already "
                    f"routed to {claimed[key]}; the TCP route for {target.cluster!r} is left out",
                    object=origin,
                    resource=names.VIRTUAL_OUTBOUND,
                )
            )
            continue
        claimed[key] = origin
        match = listener_components_pb2.FilterChainMatch(prefix_ranges=ranges)
        match.destination_port.value = port
        chains.append(_tcp_filter_chain(target.cluster, name=target.cluster, match=match))

    for port, config in sorted(route_configs.items()):
        # Hosts the mesh does not know keep working, as with Istio's ALLOW_ANY.
        config.virtual_hosts.append(
            route_components_pb2.VirtualHost(
                name="allow_any",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(
                            cluster=names.PASSTHROUGH_CLUSTER, timeout=duration_pb2.Duration()
                        ),
                    )
                ],
            )
        )
        result.routes.append(Built(config.name, config, f"port {port}"))
        match = listener_components_pb2.FilterChainMatch()
        match.destination_port.value = port
        manager = _outbound_http_manager(config.name, stat_prefix=f"outbound_{port}", connect=False)
        chains.append(_http_filter_chain(manager, f"outbound|{port}|http", match))

    listener = listener_pb2.Listener(
        name=names.VIRTUAL_OUTBOUND,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=OUTBOUND_CAPTURE_PORT)
        ),
        filter_chains=sorted(chains, key=lambda chain: chain.name),
        default_filter_chain=_tcp_filter_chain(names.PASSTHROUGH_CLUSTER, name=names.PASSTHROUGH_CLUSTER),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name=names.ORIGINAL_DST, typed_config=names.pack(original_dst_pb2.OriginalDst())
            )
        ],
        traffic_direction=base_pb2.TrafficDirection.OUTBOUND,
    )
    result.listeners.append(Built(listener.name, listener, f"Workload {proxy.namespace}/{proxy.workload}"))


def build_outbound(
    state: MeshState, proxy: Proxy, targets: list[OutboundTarget], options: TranslateOptions
) -> OutboundResult:
    """Outbound listener, route configurations, clusters and load assignments for `targets`."""
    result = OutboundResult()
    # In local mode every workload shares the loopback interface, so without an explicit source
    # address the callee would see 127.0.0.1 and source.ip / ipBlocks rules could not tell callers apart.
    source_address = proxy.ip if proxy.mode == "local" else None
    _add_clusters(result, targets, options, source_address=source_address)
    if proxy.mode == "local":
        _build_local(result, state, proxy, targets)
    else:
        passthrough = passthrough_cluster(connect_timeout=options.connect_timeout_seconds)
        result.clusters.append(Built(passthrough.name, passthrough, "the mesh"))
        _build_kubernetes(result, state, proxy, targets)
    return result
