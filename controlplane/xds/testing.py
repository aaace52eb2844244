"""Throwaway certificates and sample Envoy resources for xDS tests and benchmarks.

Nothing here is used by the running control plane. The certificate authority is an in-memory
ECDSA P-256 root that signs X.509-SVIDs (one URI SAN, CA=false, digitalSignature, serverAuth and
clientAuth) for test servers and clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from controlplane.model.types import MeshState, Proxy
from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ProxyConfig

BACKDATE = datetime.timedelta(minutes=1)


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (mode 0600) and return their paths."""
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem)
        return cert_path, key_path


class TestAuthority:
    """An in-memory root CA that issues SVIDs for one trust domain."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str = "cluster.local") -> None:
        self.trust_domain = trust_domain
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmesh test root")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, spiffe_id: str, *, dns_names: tuple[str, ...] = (), ip_loopback: bool = False
    ) -> Credential:
        """Issue a one-hour SVID for `spiffe_id`, optionally with DNS names and 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        sans += [x509.DNSName(name) for name in dns_names]
        if ip_loopback:
            sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Credential(cert.public_bytes(serialization.Encoding.PEM), key_pem)


# ----- sample resources ---------------------------------------------------------------------


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def eds_cluster(name: str, *, connect_timeout_ms: int = 1000) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.FromMilliseconds(connect_timeout_ms)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    # A zero initial_fetch_timeout disables it, so the cluster stays warming until it gets a
    # ClusterLoadAssignment instead of giving up after Envoy's default 15 s.
    cluster.eds_cluster_config.eds_config.initial_fetch_timeout.SetInParent()
    return cluster


def load_assignment(name: str, *endpoints: tuple[str, int]) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    locality = assignment.endpoints.add()
    for host, port in endpoints:
        lb = locality.lb_endpoints.add()
        lb.endpoint.address.socket_address.CopyFrom(
            address_pb2.SocketAddress(address=host, port_value=port)
        )
    return assignment


def http_listener(
    name: str, *, port: int, route_name: str, host: str = "127.0.0.1", chains: int = 1
) -> listener_pb2.Listener:
    """Build an HTTP listener whose routes come from RDS; `chains=2` duplicates its filter chain."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_name
    manager.rds.config_source.CopyFrom(ads_source())
    router = manager.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    listener = listener_pb2.Listener(name=name)
    listener.address.socket_address.CopyFrom(address_pb2.SocketAddress(address=host, port_value=port))
    for _ in range(chains):
        chain: listener_components_pb2.FilterChain = listener.filter_chains.add()
        network_filter = chain.filters.add(name="envoy.filters.network.http_connection_manager")
        network_filter.typed_config.Pack(manager)
    return listener


def direct_response_route(name: str, body: str, *, cluster: str = "") -> route_pb2.RouteConfiguration:
    """Build a route config that returns 200 with `body` on `/` and sends `/upstream` to `cluster`."""
    config = route_pb2.RouteConfiguration(name=name)
    host: route_components_pb2.VirtualHost = config.virtual_hosts.add(name="all", domains=["*"])
    if cluster:
        upstream = host.routes.add()
        upstream.match.prefix = "/upstream"
        upstream.route.cluster = cluster
    route = host.routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = body
    return config


def proxy_config(**by_type: Mapping[str, Message]) -> ProxyConfig:
    """Build a ProxyConfig from keyword groups: listeners=, routes=, clusters=, endpoints=, secrets=."""
    keys = {
        "listeners": LISTENER,
        "routes": ROUTE,
        "clusters": CLUSTER,
        "endpoints": ENDPOINT,
        "secrets": SECRET,
    }
    return ProxyConfig(resources={keys[k]: dict(v) for k, v in by_type.items()})


@dataclass
class FakeTranslator:
    """Stands in for `translate(state, proxy)`: returns `config` and records every call."""

    config: ProxyConfig = field(default_factory=ProxyConfig)
    calls: list[tuple[MeshState, Proxy]] = field(default_factory=list)

    def __call__(self, state: MeshState, proxy: Proxy) -> ProxyConfig:
        self.calls.append((state, proxy))
        return self.config
