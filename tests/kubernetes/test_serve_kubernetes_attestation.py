"""The CA API of `controlplane serve --source kubernetes` attests pods by their ServiceAccount tokens."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.api import ca_pb2, ca_pb2_grpc
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId
from tests.kubernetes.k8s_extras import api_server, create_pod, token_issuer  # noqa: F401 - fixtures
from tests.kubernetes.test_serve_kubernetes_harness import (  # noqa: F401 - fixtures
    TRUST_DOMAIN,
    control_plane,
    serve_overrides,
    utc_now,
)

NAMESPACE = "payments"
CALL_TIMEOUT = 10.0


def build_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def create_certificate(plane, metadata: tuple[tuple[str, str], ...]) -> ca_pb2.CreateCertificateResponse:
    """Call CreateCertificate on the bootstrap port (server-only TLS), checking the server against the mesh roots."""
    credentials = grpc.ssl_channel_credentials(plane.ca.trust_bundle().to_pem().encode())
    async with grpc.aio.secure_channel(f"127.0.0.1:{plane.grpc.bootstrap_port}", credentials,
                                       options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        stub = ca_pb2_grpc.CertificateServiceStub(channel)
        return await stub.CreateCertificate(ca_pb2.CreateCertificateRequest(csr=build_csr()), metadata=metadata,
                                            timeout=CALL_TIMEOUT)


def leaf_uri(response: ca_pb2.CreateCertificateResponse) -> str:
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    [uri] = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    return uri


async def test_service_account_token_gets_svid(control_plane, kube, token_issuer):
    pod = await create_pod(kube, NAMESPACE, "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)

    response = await create_certificate(control_plane, (("authorization", f"Bearer {token}"),))

    assert response.spiffe_id == f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/ledger"
    assert leaf_uri(response) == f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/ledger"


async def test_token_for_other_audience_is_unauthenticated(control_plane, kube, token_issuer):
    pod = await create_pod(kube, NAMESPACE, "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod, audiences=("https://kubernetes.default.svc",))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_certificate(control_plane, (("authorization", f"Bearer {token}"),))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith(
        "ServiceAccount token rejected: its audiences ['https://kubernetes.default.svc'] do not include 'idmesh'"
    )


async def test_join_token_still_accepted(control_plane):
    issuer = JoinTokenIssuer(load_join_token_key(control_plane.kubernetes.ca_directory, create=False),
                             trust_domain=TRUST_DOMAIN)
    identity = SpiffeId.for_workload(TRUST_DOMAIN, "legacy", "batch")
    token = issuer.mint(identity, ttl=timedelta(minutes=5), now=utc_now())

    response = await create_certificate(control_plane, (("authorization", f"Bearer {token}"),))

    assert response.spiffe_id == str(identity)


async def test_missing_credential_names_service_account_token(control_plane):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_certificate(control_plane, ())

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == (
        "no credential: send 'authorization: Bearer <token>' metadata with the pod's projected "
        "ServiceAccount token (audience idmesh) or a join token, or present your current SVID "
        "as the TLS client certificate on the mutual TLS port"
    )


async def test_unreachable_api_server_is_unavailable_so_agents_retry(control_plane, kube, token_issuer, api_server):
    pod = await create_pod(kube, NAMESPACE, "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)
    await api_server.stop()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create_certificate(control_plane, (("authorization", f"Bearer {token}"),))
    finally:
        await api_server.start()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
