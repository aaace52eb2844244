"""Node metadata to Proxy, checked against the verified client certificate."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2

from controlplane.identity.spiffe_id import SpiffeId
from controlplane.xds.node import IdentityMismatch, InvalidNodeMetadata, proxy_from_node
from controlplane.xds.peer import peer_spiffe_id

LEDGER = SpiffeId.parse("spiffe://cluster.local/ns/payments/sa/ledger")


def node(**metadata) -> base_pb2.Node:
    message = base_pb2.Node(id="sidecar~10.0.0.7~ledger-1.payments")
    for key, value in metadata.items():
        if isinstance(value, dict):
            message.metadata.fields[key].struct_value.update(value)
        else:
            message.metadata.fields[key].string_value = value
    return message


def test_matching_metadata_builds_the_proxy():
    proxy = proxy_from_node(
        node(NAMESPACE="payments", SERVICE_ACCOUNT="ledger", WORKLOAD_NAME="ledger-1",
             INSTANCE_IP="127.0.0.5", PROXY_MODE="local", APP_ADDRESS="127.0.1.5",
             LABELS={"app": "ledger", "version": "v1"}),
        LEDGER,
    )

    assert proxy.node_id == "sidecar~10.0.0.7~ledger-1.payments"
    assert (proxy.namespace, proxy.service_account, proxy.workload) == ("payments", "ledger", "ledger-1")
    assert (proxy.ip, proxy.mode, proxy.app_address) == ("127.0.0.5", "local", "127.0.1.5")
    assert dict(proxy.labels) == {"app": "ledger", "version": "v1"}
    assert proxy.spiffe_id == LEDGER


def test_labels_may_be_a_json_string():
    proxy = proxy_from_node(node(NAMESPACE="payments", SERVICE_ACCOUNT="ledger", LABELS='{"app": "ledger"}'), LEDGER)

    assert dict(proxy.labels) == {"app": "ledger"}


def test_other_namespace_is_refused_naming_both_values():
    with pytest.raises(IdentityMismatch) as caught:
        proxy_from_node(node(NAMESPACE="shop", SERVICE_ACCOUNT="ledger"), LEDGER)

    assert "metadata NAMESPACE is 'shop'" in str(caught.value)
    assert "has 'payments'" in str(caught.value)
    assert caught.value.field == "NAMESPACE"


def test_other_service_account_is_refused():
    with pytest.raises(IdentityMismatch, match="SERVICE_ACCOUNT is 'admin' but the client certificate"):
        proxy_from_node(node(NAMESPACE="payments", SERVICE_ACCOUNT="admin"), LEDGER)


def test_missing_namespace_is_refused():
    with pytest.raises(IdentityMismatch, match="metadata NAMESPACE is missing"):
        proxy_from_node(node(SERVICE_ACCOUNT="ledger"), LEDGER)


def test_non_workload_spiffe_id_is_refused():
    with pytest.raises(IdentityMismatch, match="is not a workload ID"):
        proxy_from_node(node(NAMESPACE="payments", SERVICE_ACCOUNT="ledger"), SpiffeId.parse("spiffe://cluster.local/gateway"))


def test_unknown_proxy_mode_is_invalid():
    with pytest.raises(InvalidNodeMetadata, match="PROXY_MODE is 'vm'; use one of kubernetes, local"):
        proxy_from_node(node(NAMESPACE="payments", SERVICE_ACCOUNT="ledger", PROXY_MODE="vm"), LEDGER)


def test_labels_that_are_not_strings_are_invalid():
    with pytest.raises(InvalidNodeMetadata, match="LABELS must map label names to strings"):
        proxy_from_node(node(NAMESPACE="payments", SERVICE_ACCOUNT="ledger", LABELS={"replicas": 3}), LEDGER)


class _Context:
    """The two calls `peer_spiffe_id` makes on a grpc.aio servicer context."""

    def __init__(self, pems: list[bytes]) -> None:
        self._pems = pems

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": self._pems} if self._pems else {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def test_peer_without_certificate_has_no_identity() -> None:
    assert peer_spiffe_id(_Context([])) is None


FIXTURES = Path(__file__).resolve().parents[1] / "data" / "certs"


@pytest.mark.parametrize("fixture", ["leaf-with-two-uri-sans.pem", "leaf-with-ca-true.pem", "leaf-without-client-auth.pem"])
def test_peer_certificate_that_breaks_svid_profile_has_no_identity(fixture: str) -> None:
    assert peer_spiffe_id(_Context([(FIXTURES / fixture).read_bytes()])) is None


def test_peer_with_valid_svid_has_its_identity() -> None:
    identity = peer_spiffe_id(_Context([(FIXTURES / "valid-leaf.pem").read_bytes()]))
    assert identity is not None
    assert str(identity).startswith("spiffe://")
