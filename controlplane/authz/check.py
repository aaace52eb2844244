"""Decide one call against a proxy's inbound configuration, step by step as Envoy does.

1. The listener and filter chain for the port and the connection's transport (TLS or not).
   A caller without a certificate cannot reach a port whose only chain requires mutual TLS,
   and a port with only a plaintext chain never receives the caller's certificate, because
   the caller's sidecar sends plaintext to it.
2. The network RBAC filters of the chain, on the connection.
3. For HTTP, the connection manager's path rewriting (see `paths.py`), then the HTTP RBAC
   filters on the request with the rewritten path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, Mapping, Sequence

from envoy.config.listener.v3 import listener_pb2

from controlplane.authz.evaluate import Decision, evaluate
from controlplane.authz.inbound import InboundChain, chains_for_port, inbound_chain, select_chain
from controlplane.authz.paths import NormalizedPath, normalize
from controlplane.authz.request import Request

Stage = Literal["transport", "network-rbac", "path", "http-rbac"]


@dataclass(frozen=True, slots=True)
class Call:
    """One call to check: who calls, and what they send.

    `principal` is the caller's SPIFFE ID, None for a caller without a certificate.
    `plaintext` sends plaintext even when the caller has a certificate. `path` is the
    request-target as the caller sends it, before Envoy normalizes it.
    """

    port: int
    source_ip: str
    destination_ip: str
    principal: str | None = None
    plaintext: bool = False
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What Envoy does with the call, and the evidence.

    `stage` names the step that decided: `transport` (no chain accepts the connection),
    `network-rbac`, `path` (the connection manager responds 400 before any filter) or
    `http-rbac`. `decision` is the RBAC decision of the deciding stage, None for the others.
    `principal_seen` is the principal the RBAC filters saw.
    """

    allowed: bool
    stage: Stage
    reason: str
    chain: InboundChain | None = None
    tls: bool = False
    principal_seen: str | None = None
    path: NormalizedPath | None = None
    network: Decision | None = None
    http: Decision | None = None
    notes: tuple[str, ...] = ()

    @property
    def decision(self) -> Decision | None:
        """The RBAC decision that decided, or None when no RBAC filter did."""
        if self.stage == "http-rbac":
            return self.http
        if self.stage == "network-rbac":
            return self.network
        return None


def check_call(listeners: Sequence[listener_pb2.Listener], call: Call) -> Outcome:
    """Decide `call` against the inbound listeners of the callee's proxy."""
    port_chains = chains_for_port(listeners, call.port)
    notes: list[str] = []
    tls = call.principal is not None and not call.plaintext
    chain = select_chain(port_chains, tls=tls)
    if chain is None and tls:
        notes.append(
            f"port {call.port} accepts plaintext only (mTLS mode DISABLE), so the caller's sidecar "
            "sends plaintext and the callee sees no principal"
        )
        tls = False
        chain = select_chain(port_chains, tls=False)
    if chain is None:
        return Outcome(
            allowed=False,
            stage="transport",
            reason=f"port {call.port} requires mutual TLS; a caller without a certificate fails the TLS handshake "
            "and the connection is reset",
            notes=tuple(notes),
        )
    inbound = inbound_chain(port_chains.listener, chain)
    principal = call.principal if tls else None
    request = Request(
        source_ip=call.source_ip,
        destination_port=call.port,
        destination_ip=call.destination_ip,
        principal=principal,
        tls=tls,
        method=call.method,
        host=call.host,
        headers=dict(call.headers),
    )
    common = {"chain": inbound, "tls": tls, "principal_seen": principal}

    network = evaluate(inbound.network_filters, request, kind="network")
    if not network.allowed or inbound.http_filters is None:
        return Outcome(network.allowed, "network-rbac", network.reason, network=network, notes=tuple(notes), **common)

    assert inbound.path_settings is not None
    path = normalize(call.path, inbound.path_settings)
    if path.rejected is not None:
        return Outcome(
            False, "path", f"Envoy answers 400 before authorization: {path.rejected}",
            path=path, network=network, notes=tuple(notes), **common,
        )
    if path.redirected:
        notes.append(f"Envoy redirects the request to {path.path}; the decision is for the redirected request")
    http = evaluate(inbound.http_filters, replace(request, path=path.path), kind="http")
    return Outcome(http.allowed, "http-rbac", http.reason, path=path, network=network, http=http, notes=tuple(notes), **common)

