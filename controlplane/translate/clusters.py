"""Clusters and load assignments: inbound clusters to the app, outbound clusters to services.

Outbound clusters use Istio's automatic mutual TLS: an endpoint whose workload runs a sidecar
(and does not disable mTLS on that port) carries the `tlsMode` metadata that selects the TLS
transport socket; other endpoints are reached in plaintext. The TLS socket accepts only the
SPIFFE IDs of the service accounts behind the service.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2, struct_pb2

from controlplane.errors import MeshError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import Endpoint, MeshState, PortProtocol, Service, ServicePort, Workload
from controlplane.translate import names, tls
from controlplane.translate.mesh import MeshIndex
from controlplane.translate.mtls import MtlsPolicy, resolve_mtls
from controlplane.translate.resources import inbound_cluster_name, outbound_cluster_name

ClusterType = cluster_pb2.Cluster.DiscoveryType
V3 = config_source_pb2.ApiVersion.V3


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))


def _socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _set_http2(cluster: cluster_pb2.Cluster) -> None:
    """Speak HTTP/2 to the upstream, which gRPC and `http2` ports need."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster.typed_extension_protocol_options[names.HTTP_PROTOCOL_OPTIONS].CopyFrom(names.pack(options))


def uses_http2(protocol: PortProtocol) -> bool:
    return protocol in ("http2", "grpc")


def inbound_cluster(port: int, protocol: PortProtocol, *, app_address: str, connect_timeout: float) -> cluster_pb2.Cluster:
    """`inbound|<port>||`: a static cluster to the app on `app_address:port`."""
    name = inbound_cluster_name(port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=ClusterType.STATIC,
        connect_timeout=_duration(connect_timeout),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(app_address, port))
                        )
                    ]
                )
            ],
        ),
    )
    if uses_http2(protocol):
        _set_http2(cluster)
    return cluster


def passthrough_cluster(*, connect_timeout: float) -> cluster_pb2.Cluster:
    """`PassthroughCluster`: forwards to the connection's original destination."""
    return cluster_pb2.Cluster(
        name=names.PASSTHROUGH_CLUSTER,
        type=ClusterType.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.LbPolicy.CLUSTER_PROVIDED,
        connect_timeout=_duration(connect_timeout),
    )


@dataclass(frozen=True, slots=True)
class OutboundTarget:
    """One service port as callers see it, with the endpoints and identities behind it."""

    service: Service
    port: ServicePort
    host: str
    cluster: str
    endpoints: tuple[tuple[Endpoint, bool], ...]  # (endpoint, reached over mTLS)
    spiffe_ids: tuple[str, ...]


class _MtlsCache:
    """Resolves each workload's PeerAuthentication levels once per translation."""

    def __init__(self, state: MeshState) -> None:
        self._state = state
        self._policies: dict[tuple[str, str], MtlsPolicy] = {}

    def policy(self, workload: Workload) -> MtlsPolicy:
        key = (workload.namespace, workload.name)
        if key not in self._policies:
            self._policies[key] = resolve_mtls(self._state, namespace=workload.namespace, labels=workload.labels)
        return self._policies[key]


def _endpoint_mtls(endpoint: Endpoint, workload: Workload | None, cache: _MtlsCache) -> bool:
    if workload is None:
        # No workload in the state to ask: a known service account means a mesh identity.
        return bool(endpoint.service_account)
    if not workload.injected:
        return False
    return cache.policy(workload).mode_for_port(endpoint.port) != "DISABLE"


def _spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str | None:
    try:
        return str(SpiffeId.for_workload(trust_domain, namespace, service_account))
    except MeshError:
        return None


def plan_outbound(state: MeshState, index: MeshIndex) -> list[OutboundTarget]:
    """List every service port in the mesh as an outbound target, sorted by cluster name."""
    cache = _MtlsCache(state)
    trust_domain = state.config.trust_domain
    targets: list[OutboundTarget] = []
    for service in state.services:
        host = service.host(state.config.cluster_domain)
        selected = [w for w in index.selected_workloads(service) if w.injected]
        for port in service.ports:
            if port.protocol.upper() != "TCP":
                continue
            endpoints = []
            accounts = {(w.namespace, w.service_account) for w in selected}
            for endpoint in index.endpoints_of(service, port.port):
                workload = index.workload_of(endpoint)
                mtls = _endpoint_mtls(endpoint, workload, cache)
                endpoints.append((endpoint, mtls))
                account = endpoint.service_account or (workload.service_account if workload else "")
                if mtls and account:
                    accounts.add((endpoint.namespace, account))
            ids = {_spiffe_id(trust_domain, namespace, account) for namespace, account in accounts}
            targets.append(
                OutboundTarget(
                    service=service,
                    port=port,
                    host=host,
                    cluster=outbound_cluster_name(host, port.port),
                    endpoints=tuple(endpoints),
                    spiffe_ids=tuple(sorted(i for i in ids if i is not None)),
                )
            )
    return sorted(targets, key=lambda target: target.cluster)


def outbound_cluster(
    target: OutboundTarget, *, connect_timeout: float, source_address: str | None = None
) -> cluster_pb2.Cluster:
    """`outbound|<port>||<host>`: an EDS cluster originating mTLS to mesh endpoints.

    `source_address`, when given, is the local address upstream connections bind to.
    """
    cluster = cluster_pb2.Cluster(
        name=target.cluster,
        type=ClusterType.EDS,
        connect_timeout=_duration(connect_timeout),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=V3
            )
        ),
    )
    if source_address is not None:
        cluster.upstream_bind_config.source_address.CopyFrom(
            address_pb2.SocketAddress(address=source_address, port_value=0)
        )
    http2 = uses_http2(target.port.mesh_protocol)
    if http2:
        _set_http2(cluster)
    if target.spiffe_ids:
        match = struct_pb2.Struct()
        match.update({names.TLS_MODE_KEY: names.TLS_MODE_MUTUAL})
        cluster.transport_socket_matches.append(
            cluster_pb2.Cluster.TransportSocketMatch(
                name=f"{names.TLS_MODE_KEY}-{names.TLS_MODE_MUTUAL}",
                match=match,
                transport_socket=tls.upstream_tls_socket(
                    spiffe_ids=target.spiffe_ids,
                    sni=f"outbound_.{target.port.port}_._.{target.host}",
                    alpn=("h2",) if http2 else (),
                ),
            )
        )
    return cluster


def load_assignment(target: OutboundTarget) -> endpoint_pb2.ClusterLoadAssignment:
    """Build the ClusterLoadAssignment of an outbound cluster, endpoints sorted by address and port."""
    lb_endpoints = []
    for endpoint, mtls in target.endpoints:
        lb_endpoint = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(endpoint.address, endpoint.port))
        )
        if mtls and target.spiffe_ids:
            lb_endpoint.metadata.filter_metadata[names.TRANSPORT_SOCKET_MATCH_KEY].update(
                {names.TLS_MODE_KEY: names.TLS_MODE_MUTUAL}
            )
        lb_endpoints.append(lb_endpoint)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=target.cluster)
    if lb_endpoints:
        assignment.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints))
    return assignment
