"""Default listen addresses of the control plane and the HOST:PORT syntax they use."""

from __future__ import annotations

# Mutual TLS: ADS and certificate renewal. The port is fixed by the sidecar bootstrap.
DEFAULT_MTLS_ADDRESS = "0.0.0.0:15012"
# Server-only TLS: first certificates for callers that hold a token but no SVID yet.
DEFAULT_BOOTSTRAP_ADDRESS = "0.0.0.0:15013"
# Plain HTTP: /healthz, /readyz, /metrics and the debug API.
DEFAULT_ADMIN_ADDRESS = "0.0.0.0:15014"


def split_address(address: str) -> tuple[str, int]:
    """Split `HOST:PORT` (or `[IPV6]:PORT`) into host and port; raise ValueError otherwise.

    Port 0 is accepted and means "any free port".
    """
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address {address!r} is not HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
