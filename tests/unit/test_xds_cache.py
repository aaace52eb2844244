"""Snapshot cache: sharing per proxy group, debounced updates, change detection, secrets, worker."""

from __future__ import annotations

import asyncio
import threading

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from structlog.testing import capture_logs

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


class GatedTranslator(PerWorkloadTranslator):
    """While `gate` is set, each call waits (at most 5 s) for `release`, and records whether it came.

    The timeout of a state listed in `timeout_of_state` overrides the per-workload one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.released_in_time: list[bool] = []
        self.threads: list[int] = []
        self.states: list[MeshState] = []
        self.timeout_of_state: dict[int, int] = {}

    def __call__(self, state: MeshState, proxy: Proxy) -> ProxyConfig:
        self.threads.append(threading.get_ident())
        self.states.append(state)
        if self.gate:
            self.entered.set()
            self.released_in_time.append(self.release.wait(timeout=5))
        if id(state) in self.timeout_of_state:
            self.timeouts[proxy.workload] = self.timeout_of_state[id(state)]
        return super().__call__(state, proxy)


def cluster_timeout_ms(snapshot) -> int:
    cluster = cluster_pb2.Cluster.FromString(snapshot.of_type(CLUSTER)["c1"].payload)
    return cluster.connect_timeout.ToMilliseconds()


async def entered(translator: GatedTranslator) -> None:
    """Wait, without blocking the loop, until the worker is inside the gated translator."""
    assert await asyncio.to_thread(translator.entered.wait, 5), "the translator never ran"


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


async def settled(cache: SnapshotCache) -> None:
    """Wait, bounded, until the cache has published every rebuild that is due."""
    await asyncio.wait_for(cache.idle(), timeout=10)


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
    await settled(cache)

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
    await settled(cache)
    ledger_updates.clear()
    shop_updates.clear()

    translator.timeouts["ledger"] = 2000
    cache.update(MeshState())
    await time.advance(0.1)
    await settled(cache)

    assert len(ledger_updates) == 1
    assert shop_updates == []
    assert ledger_updates[0].seen_at == 0.0


async def test_update_with_unchanged_output_notifies_nobody():
    translator = PerWorkloadTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    updates = []
    cache.watch(proxy("ledger"), updates.append)
    await settled(cache)
    first = list(updates)

    cache.update(MeshState())
    await time.advance(0.1)
    await settled(cache)

    assert translator.calls == ["ledger-node", "ledger-node"]
    assert updates == first


async def test_rootca_secret_carries_the_trust_bundle():
    cache = make_cache(PerWorkloadTranslator())

    watch = cache.watch(proxy("ledger"), lambda s: None)
    await settled(cache)

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
    await settled(cache)

    served = watch.snapshot.of_type(SECRET)
    assert sorted(served) == ["ROOTCA", "federated-bundle"]
    root = secret_pb2.Secret.FromString(served["ROOTCA"].payload)
    assert root.validation_context.trusted_ca.inline_bytes == BUNDLE


async def test_translator_failure_keeps_the_last_snapshot():
    translator = PerWorkloadTranslator()
    cache = make_cache(translator)
    updates = []
    watch = cache.watch(proxy("ledger"), updates.append)
    await settled(cache)
    before = watch.snapshot
    updates.clear()

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


async def test_event_loop_runs_while_group_translates():
    translator = GatedTranslator()
    translator.gate = True
    cache = make_cache(translator)
    updates = []

    watch = cache.watch(proxy("ledger"), updates.append)
    await entered(translator)
    other_coroutine_ran = asyncio.Event()

    async def other_coroutine() -> None:
        other_coroutine_ran.set()

    await asyncio.wait_for(asyncio.create_task(other_coroutine()), timeout=5)
    assert other_coroutine_ran.is_set()
    assert watch.snapshot is None
    translator.release.set()
    await settled(cache)

    assert translator.released_in_time == [True]
    assert threading.get_ident() not in translator.threads
    assert updates == [watch.snapshot]
    assert cluster_timeout_ms(watch.snapshot) == 1000


async def test_updates_during_rebuild_coalesce_to_newest():
    translator = GatedTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    updates = []
    cache.watch(proxy("ledger"), updates.append)
    await settled(cache)
    updates.clear()
    translator.states.clear()
    first, second, third = MeshState(), MeshState(), MeshState()
    translator.timeout_of_state = {id(first): 1500, id(second): 2000, id(third): 3000}

    translator.gate = True
    cache.update(first)
    await time.advance(0.1)
    await entered(translator)
    cache.update(second)
    await time.advance(0.1)
    cache.update(third)
    await time.advance(0.1)
    translator.gate = False
    translator.release.set()
    await settled(cache)

    assert [s is first for s in translator.states] == [True, False]
    assert translator.states[1] is third
    assert [cluster_timeout_ms(s) for s in updates] == [1500, 3000]
    assert [s.seen_at for s in updates] == [0.0, pytest.approx(0.1)]


async def test_watchers_called_by_group_then_watch_order():
    translator = PerWorkloadTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    calls: list[str] = []
    for workload, node_id in (("shop", "shop-1"), ("ledger", "ledger-1"), ("shop", "shop-2")):
        cache.watch(proxy(workload, node_id), lambda _s, node_id=node_id: calls.append(node_id))
    await settled(cache)
    assert calls == ["shop-1", "shop-2", "ledger-1"]

    calls.clear()
    translator.timeouts.update(shop=2000, ledger=2000)
    cache.update(MeshState())
    await time.advance(0.1)
    await settled(cache)

    assert calls == ["shop-1", "shop-2", "ledger-1"]


async def test_worker_translator_failure_is_logged_and_survived():
    translator = PerWorkloadTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    updates = []
    watch = cache.watch(proxy("ledger"), updates.append)
    await settled(cache)
    before = watch.snapshot

    translator.fail = True
    with capture_logs() as logs:
        cache.update(MeshState())
        await time.advance(0.1)
        await settled(cache)
    assert watch.snapshot is before
    failures = [entry for entry in logs if entry["event"] == "xds.translate.failed"]
    assert [(f["namespace"], f["workload"], f["node_id"]) for f in failures] == [
        ("payments", "ledger", "ledger-node")
    ]

    translator.fail = False
    translator.timeouts["ledger"] = 2500
    cache.update(MeshState())
    await time.advance(0.1)
    await settled(cache)

    assert cluster_timeout_ms(watch.snapshot) == 2500
    assert updates == [before, watch.snapshot]


async def test_group_left_during_its_rebuild_gets_no_snapshot():
    translator = GatedTranslator()
    translator.gate = True
    cache = make_cache(translator)
    updates = []

    watch = cache.watch(proxy("ledger"), updates.append)
    await entered(translator)
    watch.cancel()
    translator.release.set()
    await settled(cache)

    assert updates == []
    assert cache.group_count == 0


async def test_watch_joining_unbuilt_group_gets_first_snapshot():
    cache = make_cache(PerWorkloadTranslator())
    first_updates, second_updates = [], []

    first = cache.watch(proxy("ledger", "ledger-a"), first_updates.append)
    second = cache.watch(proxy("ledger", "ledger-b"), second_updates.append)
    assert first.snapshot is None
    assert second.snapshot is None
    await settled(cache)

    assert first_updates == second_updates == [first.snapshot]
    assert second.snapshot is first.snapshot


async def test_close_stops_a_pending_update():
    translator = PerWorkloadTranslator()
    time = ManualTime()
    cache = make_cache(translator, time)
    cache.watch(proxy("ledger"), lambda s: None)
    await settled(cache)

    cache.update(MeshState())
    await cache.close()
    await time.advance(1.0)
    await settled(cache)

    assert translator.calls == ["ledger-node"]


async def test_trust_bundle_failure_retries_on_refresh():
    time = ManualTime()
    bundles: list[bytes | Exception] = [RuntimeError("CA not loaded"), BUNDLE]

    def trust_bundle() -> bytes:
        bundle = bundles.pop(0)
        if isinstance(bundle, Exception):
            raise bundle
        return bundle

    cache = SnapshotCache(PerWorkloadTranslator(), trust_bundle=trust_bundle, state=MeshState(),
                          clock=time.clock, sleep=time.sleep, debounce=DebounceSettings(0.1, 1.0))
    updates = []
    with capture_logs() as logs:
        watch = cache.watch(proxy("ledger"), updates.append)
        await settled(cache)
    assert [entry["stage"] for entry in logs if entry["event"] == "xds.cache.rebuild_failed"] == ["prepare"]
    assert updates == []

    cache.refresh()
    await time.advance(0.1)
    await settled(cache)

    assert updates == [watch.snapshot]
    assert "ROOTCA" in watch.snapshot.of_type(SECRET)
