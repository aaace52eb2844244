"""Find the inbound filter chain Envoy picks for a connection, and the RBAC filters on it.

The input is a proxy's listeners in the JSON form of the control plane's debug API
(`MessageToDict` output, lowerCamelCase with `@type` in each Any). In local mode each workload
port is its own listener on `<proxy ip>:<port>`. In kubernetes mode every port is a filter
chain of `virtualInbound`, chosen by `filter_chain_match.destination_port`. A PERMISSIVE port
has a `tls` chain and a `raw_buffer` chain, which the TLS inspector distinguishes.

Chain selection follows Envoy's order for the fields the translator sets: a chain naming the
destination port beats one naming no port, then a chain naming the transport protocol beats
one naming none. Chains that match on other fields are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

# Importing these modules registers their messages, so ParseDict can read the Any fields of a
# listener: listener filters, network filters, HTTP filters, access loggers, transport sockets.
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from google.protobuf import json_format

from controlplane.authz.errors import InvalidRbacError, UnsupportedRbacError
from controlplane.authz.paths import PathSettings
from controlplane.translate.resources import LISTENER

Transport = Literal["mtls", "plaintext"]

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# FilterChainMatch fields the selection below understands; any other set field is refused.
_UNDERSTOOD_MATCH_FIELDS = frozenset({"destination_port", "transport_protocol"})


class NoInboundChainError(InvalidRbacError):
    """No inbound listener or filter chain serves the port; `ports` lists the ports that have one."""


@dataclass(frozen=True, slots=True)
class InboundChain:
    """The filter chain one inbound connection lands on.

    `transport` says whether the chain terminates TLS. `network_filters` are the listener
    filters up to and including the terminal one (HTTP connection manager or TCP proxy);
    `http_filters` and `path_settings` are set only when that terminal filter is an HTTP
    connection manager.
    """

    listener: str
    chain: str
    transport: Transport
    network_filters: tuple[listener_components_pb2.Filter, ...]
    http_filters: tuple[hcm_pb2.HttpFilter, ...] | None = None
    path_settings: PathSettings | None = None

    @property
    def protocol(self) -> Literal["http", "tcp"]:
        return "http" if self.http_filters is not None else "tcp"


@dataclass(frozen=True, slots=True)
class PortChains:
    """Every chain that can serve one port, by the transport protocol it expects."""

    listener: str
    chains: tuple[listener_components_pb2.FilterChain, ...]


def parse_listeners(resources: Mapping[str, Mapping[str, Any]]) -> list[listener_pb2.Listener]:
    """Read the listeners out of a `/debug/config` `resources` document."""
    listeners = []
    for name, document in sorted(resources.get(LISTENER, {}).items()):
        try:
            listeners.append(json_format.ParseDict(document, listener_pb2.Listener()))
        except json_format.ParseError as exc:
            raise UnsupportedRbacError(f"listener {name!r} cannot be read: {exc}", listener=name) from exc
    return listeners


def _is_inbound(listener: listener_pb2.Listener) -> bool:
    return listener.name.startswith("inbound_") or listener.name == "virtualInbound"


def _chain_port(chain: listener_components_pb2.FilterChain) -> int | None:
    match = chain.filter_chain_match
    return match.destination_port.value if match.HasField("destination_port") else None


def inbound_ports(listeners: Sequence[listener_pb2.Listener]) -> list[int]:
    """Ports that have an inbound listener (local mode) or an inbound chain (kubernetes mode)."""
    ports: set[int] = set()
    for listener in filter(_is_inbound, listeners):
        if listener.name == "virtualInbound":
            ports.update(p for p in map(_chain_port, listener.filter_chains) if p is not None)
        else:
            ports.add(listener.address.socket_address.port_value)
    return sorted(ports)


def chains_for_port(listeners: Sequence[listener_pb2.Listener], port: int) -> PortChains:
    """Return the chains of the inbound listener that serves `port`, or raise NoInboundChainError."""
    for listener in filter(_is_inbound, listeners):
        if listener.name == "virtualInbound":
            exact = [c for c in listener.filter_chains if _chain_port(c) == port]
            chains = exact or [c for c in listener.filter_chains if _chain_port(c) is None]
        elif listener.address.socket_address.port_value == port:
            chains = list(listener.filter_chains)
        else:
            continue
        if chains:
            return PortChains(listener.name, tuple(chains))
    ports = inbound_ports(listeners)
    raise NoInboundChainError(
        f"no inbound listener serves port {port}; inbound ports: {', '.join(map(str, ports)) or 'none'}",
        port=port,
        ports=ports,
    )


def _check_match_fields(chain: listener_components_pb2.FilterChain) -> None:
    unsupported = sorted(
        field.name for field, _ in chain.filter_chain_match.ListFields() if field.name not in _UNDERSTOOD_MATCH_FIELDS
    )
    if unsupported:
        raise UnsupportedRbacError(
            f"filter chain {chain.name!r} matches on {', '.join(unsupported)}, which chain selection does not support",
            chain=chain.name,
        )


def select_chain(port_chains: PortChains, *, tls: bool) -> listener_components_pb2.FilterChain | None:
    """Return the chain a TLS (or plaintext) connection lands on, or None when no chain accepts it.

    A chain with `transport_protocol` "" accepts both kinds of connection. If it has a TLS
    transport socket, a plaintext client then fails the handshake. If it has none, a TLS client's
    handshake is read as plaintext bytes. Either way the connection ends.
    """
    for chain in port_chains.chains:
        _check_match_fields(chain)
    transport_protocol = "tls" if tls else "raw_buffer"
    chains = port_chains.chains
    chosen = next((c for c in chains if c.filter_chain_match.transport_protocol == transport_protocol), None)
    if chosen is None:
        chosen = next((c for c in chains if not c.filter_chain_match.transport_protocol), None)
    if chosen is None or chosen.HasField("transport_socket") != tls:
        return None
    return chosen


def inbound_chain(listener: str, chain: listener_components_pb2.FilterChain) -> InboundChain:
    """Split a chain's filters into the network part and, for HTTP, the HTTP filters."""
    filters: list[listener_components_pb2.Filter] = []
    for item in chain.filters:
        filters.append(item)
        if item.typed_config.TypeName() == HCM_TYPE:
            manager = hcm_pb2.HttpConnectionManager()
            item.typed_config.Unpack(manager)
            return InboundChain(
                listener=listener,
                chain=chain.name,
                transport="mtls" if chain.HasField("transport_socket") else "plaintext",
                network_filters=tuple(filters),
                http_filters=tuple(manager.http_filters),
                path_settings=PathSettings.from_hcm(manager),
            )
    return InboundChain(
        listener=listener,
        chain=chain.name,
        transport="mtls" if chain.HasField("transport_socket") else "plaintext",
        network_filters=tuple(filters),
    )
