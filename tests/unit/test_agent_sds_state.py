"""SDS stream state: responses to requests, ACK/NACK handling and pushes on rotation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.agent.credentials import Svid, build_csr, generate_private_key, svid_from_response
from controlplane.agent.sds_state import Ack, DeltaStream, Nack, SecretSet, SotwStream, UnknownNames, resource_version
from controlplane.errors import XdsError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.pemfiles import certificate_to_pem
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.translate.resources import SECRET

NOW = datetime.now(timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca") / "ca", trust_domain="example.org", now=NOW)


def issue(ca: CertificateAuthority) -> Svid:
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, LEDGER).encode(), identity=LEDGER, ttl=timedelta(hours=1), now=NOW)
    return svid_from_response(
        cert_chain=issued.cert_chain_pem,
        trust_bundle=[certificate_to_pem(r) for r in ca.trust_bundle().roots],
        spiffe_id=str(LEDGER), key=key, expected_id=LEDGER,
    )


@pytest.fixture
def first(ca: CertificateAuthority) -> SecretSet:
    return SecretSet.from_svid(issue(ca), version="1")


@pytest.fixture
def second(ca: CertificateAuthority) -> SecretSet:
    return SecretSet.from_svid(issue(ca), version="2")


def request(*names: str, version: str = "", nonce: str = "", error: str | None = None) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(
        version_info=version, resource_names=list(names), type_url=SECRET, response_nonce=nonce
    )
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def unpack(response) -> list[secret_pb2.Secret]:
    secrets = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        secrets.append(secret)
    return secrets


def expected_response(secrets: SecretSet, names: list[str], nonce: str) -> discovery_pb2.DiscoveryResponse:
    response = discovery_pb2.DiscoveryResponse(version_info=secrets.version, type_url=SECRET, nonce=nonce)
    for name in sorted(names):
        response.resources.add().Pack(secrets.secrets[name])
    return response


def test_first_request_gets_exact_response(first: SecretSet) -> None:
    stream = SotwStream()

    responses, events = stream.on_request(request("default"), first)

    assert responses == [expected_response(first, ["default"], "1")]
    assert events == []


def test_default_secret_holds_chain_and_key(first: SecretSet, ca: CertificateAuthority) -> None:
    responses, _ = SotwStream().on_request(request("default", "ROOTCA"), first)
    by_name = {s.name: s for s in unpack(responses[0])}

    assert sorted(by_name) == ["ROOTCA", "default"]
    chain = by_name["default"].tls_certificate.certificate_chain.inline_bytes
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----")
    assert by_name["default"].tls_certificate.private_key.inline_bytes.startswith(b"-----BEGIN PRIVATE KEY-----")
    trusted = by_name["ROOTCA"].validation_context.trusted_ca.inline_bytes
    assert trusted.decode() == "".join(certificate_to_pem(r) for r in ca.trust_bundle().roots)


def test_ack_sends_nothing(first: SecretSet) -> None:
    stream = SotwStream()
    stream.on_request(request("default"), first)

    responses, events = stream.on_request(request("default", version="1", nonce="1"), first)

    assert responses == []
    assert events == [Ack(version="1", nonce="1")]


def test_rotation_pushes_new_version_with_new_nonce(first: SecretSet, second: SecretSet) -> None:
    stream = SotwStream()
    stream.on_request(request("default"), first)
    stream.on_request(request("default", version="1", nonce="1"), first)

    pushed = stream.on_secrets(second)

    assert pushed == [expected_response(second, ["default"], "2")]


def test_unchanged_secrets_push_nothing(first: SecretSet) -> None:
    stream = SotwStream()
    stream.on_request(request("ROOTCA"), first)
    same_bundle = SecretSet(version="2", secrets=first.secrets)

    assert stream.on_secrets(same_bundle) == []


def test_nack_is_reported_and_not_resent(first: SecretSet, second: SecretSet) -> None:
    stream = SotwStream()
    stream.on_request(request("default"), first)
    stream.on_secrets(second)

    responses, events = stream.on_request(request("default", version="1", nonce="2", error="bad key"), second)

    assert responses == []
    assert events == [Nack(nonce="2", accepted_version="1", message="bad key")]
    assert stream.on_secrets(second) == []


def test_nack_then_new_secrets_pushes_again(first: SecretSet, second: SecretSet, ca: CertificateAuthority) -> None:
    stream = SotwStream()
    stream.on_request(request("default"), first)
    stream.on_request(request("default", version="", nonce="1", error="rejected"), first)
    third = SecretSet.from_svid(issue(ca), version="3")

    assert stream.on_secrets(third) == [expected_response(third, ["default"], "2")]


def test_stale_nonce_is_ignored(first: SecretSet, second: SecretSet) -> None:
    stream = SotwStream()
    stream.on_request(request("default"), first)
    stream.on_secrets(second)

    responses, events = stream.on_request(request("default", version="1", nonce="1", error="old"), second)

    assert responses == []
    assert events == []


def test_unknown_name_gets_no_resource(first: SecretSet) -> None:
    stream = SotwStream()

    responses, events = stream.on_request(request("default", "spiffe://example.org/ns/a/sa/b"), first)

    assert responses == [expected_response(first, ["default"], "1")]
    assert events == [UnknownNames(frozenset({"spiffe://example.org/ns/a/sa/b"}))]


def test_only_unknown_names_get_no_response(first: SecretSet) -> None:
    responses, events = SotwStream().on_request(request("other"), first)

    assert responses == []
    assert events == [UnknownNames(frozenset({"other"}))]


def test_request_before_first_svid_is_answered_on_arrival(first: SecretSet) -> None:
    stream = SotwStream()

    responses, _ = stream.on_request(request("default"), SecretSet())

    assert responses == []
    assert stream.on_secrets(first) == [expected_response(first, ["default"], "1")]


def test_added_name_sends_both_secrets(first: SecretSet) -> None:
    stream = SotwStream()
    stream.on_request(request("default"), first)

    responses, events = stream.on_request(request("default", "ROOTCA", version="1", nonce="1"), first)

    assert responses == [expected_response(first, ["ROOTCA", "default"], "2")]
    assert events == [Ack(version="1", nonce="1")]


def test_other_type_url_is_protocol_error(first: SecretSet) -> None:
    bad = discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")

    with pytest.raises(XdsError, match="only 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret'"):
        SotwStream().on_request(bad, first)


def delta_request(subscribe=(), unsubscribe=(), nonce="", error=None, initial=None) -> discovery_pb2.DeltaDiscoveryRequest:
    message = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET, resource_names_subscribe=list(subscribe), resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce, initial_resource_versions=initial or {},
    )
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def delta_response(secrets: SecretSet, names: list[str], nonce: str, removed=()) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=secrets.version, type_url=SECRET, nonce=nonce, removed_resources=list(removed)
    )
    for name in names:
        resource = response.resources.add(name=name, version=resource_version(secrets.secrets[name]))
        resource.resource.Pack(secrets.secrets[name])
    return response


def test_delta_subscribe_gets_exact_response(first: SecretSet) -> None:
    responses, events = DeltaStream().on_request(delta_request(["default", "ROOTCA"]), first)

    assert responses == [delta_response(first, ["ROOTCA", "default"], "1")]
    assert events == []


def test_delta_rotation_sends_only_changed_secret(first: SecretSet, ca: CertificateAuthority) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request(["default", "ROOTCA"]), first)
    stream.on_request(delta_request(nonce="1"), first)
    rotated = SecretSet.from_svid(issue(ca), version="2")

    assert stream.on_secrets(rotated) == [delta_response(rotated, ["default"], "2")]


def test_delta_initial_versions_skip_known_secret(first: SecretSet) -> None:
    known = {"ROOTCA": resource_version(first.secrets["ROOTCA"])}

    responses, _ = DeltaStream().on_request(delta_request(["default", "ROOTCA"], initial=known), first)

    assert responses == [delta_response(first, ["default"], "1")]


def test_delta_nack_is_reported_and_not_resent(first: SecretSet) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request(["default"]), first)

    responses, events = stream.on_request(delta_request(nonce="1", error="bad"), first)

    assert responses == []
    assert events == [Nack(nonce="1", accepted_version="", message="bad")]
    assert stream.on_secrets(first) == []


def test_delta_removed_secret_is_listed(first: SecretSet) -> None:
    stream = DeltaStream()
    stream.on_request(delta_request(["default", "ROOTCA"]), first)
    only_default = SecretSet(version="2", secrets={"default": first.secrets["default"]})

    assert stream.on_secrets(only_default) == [delta_response(only_default, [], "2", removed=["ROOTCA"])]


def test_delta_unknown_subscription_is_reported(first: SecretSet) -> None:
    responses, events = DeltaStream().on_request(delta_request(["nope"]), first)

    assert responses == []
    assert events == [UnknownNames(frozenset({"nope"}))]
