"""The CA kept in a Secret: created once, loaded by every replica, plug-in material accepted."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from datetime import UTC, datetime

import kubernetes
import pytest
import structlog

from controlplane.errors import CAError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.k8s_store import CA_SECRET_NAME, SecretCAStore, obtain_ca, read_directory
from controlplane.identity.spiffe_id import SpiffeId
from tests.kubernetes.conftest import wait_until
from tests.kubernetes.k8s_extras import FakeClock, WriteBarrier, api_server  # noqa: F401 - fixture

NAMESPACE = "idmesh-system"
TRUST_DOMAIN = "cluster.local"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture()
def make_store(client_configuration):
    clients, loaded = [], []

    def make(**kwargs) -> SecretCAStore:
        client = kubernetes.client.ApiClient(client_configuration)
        clients.append(client)
        return SecretCAStore(client, namespace=NAMESPACE, **kwargs)

    make.loaded = loaded
    try:
        yield make
    finally:
        for item in loaded:
            item.close()
        for client in clients:
            client.close()


def root_of(loaded) -> bytes:
    return loaded.ca.roots[0].fingerprint(loaded.ca.roots[0].signature_hash_algorithm)


async def stored_secret(kube) -> dict:
    response = await kube(kube.core.read_namespaced_secret, CA_SECRET_NAME, NAMESPACE, _preload_content=False)
    return json.loads(response.data)


async def test_first_start_creates_secret(make_store, kube):
    store = make_store()

    loaded = await asyncio.to_thread(store.load_or_create, trust_domain=TRUST_DOMAIN, now=NOW, may_create=True)
    make_store.loaded.append(loaded)

    secret = await stored_secret(kube)
    assert loaded.created
    assert sorted(secret["data"]) == ["ca.yaml", "join-token.key", "root-cert.pem", "root-key.pem"]
    assert secret["type"] == "Opaque"
    stored_root = base64.b64decode(secret["data"]["root-cert.pem"])
    assert stored_root == read_directory(loaded.directory)["root-cert.pem"]


async def test_second_start_loads_same_root(make_store):
    first = await asyncio.to_thread(make_store().load_or_create, trust_domain=TRUST_DOMAIN, now=NOW, may_create=True)
    second = await asyncio.to_thread(make_store().load_or_create, trust_domain=TRUST_DOMAIN, now=NOW, may_create=True)
    make_store.loaded.extend([first, second])

    assert not second.created
    assert root_of(second) == root_of(first)


async def test_loaded_files_are_private(make_store):
    await asyncio.to_thread(make_store().create, trust_domain=TRUST_DOMAIN, now=NOW)
    loaded = await asyncio.to_thread(make_store().load, trust_domain=TRUST_DOMAIN, now=NOW)
    make_store.loaded.append(loaded)

    assert stat.S_IMODE(loaded.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((loaded.directory / "root-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((loaded.directory / "join-token.key").stat().st_mode) == 0o600


async def test_close_removes_private_directory(make_store):
    loaded = await asyncio.to_thread(make_store().create, trust_domain=TRUST_DOMAIN, now=NOW)

    loaded.close()

    assert not loaded.directory.exists()


async def test_racing_creators_end_with_one_ca(make_store, emulator):
    # Both creates reach the API server before either is stored, so one gets 409 AlreadyExists.
    emulator.write_barriers["secrets"] = WriteBarrier(2)
    first, second = make_store(), make_store()

    results = await asyncio.gather(
        asyncio.to_thread(first.create, trust_domain=TRUST_DOMAIN, now=NOW),
        asyncio.to_thread(second.create, trust_domain=TRUST_DOMAIN, now=NOW),
    )
    make_store.loaded.extend(results)

    assert sorted(result.created for result in results) == [False, True]
    assert root_of(results[0]) == root_of(results[1])


async def test_follower_does_not_create(make_store, kube):
    store = make_store()

    with pytest.raises(CAError) as caught:
        await asyncio.to_thread(store.load_or_create, trust_domain=TRUST_DOMAIN, now=NOW, may_create=False)

    assert caught.value.message == "the CA Secret idmesh-system/idmesh-ca does not exist yet; the leader creates it"
    secrets = await kube(kube.core.list_namespaced_secret, NAMESPACE)
    assert secrets.items == []


async def test_follower_waits_for_leader_ca(make_store):
    clock = FakeClock(NOW)
    follower = asyncio.create_task(
        obtain_ca(make_store(), trust_domain=TRUST_DOMAIN, clock=clock, is_leader=lambda: False, sleep=clock.sleep)
    )
    try:
        await wait_until(lambda: clock.sleepers == 1, what="the follower to wait")
        leader = await obtain_ca(make_store(), trust_domain=TRUST_DOMAIN, clock=clock, is_leader=lambda: True)
        await clock.advance(2)
        loaded = await asyncio.wait_for(follower, 10)
    finally:
        follower.cancel()
    make_store.loaded.extend([leader, loaded])

    assert leader.created
    assert not loaded.created
    assert root_of(loaded) == root_of(leader)


async def test_plugin_secret_with_intermediate_loads(make_store, kube, tmp_path):
    admin_ca = CertificateAuthority.create(tmp_path / "pki", trust_domain=TRUST_DOMAIN, intermediate=True, now=NOW)
    files = read_directory(tmp_path / "pki")
    # An admin hands over the intermediate only; the root key stays in their PKI.
    del files["root-key.pem"], files["join-token.key"]
    data = {name: base64.b64encode(content).decode() for name, content in files.items()}
    await kube(kube.core.create_namespaced_secret, NAMESPACE, {"metadata": {"name": "corporate-ca"}, "data": data})

    loaded = await asyncio.to_thread(make_store(name="corporate-ca").load, trust_domain=TRUST_DOMAIN, now=NOW)
    make_store.loaded.append(loaded)
    issued = loaded.ca.issue(SpiffeId.parse("spiffe://cluster.local/ns/payments/sa/ledger"), ttl=None, now=NOW)[0]

    assert loaded.ca.roots == admin_ca.roots
    assert issued.certificate.issuer == admin_ca.signing_certificate.subject


async def test_other_trust_domain_rejected(make_store):
    await asyncio.to_thread(make_store().create, trust_domain="example.org", now=NOW)

    with pytest.raises(CAError) as caught:
        await asyncio.to_thread(make_store().load, trust_domain=TRUST_DOMAIN, now=NOW)

    assert "is for trust domain 'example.org', but the mesh uses 'cluster.local'" in caught.value.message


async def test_broken_secret_rejected_with_key_name(make_store, kube):
    data = {"ca.yaml": base64.b64encode(b"trust_domain: cluster.local\n").decode(), "root-cert.pem": "not base64!"}
    await kube(kube.core.create_namespaced_secret, NAMESPACE, {"metadata": {"name": CA_SECRET_NAME}, "data": data})

    with pytest.raises(CAError) as caught:
        await asyncio.to_thread(make_store().load, trust_domain=TRUST_DOMAIN, now=NOW)

    assert caught.value.message == "data key 'root-cert.pem' of the CA Secret idmesh-system/idmesh-ca is not valid base64"


async def test_key_material_never_logged(make_store, kube):
    with structlog.testing.capture_logs() as logs:
        created = await asyncio.to_thread(make_store().create, trust_domain=TRUST_DOMAIN, now=NOW)
        loaded = await asyncio.to_thread(make_store().load, trust_domain=TRUST_DOMAIN, now=NOW)
    make_store.loaded.extend([created, loaded])

    secret = await stored_secret(kube)
    text = repr(logs)
    assert [entry["event"] for entry in logs] == ["ca.created", "ca.secret.created", "ca.secret.loaded"]
    assert "PRIVATE KEY" not in text
    for name in ("root-key.pem", "join-token.key"):
        assert secret["data"][name] not in text
        assert base64.b64decode(secret["data"][name]).decode("latin-1") not in text
