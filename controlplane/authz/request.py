"""A request or connection as Envoy's RBAC filters see it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

from controlplane.authz.errors import InvalidRequestError

# Pseudo-headers that come from the dedicated fields of `Request`, never from `headers`.
PSEUDO_FIELDS = {":method": "method", ":path": "path", ":authority": "host"}


@dataclass(frozen=True, slots=True)
class Request:
    """What the RBAC filters of one inbound listener see.

    `principal` is the URI SAN of the peer's verified certificate; None means the connection
    has no TLS peer certificate. `tls` says whether the connection is TLS at all (None: TLS
    exactly when `principal` is set). `source_ip` is the downstream direct remote address and
    `remote_ip` the address Envoy derived from X-Forwarded-For (None: the same as
    `source_ip`). `method`, `path` and `host` become the `:method`, `:path` and `:authority`
    pseudo-headers; pass the path as Envoy has it after normalization, with its query string.
    `headers` maps a header name to one value or a list of values, which Envoy joins with ",".
    Network (TCP) RBAC ignores every HTTP field.
    """

    source_ip: str
    destination_port: int
    destination_ip: str = "127.0.0.1"
    principal: str | None = None
    tls: bool | None = None
    peer_dns_sans: tuple[str, ...] = ()
    peer_subject: str = ""
    remote_ip: str | None = None
    sni: str = ""
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: Mapping[str, str | Sequence[str]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("source_ip", "destination_ip", "remote_ip"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                ipaddress.ip_address(value)
            except ValueError as exc:
                raise InvalidRequestError(
                    f"{name} {value!r} is not an IP address", field=name, value=value
                ) from exc
        if not 0 <= self.destination_port <= 65535:
            raise InvalidRequestError(
                f"destination_port {self.destination_port} is not a port number (0-65535)",
                field="destination_port",
                value=self.destination_port,
            )
        for name in self.headers:
            if name.lower() in PSEUDO_FIELDS:
                raise InvalidRequestError(
                    f"header {name!r} is set through the field {PSEUDO_FIELDS[name.lower()]!r}, not headers",
                    field="headers",
                    value=name,
                )

    @property
    def has_tls(self) -> bool:
        return self.principal is not None if self.tls is None else self.tls

    @property
    def effective_remote_ip(self) -> str:
        return self.remote_ip if self.remote_ip is not None else self.source_ip

    @property
    def peer_uri_sans(self) -> tuple[str, ...]:
        return (self.principal,) if self.principal is not None else ()

    def http_headers(self) -> dict[str, str]:
        """Header map as the HTTP RBAC filter reads it: lower-case names, repeated values joined by ","."""
        collected: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            values = [value] if isinstance(value, str) else list(value)
            collected.setdefault(name.lower(), []).extend(values)
        out = {name: ",".join(values) for name, values in collected.items() if values}
        for pseudo, attribute in PSEUDO_FIELDS.items():
            value = getattr(self, attribute)
            if value is not None:
                out[pseudo] = value
        return out
