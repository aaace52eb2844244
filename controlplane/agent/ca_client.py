"""The agent's client for the control plane's CertificateService.

Every request carries a CSR for a key generated just before it, so each renewal also rotates
the key. The credential is either a bearer token in the `authorization` metadata (a join token
in local mode, a projected ServiceAccount token in Kubernetes) or, for a renewal, the current
SVID presented as the TLS client certificate.

The server is verified twice. gRPC checks its chain against the provisioned root plus the last
trust bundle, and its DNS or IP SAN against `server_name`; gRPC Python (1.85) cannot check URI
SANs. So before each request the client also makes one plain TLS handshake to the same address
and checks the server certificate's SPIFFE ID against `server_id`.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from typing import Callable

import grpc
from cryptography import x509

from controlplane.agent.credentials import Svid, build_csr, generate_private_key, svid_from_response
from controlplane.agent.errors import CAClientError
from controlplane.agent.rotation import backoff_delay
from controlplane.api import ca_pb2, ca_pb2_grpc
from controlplane.errors import IdentityError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import spiffe_id_from_certificate
from controlplane.log import get_logger

log = get_logger("agent.ca")

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
TokenSource = Callable[[], "str | None"]


def split_host_port(address: str) -> tuple[str, int]:
    """Split `HOST:PORT` or `[IPV6]:PORT`; raise `ValueError` naming the accepted form."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} is not HOST:PORT with a port in 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per request and the capped exponential backoff between them, in seconds."""

    max_attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    timeout: float = 10.0


class CAClient:
    """Requests X.509-SVIDs for one workload identity from the control plane."""

    def __init__(
        self,
        *,
        address: str,
        root_pem: bytes,
        server_id: SpiffeId,
        server_name: str | None = None,
        token_source: TokenSource,
        ttl_seconds: int = 0,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
    ) -> None:
        self.host, self.port = split_host_port(address)
        self.address = address
        self._roots = root_pem
        self.server_id = server_id
        self.server_name = server_name or self.host
        self._token_source = token_source
        self.ttl_seconds = ttl_seconds
        self.retry = retry
        self._rng = rng or random.Random()

    def trust_bundle(self, bundle_pem: bytes) -> None:
        """Also trust the roots of `bundle_pem` for the server, to follow a root rotation."""
        if bundle_pem and bundle_pem not in self._roots:
            self._roots = self._roots.rstrip(b"\n") + b"\n" + bundle_pem

    async def issue(self, spiffe_id: SpiffeId, current: Svid | None = None) -> Svid:
        """Return a new SVID for `spiffe_id`, renewing with `current` when it is given.

        Retry failures listed in `RETRYABLE_CODES` with backoff; raise `CAClientError` once the
        attempts are used up or at the first refusal that retrying cannot fix.
        """
        attempt = 0
        while True:
            try:
                return await self._issue_once(spiffe_id, current)
            except CAClientError as exc:
                attempt += 1
                if not exc.retryable or attempt >= self.retry.max_attempts:
                    raise
                delay = backoff_delay(attempt - 1, base=self.retry.base, cap=self.retry.cap, rng=self._rng)
                log.warning("agent.csr.retry", target=self.address, code=exc.code, attempt=attempt,
                            delay_seconds=round(delay, 3), error=str(exc))
                await asyncio.sleep(delay)

    async def _issue_once(self, spiffe_id: SpiffeId, current: Svid | None) -> Svid:
        await self.check_server_identity()
        key = generate_private_key()
        request = ca_pb2.CreateCertificateRequest(csr=build_csr(key, spiffe_id), validity_seconds=self.ttl_seconds)
        metadata: tuple[tuple[str, str], ...] = ()
        if current is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._roots, private_key=current.key_pem(), certificate_chain=current.chain_pem()
            )
        else:
            token = self._token_source()
            if not token:
                raise CAClientError(
                    "no credential for the CA: the token file or variable is empty and there is no SVID to renew with",
                    target=self.address, code="NO_CREDENTIAL", retryable=False,
                )
            credentials = grpc.ssl_channel_credentials(root_certificates=self._roots)
            metadata = (("authorization", f"Bearer {token.strip()}"),)
        options = [("grpc.ssl_target_name_override", self.server_name)]
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
            stub = ca_pb2_grpc.CertificateServiceStub(channel)
            try:
                response = await stub.CreateCertificate(request, metadata=metadata, timeout=self.retry.timeout)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                raise CAClientError(
                    f"CreateCertificate to {self.address} failed with {code.name}: {exc.details()}",
                    target=self.address, code=code.name, retryable=code in RETRYABLE_CODES,
                    renewal=current is not None,
                ) from exc
        try:
            return svid_from_response(
                cert_chain=response.cert_chain, trust_bundle=response.trust_bundle,
                spiffe_id=response.spiffe_id, key=key, expected_id=spiffe_id,
            )
        except IdentityError as exc:
            raise CAClientError(
                f"the CA at {self.address} returned an unusable certificate: {exc}",
                target=self.address, code="BAD_RESPONSE", retryable=False,
            ) from exc

    async def check_server_identity(self) -> None:
        """Handshake once with the server and check that its SPIFFE ID is `server_id`."""
        context = ssl.create_default_context(cadata=self._roots.decode())
        # The SPIFFE ID, not a host name, identifies the control plane, so it is checked below.
        context.check_hostname = False
        context.set_alpn_protocols(["h2"])
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context, server_hostname=self.server_name),
                timeout=self.retry.timeout,
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            verify = isinstance(exc, ssl.SSLCertVerificationError)
            raise CAClientError(
                f"TLS connection to the CA at {self.address} failed: {exc!r}",
                target=self.address, code="UNTRUSTED_SERVER" if verify else "UNAVAILABLE", retryable=not verify,
            ) from exc
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass
        try:
            presented = spiffe_id_from_certificate(x509.load_der_x509_certificate(der))
        except IdentityError as exc:
            raise CAClientError(
                f"the server at {self.address} has no usable SPIFFE ID: {exc}",
                target=self.address, code="UNTRUSTED_SERVER", retryable=False,
            ) from exc
        if presented != self.server_id:
            raise CAClientError(
                f"the server at {self.address} is {str(presented)!r}, not the control plane {str(self.server_id)!r}",
                target=self.address, code="UNTRUSTED_SERVER", retryable=False, presented=str(presented),
            )
