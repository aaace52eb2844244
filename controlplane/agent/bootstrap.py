"""The Envoy bootstrap the agent writes for its workload.

Envoy starts with two static clusters. `sds-grpc` reaches the agent's SDS server on a Unix
socket. `xds-grpc` reaches the control plane's ADS over mutual TLS, with the certificate
(`default`) and the trust bundle (`ROOTCA`) both from `sds-grpc`: the ADS connection cannot
take its own trust bundle from ADS. Listeners and clusters then arrive over ADS.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Literal, Mapping

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2, json_format, struct_pb2

from controlplane.translate import names
from controlplane.translate.resources import (
    META_APP_ADDRESS,
    META_INSTANCE_IP,
    META_LABELS,
    META_MODE,
    META_NAMESPACE,
    META_SERVICE_ACCOUNT,
    META_WORKLOAD,
    ROOTCA_SECRET,
    SDS_CLUSTER,
    XDS_CLUSTER,
)
from controlplane.translate.tls import uri_san_matchers, workload_certificate_sds

V3 = config_source_pb2.ApiVersion.V3
AdsType = Literal["grpc", "delta"]
_ADS_API_TYPES = {
    "grpc": config_source_pb2.ApiConfigSource.ApiType.GRPC,
    "delta": config_source_pb2.ApiConfigSource.ApiType.DELTA_GRPC,
}


@dataclass(frozen=True, slots=True)
class BootstrapParams:
    """Everything that goes into one workload's bootstrap."""

    node_id: str
    namespace: str
    service_account: str
    workload: str
    instance_ip: str
    mode: Literal["local", "kubernetes"]
    app_address: str
    control_plane_host: str
    control_plane_port: int
    control_plane_id: str
    sds_socket: str
    admin_port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    admin_host: str = "127.0.0.1"
    ads_type: AdsType = "grpc"
    control_plane_sni: str = ""


def node_id(*, instance_ip: str, workload: str, namespace: str) -> str:
    """Return the Envoy node ID `sidecar~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`."""
    return f"sidecar~{instance_ip}~{workload}.{namespace}~{namespace}.svc.cluster.local"


def _http2_options() -> dict[str, object]:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return {names.HTTP_PROTOCOL_OPTIONS: names.pack(options)}


def _endpoint(address: address_pb2.Address) -> endpoint_components_pb2.LocalityLbEndpoints:
    return endpoint_components_pb2.LocalityLbEndpoints(
        lb_endpoints=[endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))]
    )


def sds_cluster(socket_path: str) -> cluster_pb2.Cluster:
    """Return the static `sds-grpc` cluster: HTTP/2 to the agent's Unix socket."""
    cluster = cluster_pb2.Cluster(
        name=SDS_CLUSTER,
        type=cluster_pb2.Cluster.DiscoveryType.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=SDS_CLUSTER,
            endpoints=[_endpoint(address_pb2.Address(pipe=address_pb2.Pipe(path=socket_path)))],
        ),
    )
    for key, value in _http2_options().items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def agent_trust_bundle_sds() -> secret_pb2.SdsSecretConfig:
    """`ROOTCA` from the agent's socket, for the ADS connection only."""
    source = config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.ApiType.GRPC,
            transport_api_version=V3,
            grpc_services=[grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER))],
            set_node_on_first_message_only=True,
        ),
        resource_api_version=V3,
    )
    return secret_pb2.SdsSecretConfig(name=ROOTCA_SECRET, sds_config=source)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def xds_cluster(params: BootstrapParams) -> cluster_pb2.Cluster:
    """Return the static `xds-grpc` cluster: mutual TLS to the control plane, whose SPIFFE ID is checked."""
    tls = tls_pb2.UpstreamTlsContext(
        sni=params.control_plane_sni or params.control_plane_host,
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2"],
            tls_certificate_sds_secret_configs=[workload_certificate_sds()],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_typed_subject_alt_names=uri_san_matchers(exact=[params.control_plane_id])
                ),
                validation_context_sds_secret_config=agent_trust_bundle_sds(),
            ),
        ),
    )
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=params.control_plane_host, port_value=params.control_plane_port)
    )
    discovery = cluster_pb2.Cluster.DiscoveryType
    cluster = cluster_pb2.Cluster(
        name=XDS_CLUSTER,
        type=discovery.STATIC if _is_ip(params.control_plane_host) else discovery.STRICT_DNS,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=XDS_CLUSTER, endpoints=[_endpoint(address)]),
        transport_socket=base_pb2.TransportSocket(name=names.TLS_TRANSPORT_SOCKET, typed_config=names.pack(tls)),
    )
    for key, value in _http2_options().items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def node_metadata(params: BootstrapParams) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            META_NAMESPACE: params.namespace,
            META_SERVICE_ACCOUNT: params.service_account,
            META_WORKLOAD: params.workload,
            META_INSTANCE_IP: params.instance_ip,
            META_MODE: params.mode,
            META_APP_ADDRESS: params.app_address,
            META_LABELS: dict(params.labels),
        }
    )
    return metadata


def build_bootstrap(params: BootstrapParams) -> bootstrap_pb2.Bootstrap:
    """Return the bootstrap message for one workload's Envoy."""
    ads_source = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=V3)
    return bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=params.node_id, cluster=f"{params.workload}.{params.namespace}", metadata=node_metadata(params)),
        admin=bootstrap_pb2.Admin(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=params.admin_host, port_value=params.admin_port))
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[xds_cluster(params), sds_cluster(params.sds_socket)]),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=_ADS_API_TYPES[params.ads_type],
                transport_api_version=V3,
                grpc_services=[grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER))],
                set_node_on_first_message_only=True,
            ),
            cds_config=ads_source,
            lds_config=ads_source,
        ),
    )


def bootstrap_json(message: bootstrap_pb2.Bootstrap) -> str:
    """Serialize a bootstrap as the JSON that `envoy -c FILE` reads."""
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2, sort_keys=True) + "\n"
