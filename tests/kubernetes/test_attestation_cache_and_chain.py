"""Caching of accepted tokens, the order of attestors, and the CA's identity check after attestation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import kubernetes
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.errors import AttestationError, CSRRejected
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.join_token import JoinTokenIssuer
from controlplane.identity.k8s_attestor import KubernetesTokenAttestor, is_jwt
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.server.attestation import FirstCredentialAttestor, JoinTokenAttestor
from tests.kubernetes.k8s_extras import api_server, create_pod, token_issuer  # noqa: F401 - fixtures

TRUST_DOMAIN = "cluster.local"
LEDGER = SpiffeId.parse("spiffe://cluster.local/ns/payments/sa/ledger")


@pytest.fixture()
def api_client(client_configuration):
    client = kubernetes.client.ApiClient(client_configuration)
    try:
        yield client
    finally:
        client.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def csr_for(uri: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


async def test_cache_hit_skips_token_review(api_client, kube, token_issuer, emulator):
    attestor = KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN)
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)
    now = datetime.now(tz=UTC)

    first = await attestor.attest_async(bearer(token), None, now)
    second = await attestor.attest_async(bearer(token), None, now + timedelta(seconds=10))

    assert first == LEDGER
    assert second == LEDGER
    assert emulator.token_reviews == 1


async def test_cache_entry_expires_after_ttl(api_client, kube, token_issuer, emulator):
    attestor = KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN, cache_ttl=timedelta(seconds=30))
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)
    now = datetime.now(tz=UTC)

    await attestor.attest_async(bearer(token), None, now)
    await attestor.attest_async(bearer(token), None, now + timedelta(seconds=31))

    assert emulator.token_reviews == 2


async def test_refusals_not_cached(api_client, kube, token_issuer, emulator):
    attestor = KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN)
    token = token_issuer.mint_user_token("alice@example.com")

    for _ in range(2):
        with pytest.raises(AttestationError):
            await attestor.attest_async(bearer(token), None, datetime.now(tz=UTC))

    assert emulator.token_reviews == 2
    assert attestor.cached_tokens == 0


async def test_cache_size_is_bounded(api_client, kube, token_issuer):
    attestor = KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN, cache_size=2)
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    now = datetime.now(tz=UTC)

    for _ in range(3):
        await attestor.attest_async(bearer(token_issuer.mint(pod=pod)), None, now)

    assert attestor.cached_tokens == 2


def test_join_token_is_not_jwt():
    issuer = JoinTokenIssuer(b"k" * 32, trust_domain=TRUST_DOMAIN)
    join_token = issuer.mint(LEDGER, now=datetime.now(tz=UTC))

    assert not is_jwt(join_token)


async def test_join_token_passes_to_next_attestor(api_client, emulator):
    issuer = JoinTokenIssuer(b"k" * 32, trust_domain=TRUST_DOMAIN)
    now = datetime.now(tz=UTC)
    join_token = issuer.mint(LEDGER, now=now)
    chain = FirstCredentialAttestor(
        [KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN), JoinTokenAttestor(issuer)]
    )

    identity = chain.attest(bearer(join_token), None, now)

    assert identity == LEDGER
    assert emulator.token_reviews == 0


async def test_csr_for_other_service_account_rejected(api_client, kube, token_issuer, tmp_path):
    attestor = KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN)
    pod = await create_pod(kube, "payments", "reports-0", service_account="reports")
    token = token_issuer.mint(pod=pod)
    now = datetime.now(tz=UTC)
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain=TRUST_DOMAIN, now=now)

    identity = await attestor.attest_async(bearer(token), None, now)
    with pytest.raises(CSRRejected) as caught:
        ca.sign_csr(csr_for(str(LEDGER)), identity=identity, ttl=None, now=now)

    assert identity == SpiffeId.parse("spiffe://cluster.local/ns/payments/sa/reports")
    assert caught.value.reason == "identity-mismatch"
    assert "the caller proved spiffe://cluster.local/ns/payments/sa/reports" in caught.value.message
