"""What the translator returns: one proxy's Envoy resources, keyed by xDS type URL and name.

Names that other parts rely on are defined here, so the translator, the xDS server, the agent's
bootstrap and meshctl agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Make before break: a type is pushed only after every type it refers to.
PUSH_ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
SHORT_NAMES = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS", SECRET: "SDS"}

# SDS secret names. `default` (the workload's certificate and key) comes from the mesh-agent on
# a Unix socket; `ROOTCA` (the trust bundle) comes from the control plane over ADS.
WORKLOAD_SECRET = "default"
ROOTCA_SECRET = "ROOTCA"
# Static clusters that the bootstrap defines: the control plane's ADS and the agent's SDS socket.
XDS_CLUSTER = "xds-grpc"
SDS_CLUSTER = "sds-grpc"

# Node metadata keys the agent sets and the control plane checks against the client certificate.
META_NAMESPACE = "NAMESPACE"
META_SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
META_WORKLOAD = "WORKLOAD_NAME"
META_INSTANCE_IP = "INSTANCE_IP"
META_MODE = "PROXY_MODE"
META_APP_ADDRESS = "APP_ADDRESS"
META_LABELS = "LABELS"

# Well-known ports, fixed by the sidecar contract.
INBOUND_CAPTURE_PORT = 15006
OUTBOUND_CAPTURE_PORT = 15001
ENVOY_ADMIN_PORT = 15000
AGENT_HEALTH_PORT = 15020
CONTROL_PLANE_GRPC_PORT = 15012
WEBHOOK_PORT = 15017
ADMIN_PORT = 15014


def outbound_cluster_name(host: str, port: int) -> str:
    """`outbound|<port>||<host>`, the Istio-style name for one service port."""
    return f"outbound|{port}||{host}"


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """One proxy's resources, ready to serve, plus what went wrong on the way.

    `resources[type_url][name]` is an xds-protos message. `problems` lists the policies or
    services that failed closed or were left out, as `TranslationError`s naming the object.
    """

    resources: Mapping[str, Mapping[str, Message]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    problems: tuple[Exception, ...] = ()
