"""Snapshot cache: sharing per proxy group, debounced updates, change detection, secrets."""

from __future__ import annotations

import asyncio

import pytest
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import MeshState, Proxy
from controlplane.translate.resources import CLUSTER, SECRET, ProxyConfig
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.debounce import DebounceSettings, Debouncer
from controlplane.xds.testing import eds_cluster, proxy_config

BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class ManualTime:
    """A clock and sleep that move only when the test calls `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now + 1e-9:
                self._sleepers.remove((deadline, future))
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)


def proxy(workload: str, node_id: str | None = None) -> Proxy:
    return Proxy(
        node_id=node_id or f"{workload}-node",
        namespace="payments",
        workload=workload,
        service_account="ledger",
        ip="10.0.0.1",
        spiffe_id=SpiffeId.for_workload("cluster.local", "payments", "ledger"),
    )


class PerWorkloadTranslator:
    """Returns one cluster per workload whose timeout comes from `timeouts[workload]`."""

    def __init__(self) -> None:
        self.timeouts: dict[str, int] = {}
        self.calls: list[str] = []
        self.secrets: dict = {}
        self.fail = False

    def __call__(self, state: MeshState, proxy: Proxy) -> ProxyConfig:
        self.calls.append(proxy.node_id)
        if self.fail:
            raise RuntimeError("translator bug")
        timeout = self.timeouts.get(proxy.workload, 1000)
        return proxy_config(
            clusters={"c1": eds_cluster("c1", connect_timeout_ms=timeout)}, secrets=self.secrets
        )


def make_cache(translator, time: ManualTime | None = None) -> SnapshotCache:
    time = time or ManualTime()
    return SnapshotCache(
        translator,
        trust_bundle=lambda: BUNDLE,
        state=MeshState(),
        clock=time.clock,
        sleep=time.sleep,
        debounce=DebounceSettings(quiet=0.1, max_delay=1.0),
    )


async def test_debounce_fires_once_after_quiet_period():
    time = ManualTime()
    fired: list[float] = []
    debouncer = Debouncer(fired.append, settings=DebounceSettings(0.1, 1.0), clock=time.clock, sleep=time.sleep)

    debouncer.trigger()
    await time.advance(0.05)
    debouncer.trigger()
    await time.advance(0.05)
    assert fired == []

    await time.advance(0.05)
    assert fired == [0.0]

    await time.advance(1.0)
    assert fired == [0.0]


async def test_debounce_fires_at_max_delay_under_steady_changes():
    time = ManualTime()
    fired: list[float] = []
    debouncer = Debouncer(fired.append, settings=DebounceSettings(0.1, 1.0), clock=time.clock, sleep=time.sleep)

    for _ in range(19):
        debouncer.trigger()
        await time.advance(0.05)
    assert fired == []
    debouncer.trigger()
    await time.advance(0.05)

    assert fired == [0.0]
    assert time.now == pytest.approx(1.0)


async def test_proxies_in_one_group_share_one_snapshot():
    translator = PerWorkloadTranslator()
    cache = make_cache(translator)

    first = cache.watch(proxy("ledger", "ledger-a"), lambda s: None)
    second = cache.watch(proxy("ledger", "ledger-b"), lambda s: None)
    other = cache.watch(proxy("shop", "shop-a"), lambda s: None)

    assert translator.calls == ["ledger-a", "shop-a"]
    assert first.snapshot is second.snapshot
    assert other.snapshot is not first.snapshot
    assert cache.group_count == 2


async def test_update_notifies_only_groups_whose_bytes_changed():
    translator = PerWorkloadTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    ledger_updates, shop_updates = [], []
    cache.watch(proxy("ledger"), ledger_updates.append)
    cache.watch(proxy("shop"), shop_updates.append)

    translator.timeouts["ledger"] = 2000
    cache.update(MeshState())
    await time.advance(0.1)

    assert len(ledger_updates) == 1
    assert shop_updates == []
    assert ledger_updates[0].seen_at == 0.0


async def test_update_with_unchanged_output_notifies_nobody():
    translator = PerWorkloadTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    updates = []
    cache.watch(proxy("ledger"), updates.append)

    cache.update(MeshState())
    await time.advance(0.1)

    assert translator.calls == ["ledger-node", "ledger-node"]
    assert updates == []


async def test_rootca_secret_carries_the_trust_bundle():
    cache = make_cache(PerWorkloadTranslator())

    watch = cache.watch(proxy("ledger"), lambda s: None)

    (name,) = watch.snapshot.of_type(SECRET)
    secret = secret_pb2.Secret.FromString(watch.snapshot.of_type(SECRET)["ROOTCA"].payload)
    assert name == "ROOTCA"
    assert secret.name == "ROOTCA"
    assert secret.validation_context.trusted_ca.inline_bytes == BUNDLE


async def test_secrets_with_private_keys_are_never_served():
    translator = PerWorkloadTranslator()
    workload_key = secret_pb2.Secret(name="default")
    workload_key.tls_certificate.private_key.inline_bytes = b"-----BEGIN PRIVATE KEY-----"
    extra_bundle = secret_pb2.Secret(
        name="federated-bundle",
        validation_context=common_pb2.CertificateValidationContext(trusted_ca={"inline_bytes": BUNDLE}),
    )
    impostor_root = secret_pb2.Secret(name="ROOTCA", validation_context=common_pb2.CertificateValidationContext())
    translator.secrets = {"default": workload_key, "federated-bundle": extra_bundle, "ROOTCA": impostor_root}
    cache = make_cache(translator)

    watch = cache.watch(proxy("ledger"), lambda s: None)

    served = watch.snapshot.of_type(SECRET)
    assert sorted(served) == ["ROOTCA", "federated-bundle"]
    root = secret_pb2.Secret.FromString(served["ROOTCA"].payload)
    assert root.validation_context.trusted_ca.inline_bytes == BUNDLE


async def test_translator_failure_keeps_the_last_snapshot():
    translator = PerWorkloadTranslator()
    cache = make_cache(translator)
    updates = []
    watch = cache.watch(proxy("ledger"), updates.append)
    before = watch.snapshot

    translator.fail = True
    changed = cache.apply(MeshState(), seen_at=5.0)

    assert changed == 0
    assert updates == []
    assert watch.snapshot is before
    assert CLUSTER in before.resources


async def test_group_is_dropped_when_its_last_stream_ends():
    cache = make_cache(PerWorkloadTranslator())
    first = cache.watch(proxy("ledger", "a"), lambda s: None)
    second = cache.watch(proxy("ledger", "b"), lambda s: None)

    first.cancel()
    assert cache.group_count == 1
    second.cancel()
    assert cache.group_count == 0
