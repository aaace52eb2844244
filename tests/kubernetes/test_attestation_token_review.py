"""The ServiceAccount token attestor accepts only live, pod-bound tokens for the mesh audience."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import kubernetes
import pytest
import structlog

from controlplane.errors import AttestationError
from controlplane.identity.k8s_attestor import NODE_NAME_METADATA, KubernetesTokenAttestor
from controlplane.identity.spiffe_id import SpiffeId
from tests.kubernetes.k8s_extras import api_server, create_pod, token_issuer  # noqa: F401 - fixtures

TRUST_DOMAIN = "cluster.local"


@pytest.fixture()
def attestor(client_configuration):
    api_client = kubernetes.client.ApiClient(client_configuration)
    try:
        yield KubernetesTokenAttestor(api_client, trust_domain=TRUST_DOMAIN)
    finally:
        api_client.close()


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **extra}


async def rejection(attestor, metadata) -> AttestationError:
    with pytest.raises(AttestationError) as caught:
        await attestor.attest_async(metadata, None, datetime.now(tz=UTC))
    return caught.value


async def test_running_pod_token_proves_service_account(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)

    identity = await attestor.attest_async(bearer(token), None, datetime.now(tz=UTC))

    assert identity == SpiffeId.parse("spiffe://cluster.local/ns/payments/sa/ledger")


async def test_expired_token_rejected(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    issued = datetime.now(tz=UTC) - timedelta(hours=2)
    token = token_issuer.mint(pod=pod, issued_at=issued, ttl=timedelta(hours=1))

    error = await rejection(attestor, bearer(token))

    assert error.reason == "expired"
    assert "ServiceAccount token rejected: it expired at" in error.message
    assert "Signature has expired" in error.message


async def test_wrong_audience_rejected(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod, audiences=("vault",))

    error = await rejection(attestor, bearer(token))

    assert error.reason == "wrong-audience"
    assert "its audiences ['vault'] do not include 'idmesh'" in error.message


async def test_deleted_pod_rejected(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)
    await kube(kube.core.delete_namespaced_pod, "ledger-0", "payments")

    error = await rejection(attestor, bearer(token))

    assert error.reason == "pod-not-found"
    assert error.message == (
        "ServiceAccount token rejected: the token is bound to pod payments/ledger-0, which no longer exists"
    )


async def test_terminating_pod_rejected(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    # A finalizer keeps the pod after the delete request, with deletionTimestamp set.
    await kube(kube.core.patch_namespaced_pod, "ledger-0", "payments", {"metadata": {"finalizers": ["example.com/hold"]}})
    await kube(kube.core.delete_namespaced_pod, "ledger-0", "payments")
    token = token_issuer.mint(pod=pod)

    error = await rejection(attestor, bearer(token))

    assert error.reason == "pod-terminating"
    assert "pod payments/ledger-0 is terminating" in error.message


async def test_replaced_pod_rejected(attestor, kube, token_issuer):
    old = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=old)
    await kube(kube.core.delete_namespaced_pod, "ledger-0", "payments")
    new = await create_pod(kube, "payments", "ledger-0", service_account="ledger")

    error = await rejection(attestor, bearer(token))

    assert error.reason == "pod-uid-mismatch"
    assert f"uid {old['metadata']['uid']}, but that pod now has uid {new['metadata']['uid']}" in error.message


async def test_user_token_rejected(attestor, token_issuer):
    token = token_issuer.mint_user_token("alice@example.com")

    error = await rejection(attestor, bearer(token))

    assert error.reason == "not-service-account"
    assert "it authenticates 'alice@example.com', which is not a service account" in error.message


async def test_token_without_pod_binding_rejected(attestor, token_issuer):
    token = token_issuer.mint_unbound("payments", "ledger")

    error = await rejection(attestor, bearer(token))

    assert error.reason == "not-pod-bound"
    assert "the token of payments/ledger is not bound to a pod" in error.message


async def test_service_account_mismatch_rejected(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod, service_account="admin")

    error = await rejection(attestor, bearer(token))

    assert error.reason == "service-account-mismatch"
    assert "pod payments/ledger-0 runs as service account 'ledger', not 'admin'" in error.message


async def test_claimed_node_must_match_pod(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger", node="node-a")
    token = token_issuer.mint(pod=pod)

    accepted = await attestor.attest_async(bearer(token, **{NODE_NAME_METADATA: "node-a"}), None, datetime.now(tz=UTC))
    error = await rejection(attestor, bearer(token, **{NODE_NAME_METADATA: "node-b"}))

    assert accepted == SpiffeId.parse("spiffe://cluster.local/ns/payments/sa/ledger")
    assert error.reason == "node-mismatch"
    assert "the caller claims node 'node-b' but pod payments/ledger-0 runs on 'node-a'" in error.message


async def test_unreachable_api_rejected_distinctly(attestor, kube, token_issuer, api_server):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    token = token_issuer.mint(pod=pod)
    await api_server.stop()

    error = await rejection(attestor, bearer(token))

    assert error.reason == "api-unavailable"
    assert "the TokenReview failed, so the token cannot be checked now; retry later" in error.message


async def test_token_never_logged(attestor, kube, token_issuer):
    pod = await create_pod(kube, "payments", "ledger-0", service_account="ledger")
    good = token_issuer.mint(pod=pod)
    expired = token_issuer.mint(pod=pod, issued_at=datetime.now(tz=UTC) - timedelta(hours=2), ttl=timedelta(hours=1))

    with structlog.testing.capture_logs() as logs:
        await attestor.attest_async(bearer(good), None, datetime.now(tz=UTC))
        await rejection(attestor, bearer(expired))

    events = [entry["event"] for entry in logs]
    assert events == ["attestation.k8s.accepted", "attestation.k8s.rejected"]
    text = repr(logs)
    for token in (good, expired):
        for part in token.split("."):
            assert part not in text
