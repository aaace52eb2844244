"""The `idmesh.ca.v1.CertificateService` servicer: attest the caller, then sign its CSR.

Failures map to gRPC status codes by one rule each:

| status | when |
| --- | --- |
| UNAUTHENTICATED | no credential, or a credential that proves nothing (bad, reused, expired or forged join token; ServiceAccount token that the TokenReview or the pod checks reject; client certificate that is not a valid SVID) |
| PERMISSION_DENIED | the caller is authenticated but requests a certificate its credential does not grant: a CSR URI SAN naming another SPIFFE ID, or an identity the CA may not issue |
| INVALID_ARGUMENT | the request itself is unacceptable: malformed CSR, bad CSR signature, weak or unsupported key, negative validity |
| UNAVAILABLE | the credential cannot be checked now because the Kubernetes API is unreachable; the caller should retry |
| INTERNAL | the CA cannot sign, for example because its signing certificate expired |

The status details carry the error message, which never contains a token or a key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import grpc
import prometheus_client

from controlplane.api import ca_pb2, ca_pb2_grpc
from controlplane.errors import AttestationError, CAError, CSRRejected, SvidError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.pemfiles import certificate_to_pem
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.log import get_logger
from controlplane.server.attestation import Attestor
from controlplane.server.tls import peer_spiffe_id

log = get_logger("ca")

# AttestationError reason for a credential that could not be checked because the API was down.
API_UNAVAILABLE = "api-unavailable"
# CSRRejected reasons that mean "not yours to ask for"; every other reason is a bad request.
PERMISSION_REASONS = frozenset({"identity-mismatch", "other-trust-domain", "no-workload-path"})

CERTIFICATES_ISSUED = prometheus_client.Counter(
    "idmesh_ca_certificates_issued",
    "CreateCertificate calls by outcome: issued, or the gRPC status of the rejection.",
    ["result"],
)
# Create every series up front, so dashboards see zeros rather than missing series.
for _result in ("issued", "unauthenticated", "permission_denied", "invalid_argument", "unavailable", "internal"):
    CERTIFICATES_ISSUED.labels(result=_result)
SIGN_SECONDS = prometheus_client.Histogram(
    "idmesh_ca_sign_seconds",
    "Time to check a CSR and sign its certificate, in seconds.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


class RequestRejected(Exception):
    """A CreateCertificate call that ends with `code` and `details`; `reason` is for logs and metrics."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


class CertificateServicer(ca_pb2_grpc.CertificateServiceServicer):
    """Sign CSRs for callers whose identity the attestor proves."""

    def __init__(
        self,
        ca: CertificateAuthority,
        attestor: Attestor,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._ca = ca
        self._attestor = attestor
        self._clock = clock

    async def CreateCertificate(  # noqa: N802 - the name is fixed by the generated base class
        self,
        request: ca_pb2.CreateCertificateRequest,
        context: grpc.aio.ServicerContext,
    ) -> ca_pb2.CreateCertificateResponse:
        try:
            now = self._clock()
            identity = await self._attest(context, now)
            response = self._create_certificate(request, identity, now)
        except RequestRejected as exc:
            CERTIFICATES_ISSUED.labels(result=exc.code.name.lower()).inc()
            # abort() raises, so the call ends here with this status.
            await context.abort(exc.code, exc.details)
            raise AssertionError("grpc.aio context.abort() returned") from exc
        CERTIFICATES_ISSUED.labels(result="issued").inc()
        return response

    def _create_certificate(
        self,
        request: ca_pb2.CreateCertificateRequest,
        identity: SpiffeId,
        now: datetime,
    ) -> ca_pb2.CreateCertificateResponse:
        ttl = self._requested_ttl(request.validity_seconds)
        started = time.perf_counter()
        try:
            issued = self._ca.sign_csr(request.csr.encode(), identity=identity, ttl=ttl, now=now)
        except CSRRejected as exc:
            # The CA has logged the rejection with the principal and reason.
            if exc.reason in PERMISSION_REASONS:
                code = grpc.StatusCode.PERMISSION_DENIED
            else:
                code = grpc.StatusCode.INVALID_ARGUMENT
            raise RequestRejected(code, exc.message, exc.reason) from exc
        except CAError as exc:
            log.error("ca.csr.sign_failed", principal=str(identity), error=exc.message)
            raise RequestRejected(grpc.StatusCode.INTERNAL, f"the CA cannot sign: {exc.message}", "ca-error") from exc
        finally:
            SIGN_SECONDS.observe(time.perf_counter() - started)
        return ca_pb2.CreateCertificateResponse(
            cert_chain=issued.cert_chain_pem,
            trust_bundle=[certificate_to_pem(root) for root in self._ca.trust_bundle().roots],
            spiffe_id=str(issued.spiffe_id),
        )

    async def _attest(self, context: grpc.aio.ServicerContext, now: datetime) -> SpiffeId:
        # Binary (`-bin`) entries carry bytes and are no credential of ours.
        metadata = {
            key.lower(): value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        try:
            peer = peer_spiffe_id(context)
            # An attestor may wait on the network (a TokenReview), so it runs in a worker
            # thread and other calls and xDS streams go on meanwhile.
            return await asyncio.to_thread(self._attestor.attest, metadata, peer, now)
        except SvidError as exc:
            log.warning("ca.caller.rejected", reason=exc.defect, peer=context.peer(), detail=exc.message)
            raise RequestRejected(grpc.StatusCode.UNAUTHENTICATED, exc.message, exc.defect) from exc
        except AttestationError as exc:
            log.warning("ca.caller.rejected", reason=exc.reason, peer=context.peer(), detail=exc.message)
            # Only an unreachable API is worth a retry; every other reason is final for this credential.
            code = grpc.StatusCode.UNAVAILABLE if exc.reason == API_UNAVAILABLE else grpc.StatusCode.UNAUTHENTICATED
            raise RequestRejected(code, exc.message, exc.reason) from exc

    def _requested_ttl(self, validity_seconds: int) -> timedelta | None:
        if validity_seconds < 0:
            raise RequestRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"validity_seconds {validity_seconds} is negative; send 0 for the CA's default",
                "invalid-ttl",
            )
        if validity_seconds == 0:
            return None
        # Cap before building a timedelta: int64 seconds can overflow it, and the CA caps anyway.
        return timedelta(seconds=min(validity_seconds, int(self._ca.max_ttl.total_seconds())))
