"""Names of listeners, route configurations, filters and hosts that the translator emits.

Cluster names and secret names live in `resources.py` because other components rely on them;
the names here matter only inside one proxy's configuration.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from controlplane.model.types import Service

# Kubernetes mode: iptables sends inbound traffic to 15006 and outbound traffic to 15001, and
# the original destination chooses a filter chain, as in Istio.
VIRTUAL_INBOUND = "virtualInbound"
VIRTUAL_OUTBOUND = "virtualOutbound"
# Local mode: the app sends every outbound call to `<proxy ip>:15001`, so one route
# configuration serves the whole listener.
LOCAL_OUTBOUND_ROUTE = "15001"

# Clusters for traffic to destinations the mesh does not know (kubernetes mode only).
PASSTHROUGH_CLUSTER = "PassthroughCluster"

# Endpoint metadata that selects the mTLS transport socket of an outbound cluster. Endpoints
# without it (workloads with no sidecar, or whose inbound port disables mTLS) get plaintext.
TRANSPORT_SOCKET_MATCH_KEY = "envoy.transport_socket_match"
TLS_MODE_KEY = "tlsMode"
TLS_MODE_MUTUAL = "idmesh"

# Canonical Envoy extension names.
HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
HTTP_ROUTER = "envoy.filters.http.router"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
ORIGINAL_DST = "envoy.filters.listener.original_dst"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
FILE_ACCESS_LOG = "envoy.access_loggers.file"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Ports the sidecar itself binds; a workload port among them cannot get an inbound listener.
RESERVED_PORTS = frozenset({15000, 15001, 15006, 15020, 15021, 15090})


def pack(message: Message) -> any_pb2.Any:
    """Wrap `message` in an Any with deterministic bytes, so equal input gives equal output."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def local_inbound_listener_name(ip: str, port: int) -> str:
    return f"inbound_{ip}_{port}"


def kubernetes_route_name(port: int) -> str:
    """Route configuration for outbound HTTP on one port, shared by every service on it."""
    return str(port)


def virtual_host_name(host: str, port: int) -> str:
    return f"{host}:{port}"


def service_domains(
    service: Service,
    port: int,
    *,
    proxy_namespace: str,
    cluster_domain: str,
    with_bare_host: bool,
) -> list[str]:
    """List the authorities under which a caller in `proxy_namespace` reaches `service:port`.

    These follow Kubernetes DNS: `name.namespace.svc.<cluster domain>` and `name.namespace`
    resolve from every namespace, while the short `name` resolves only inside the service's
    own namespace through the resolver's search path. Each host comes with `:port`, and bare as
    well when `with_bare_host` is set (kubernetes mode, where the listener port already
    selected the route configuration) or when the port is 80 (clients omit the default port).
    """
    hosts = [service.host(cluster_domain), f"{service.name}.{service.namespace}"]
    if service.namespace == proxy_namespace:
        hosts.append(service.name)
    if service.cluster_ip and with_bare_host:
        hosts.append(service.cluster_ip)
    domains: list[str] = []
    for host in hosts:
        domains.append(f"{host}:{port}")
        if with_bare_host or port == 80:
            domains.append(host)
    return domains
