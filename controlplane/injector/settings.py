"""Mesh-wide settings of the sidecar template, and the pod annotations that adjust capture per pod."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from controlplane.errors import ConfigError
from controlplane.iptables.rules import (
    PROXY_GID,
    PROXY_UID,
    CaptureConfigError,
    CaptureSettings,
    parse_cidr_list,
    parse_port_list,
)
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN
from controlplane.server.tls import control_plane_dns_names
from controlplane.translate.resources import CONTROL_PLANE_GRPC_PORT

# Bumped whenever the injected containers or volumes change shape; recorded in idmesh.io/status.
TEMPLATE_VERSION = "1"

EXCLUDE_INBOUND_PORTS_ANNOTATION = "idmesh.io/exclude-inbound-ports"
EXCLUDE_OUTBOUND_PORTS_ANNOTATION = "idmesh.io/exclude-outbound-ports"
EXCLUDE_OUTBOUND_IP_RANGES_ANNOTATION = "idmesh.io/exclude-outbound-ip-ranges"

TOKEN_AUDIENCE = "idmesh"
ROOT_CERT_CONFIG_MAP = "idmesh-root-cert"
# The Kubernetes API rejects projected token lifetimes under 10 minutes.
MIN_TOKEN_EXPIRATION_SECONDS = 600


@dataclass(frozen=True, slots=True)
class InjectionSettings:
    """Mesh-wide choices for every injected pod; the defaults match the install manifests."""

    proxy_image: str = "ghcr.io/idmesh/proxy:0.1.0"
    # The init container runs `idmesh-iptables` from the same package; None means `proxy_image`.
    init_image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    control_plane_address: str = f"{control_plane_dns_names(DEFAULT_ROOT_NAMESPACE)[0]}:{CONTROL_PLANE_GRPC_PORT}"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    token_audience: str = TOKEN_AUDIENCE
    token_expiration_seconds: int = 3600
    root_cert_config_map: str = ROOT_CERT_CONFIG_MAP
    proxy_uid: int = PROXY_UID
    proxy_gid: int = PROXY_GID
    # A restartable init container (Kubernetes 1.29 and later) starts before the application
    # and does not keep a Job's pod alive; False injects an ordinary container instead.
    native_sidecar: bool = True
    proxy_cpu_request: str = "100m"
    proxy_memory_request: str = "128Mi"
    proxy_memory_limit: str = "1Gi"
    log_level: str = "info"
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_ip_ranges: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.token_expiration_seconds < MIN_TOKEN_EXPIRATION_SECONDS:
            raise ConfigError(
                f"token expiration {self.token_expiration_seconds} s is below the Kubernetes minimum "
                f"of {MIN_TOKEN_EXPIRATION_SECONDS} s",
                value=self.token_expiration_seconds,
            )
        if self.proxy_uid == 0:
            raise ConfigError("the proxy UID must not be 0: iptables exempts that UID from capture, "
                              "and root is every init process", value=self.proxy_uid)


def capture_settings(settings: InjectionSettings, pod_annotations: Mapping[str, str]) -> tuple[CaptureSettings, list[str]]:
    """Combine mesh-wide exclusions with the pod's exclusion annotations.

    An annotation whose value does not parse is ignored as a whole and reported as a warning,
    so the pod is still created, with more traffic captured rather than less.
    """
    warnings: list[str] = []

    def annotation(name: str, parse) -> tuple:
        text = pod_annotations.get(name)
        if text is None:
            return ()
        try:
            return parse(text, source=f"annotation {name}")
        except CaptureConfigError as exc:
            warnings.append(f"{exc}; the annotation is ignored")
            return ()

    inbound = annotation(EXCLUDE_INBOUND_PORTS_ANNOTATION, parse_port_list)
    outbound = annotation(EXCLUDE_OUTBOUND_PORTS_ANNOTATION, parse_port_list)
    ranges = annotation(EXCLUDE_OUTBOUND_IP_RANGES_ANNOTATION, parse_cidr_list)
    capture = CaptureSettings(
        proxy_uid=settings.proxy_uid,
        proxy_gid=settings.proxy_gid,
        exclude_inbound_ports=tuple(sorted(set(settings.exclude_inbound_ports) | set(inbound))),
        exclude_outbound_ports=tuple(sorted(set(settings.exclude_outbound_ports) | set(outbound))),
        exclude_outbound_ip_ranges=tuple(dict.fromkeys((*settings.exclude_outbound_ip_ranges, *ranges))),
    )
    return capture, warnings
