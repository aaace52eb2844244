"""TLS for the control plane's gRPC server: its serving certificate and the verified peer identity.

The control plane serves with an X.509-SVID for its own SPIFFE ID,
`spiffe://<trust domain>/ns/<root namespace>/sa/idmesh-controlplane`, that the mesh CA issues
at start. The private key is generated in memory and never written to disk. The certificate
also carries DNS SANs, because gRPC clients check the server's host name against DNS SANs
(the X.509-SVID profile allows SANs other than the single URI SAN).

grpc's Python API offers two client certificate modes only: not requested at all, or required
and verified. There is no "verify if presented" mode. So the server listens twice, with the same
services: a mutual TLS port where every caller presents an SVID (ADS, certificate renewal), and
a bootstrap port that never requests one, for callers that prove their identity with a token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from cryptography import x509

from controlplane.identity.svid import format_serial
from controlplane.errors import MeshError, SvidError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import validate_svid
from controlplane.log import get_logger

log = get_logger("server")

CONTROL_PLANE_SERVICE_ACCOUNT = "idmesh-controlplane"

# Keys that grpc core (1.85) puts in the auth context of a TLS call. `x509_pem_cert` is the
# verified client leaf, present only when the client sent a certificate that passed verification.
AUTH_CONTEXT_PEER_CERTIFICATE = "x509_pem_cert"


def control_plane_spiffe_id(trust_domain: str, root_namespace: str) -> SpiffeId:
    """Return the control plane's own SPIFFE ID in `trust_domain`."""
    return SpiffeId.for_workload(trust_domain, root_namespace, CONTROL_PLANE_SERVICE_ACCOUNT)


def control_plane_dns_names(root_namespace: str) -> tuple[str, ...]:
    """Return the DNS names the serving certificate carries.

    `idmesh-controlplane.<root namespace>.svc` is the in-cluster Service name; `localhost` lets
    local-mode clients dial `localhost:<port>` without a target name override.
    """
    return (f"{CONTROL_PLANE_SERVICE_ACCOUNT}.{root_namespace}.svc", "localhost")


@dataclass(frozen=True, slots=True)
class ServingMaterial:
    """One serving certificate: chain (leaf first), its key, and the roots clients are checked against."""

    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes
    spiffe_id: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime

    def renew_at(self) -> datetime:
        """Return the time to replace this certificate: half-way through its lifetime."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def __repr__(self) -> str:
        # The key must never reach a log line or a traceback through repr().
        return f"ServingMaterial(spiffe_id={self.spiffe_id}, serial={format_serial(self.serial)}, not_after={self.not_after})"


class ServingCredentials:
    """The current serving material, replaceable while the server runs.

    grpc calls the fetcher of `dynamic_ssl_server_credentials` before each new TLS handshake, so
    a replaced certificate or trust bundle applies to new connections at once, and open
    connections keep the old one until they close.
    """

    def __init__(self, material: ServingMaterial) -> None:
        self._lock = threading.Lock()
        self._material = material
        self._generation = 0

    @property
    def material(self) -> ServingMaterial:
        return self._material

    def replace(self, material: ServingMaterial) -> None:
        with self._lock:
            self._material = material
            self._generation += 1

    def server_credentials(self, *, require_client_certificate: bool) -> grpc.ServerCredentials:
        """Build grpc server credentials that follow every later `replace()`."""
        seen = {"generation": self._generation}

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by grpc core on its own thread; returning None keeps the current configuration.
            with self._lock:
                if self._generation == seen["generation"]:
                    return None
                seen["generation"] = self._generation
                return self._configuration(self._material, require_client_certificate)

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._material, require_client_certificate),
            fetch,
            require_client_authentication=require_client_certificate,
        )

    @staticmethod
    def _configuration(material: ServingMaterial, with_roots: bool) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.chain_pem)],
            root_certificates=material.roots_pem if with_roots else None,
        )


def peer_spiffe_id(context: grpc.aio.ServicerContext) -> SpiffeId | None:
    """Return the SPIFFE ID of the client certificate that TLS verified for this call.

    Return None when the caller presented no certificate (always so on the bootstrap port).
    Raise `SvidError` when the verified certificate is not a valid X.509-SVID, for example one
    with two URI SANs. Callers must treat that as an authentication failure, not as anonymous.
    """
    values = context.auth_context().get(AUTH_CONTEXT_PEER_CERTIFICATE)
    if not values:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(values[0])
    except ValueError as exc:
        raise SvidError(f"the client certificate cannot be parsed: {exc}", defect="unparsable") from exc
    return validate_svid(certificate)


# Returns fresh serving material valid from `now`.
IssueServingMaterial = Callable[[datetime], ServingMaterial]

# Wait between attempts when issuing a new serving certificate fails.
RENEWAL_RETRY = timedelta(seconds=30)


async def keep_serving_certificate_fresh(
    credentials: ServingCredentials,
    issue: IssueServingMaterial,
    *,
    clock: Callable[[], datetime],
) -> None:
    """Replace the serving certificate half-way through each lifetime, until cancelled.

    A failed issuance is logged and retried every `RENEWAL_RETRY`; the old certificate keeps
    serving meanwhile, and clients start failing only once it expires.
    """
    while True:
        delay = (credentials.material.renew_at() - clock()).total_seconds()
        await asyncio.sleep(max(delay, 0.0))
        try:
            material = issue(clock())
        except MeshError as exc:
            log.error(
                "server.certificate.renewal_failed",
                error=str(exc),
                not_after=credentials.material.not_after.isoformat(),
            )
            await asyncio.sleep(RENEWAL_RETRY.total_seconds())
            continue
        credentials.replace(material)
        log.info(
            "server.certificate.renewed",
            spiffe_id=str(material.spiffe_id),
            serial=format_serial(material.serial),
            not_after=material.not_after.isoformat(),
        )
