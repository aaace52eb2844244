"""The control plane's gRPC server: one `grpc.aio` server listening on two TLS ports.

- the mutual TLS port (default 15012) requires a client X.509-SVID verified against the trust
  bundle. ADS streams and certificate renewals arrive here, and `peer_spiffe_id(context)` returns
  the caller's identity.
- the bootstrap port (default 15013) presents the same server certificate but requests no client
  certificate, so a workload without an SVID yet can send a CSR with a join token. There
  `peer_spiffe_id(context)` is always None; services that need a peer identity must reject
  such calls.

Every service registered with `add_service` is served on both ports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from controlplane.errors import ConfigError
from controlplane.log import get_logger
from controlplane.server.addresses import DEFAULT_BOOTSTRAP_ADDRESS, DEFAULT_MTLS_ADDRESS
from controlplane.server.tls import ServingCredentials

log = get_logger("server")


# grpc's generated `add_<Service>Servicer_to_server(servicer, server)` functions have this shape.
AddServicer = Callable[[Any, grpc.aio.Server], None]


class GrpcServer:
    """Register services, then `start()`; the ports are known after start."""

    def __init__(
        self,
        credentials: ServingCredentials,
        *,
        mtls_address: str = DEFAULT_MTLS_ADDRESS,
        bootstrap_address: str | None = DEFAULT_BOOTSTRAP_ADDRESS,
    ) -> None:
        self._credentials = credentials
        self._mtls_address = mtls_address
        self._bootstrap_address = bootstrap_address
        self._services: list[tuple[AddServicer, Any]] = []
        self._server: grpc.aio.Server | None = None
        self.mtls_port = 0
        self.bootstrap_port = 0

    def add_service(self, add_servicer: AddServicer, servicer: Any) -> None:
        """Serve `servicer` through grpc's generated `add_servicer` function; call before `start()`."""
        if self._server is not None:
            raise RuntimeError("services must be added before the gRPC server starts")
        self._services.append((add_servicer, servicer))

    async def start(self) -> None:
        # grpc enables SO_REUSEPORT by default, which would let a second control plane share the
        # port silently; without it, a port in use fails the start.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        for add_servicer, servicer in self._services:
            add_servicer(servicer, server)
        self.mtls_port = self._bind(
            server,
            self._mtls_address,
            self._credentials.server_credentials(require_client_certificate=True),
        )
        if self._bootstrap_address is not None:
            self.bootstrap_port = self._bind(
                server,
                self._bootstrap_address,
                self._credentials.server_credentials(require_client_certificate=False),
            )
        await server.start()
        self._server = server
        log.info(
            "server.grpc.started",
            mtls_address=_with_port(self._mtls_address, self.mtls_port),
            bootstrap_address=(
                _with_port(self._bootstrap_address, self.bootstrap_port) if self._bootstrap_address else None
            ),
        )

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting calls, let running calls finish for up to `grace_seconds`, then cancel them."""
        if self._server is None:
            return
        await self._server.stop(grace_seconds)
        self._server = None
        log.info("server.grpc.stopped")

    @staticmethod
    def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials) -> int:
        try:
            port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}", address=address) from exc
        if port == 0:
            raise ConfigError(f"cannot listen on {address}: the address is in use or invalid", address=address)
        return port


def _with_port(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"
