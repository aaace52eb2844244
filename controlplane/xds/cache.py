"""The snapshot cache: one configuration per proxy group, shared by every stream in the group.

Proxies with equal `Proxy.group_key` get the same configuration, so the translator runs once per
group and the serialized resources are shared. `update(state)` is debounced. When it fires, each
group with connected proxies is translated again. Its watchers are notified only if the serialized
bytes of some resource changed.

Translation and serialization are CPU-bound (about 150 ms per group for a mesh of 1,000 services),
so they run in one worker thread, never in the event loop. Rebuilds run one at a time and in
order. A state whose debounce fires while a rebuild runs waits for it; if several do, only the
newest is built. Results are published back in the event loop: watchers are called there, group
by group in the order the groups were first watched, and within a group in watch order. A new
group gets its first snapshot the same way, right after `watch()`, through `on_snapshot`.

Secrets: the cache adds `ROOTCA` (the trust bundle as a validation context) to every snapshot and
passes on translator secrets only when they are validation contexts too. A secret holding a
private key (`tls_certificate`) or any other secret material is dropped and logged: workload keys
stay in the pod and reach Envoy only from the mesh-agent.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from google.protobuf.message import Message

from controlplane.log import get_logger
from controlplane.model.types import MeshState, Proxy
from controlplane.translate.resources import ROOTCA_SECRET, SECRET, ProxyConfig
from controlplane.xds.debounce import DebounceSettings, Debouncer
from controlplane.xds.snapshot import SERVED_TYPES, Snapshot, build_snapshot

log = get_logger("xds.cache")

Translate = Callable[[MeshState, Proxy], ProxyConfig]
SnapshotCallback = Callable[[Snapshot], None]


def root_ca_secret(bundle_pem: bytes) -> secret_pb2.Secret:
    """Build the `ROOTCA` secret: the trust bundle as a validation context's trusted CAs."""
    return secret_pb2.Secret(
        name=ROOTCA_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca={"inline_bytes": bundle_pem}
        ),
    )


def servable_secrets(secrets: Mapping[str, Message]) -> tuple[dict[str, Message], list[tuple[str, str]]]:
    """Split translator secrets into those the control plane may serve and (name, reason) rejects.

    Only validation contexts (trust bundles) are served over ADS.
    """
    kept: dict[str, Message] = {}
    rejected: list[tuple[str, str]] = []
    for name, secret in secrets.items():
        if not isinstance(secret, secret_pb2.Secret):
            rejected.append((name, f"is a {type(secret).__name__}, not a tls.v3.Secret"))
        elif secret.WhichOneof("type") != "validation_context":
            kind = secret.WhichOneof("type") or "empty"
            rejected.append((name, f"holds {kind}; only validation_context secrets are served"))
        elif name == ROOTCA_SECRET:
            rejected.append((name, "is reserved for the trust bundle the control plane serves"))
        else:
            kept[name] = secret
    return kept, rejected


@dataclass(eq=False)
class Watch:
    """One stream's interest in its group's snapshot; `cancel()` when the stream ends.

    `snapshot` is None until the group's first snapshot is built; `on_snapshot` is called with it
    and with every later snapshot whose content differs.
    """

    proxy: Proxy
    on_snapshot: SnapshotCallback
    snapshot: Snapshot | None
    _cache: SnapshotCache | None = field(default=None, repr=False)

    def cancel(self) -> None:
        if self._cache is not None:
            self._cache._remove(self)
            self._cache = None


@dataclass(eq=False)
class _Group:
    proxy: Proxy
    snapshot: Snapshot | None = None
    # A dict, not a set, so watchers are called in the order they registered.
    watches: dict[Watch, None] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Rebuild:
    """One rebuild's input, fixed in the event loop before the worker thread starts on it."""

    state: MeshState
    groups: tuple[_Group, ...]
    trust_bundle: bytes | None
    seen_at: float
    # True when `state` is new for every group. False when only new groups get a first snapshot.
    whole_mesh: bool


@dataclass(frozen=True)
class _Built:
    snapshot: Snapshot | None  # None when translation failed, so the group keeps its last snapshot
    problems: tuple[str, ...] | None


class SnapshotCache:
    """Computes and shares snapshots per proxy group; notifies watchers of changed groups.

    Call `update`, `refresh`, `watch` and `Watch.cancel` from the event loop thread.
    """

    def __init__(
        self,
        translate: Translate,
        *,
        trust_bundle: Callable[[], bytes | None],
        state: MeshState | None = None,
        clock: Callable[[], float] = time.monotonic,
        debounce: DebounceSettings = DebounceSettings(),
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._translate = translate
        self._trust_bundle = trust_bundle
        self._state = state
        self._clock = clock
        self._groups: dict[tuple, _Group] = {}
        extra = {"sleep": sleep} if sleep is not None else {}
        self._debouncer = Debouncer(self._fire, settings=debounce, clock=clock, **extra)
        self._latest: MeshState | None = None  # updated, debounce still running
        self._due: MeshState | None = None  # debounce fired, waiting for the worker
        self._due_seen_at: float | None = None
        self._unbuilt: dict[tuple, float] = {}  # new group key -> when it was first watched
        # One thread, so rebuilds never overlap and finish in the order they started.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xds-translate")
        self._driver: asyncio.Task[None] | None = None
        self._closed = False

    # ----- state changes ------------------------------------------------------------------

    def update(self, state: MeshState) -> None:
        """Schedule a rebuild for `state` after the debounce."""
        self._latest = state
        self._debouncer.trigger()

    def refresh(self) -> None:
        """Schedule a rebuild of the newest state, e.g. after the trust bundle rotated."""
        self._debouncer.trigger()

    def _fire(self, first_change: float) -> None:
        for state in (self._latest, self._due, self._state):
            if state is not None:
                break
        else:
            return
        self._latest = None
        self._due = state
        # A coalesced rebuild reports the earliest change it carries, so push latency includes the wait.
        if self._due_seen_at is None or first_change < self._due_seen_at:
            self._due_seen_at = first_change
        self._start_driver()

    def apply(self, state: MeshState, *, seen_at: float) -> int:
        """Rebuild every watched group for `state` in the calling thread; return how many changed.

        For tests and tools: it blocks its caller for the whole translation. Servers call `update`,
        which hands translation to the worker thread.
        """
        rebuild = _Rebuild(state, tuple(self._groups.values()), self._trust_bundle(), seen_at, True)
        return self._publish(rebuild, self._build_all(rebuild))

    async def idle(self) -> None:
        """Wait until every rebuild that is due has been published.

        A burst of updates still inside its debounce period is not waited for.
        """
        while self._driver is not None and not self._driver.done():
            # asyncio.wait neither cancels the driver when this waiter is cancelled nor raises.
            await asyncio.wait({self._driver})

    async def close(self) -> None:
        """Drop pending updates and stop the worker.

        A translation already running finishes in its thread, and its result is discarded.
        """
        self._closed = True
        await self._debouncer.close()
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
            try:
                await self._driver
            except asyncio.CancelledError:
                pass
        self._worker.shutdown(wait=False, cancel_futures=True)

    # ----- watches ------------------------------------------------------------------------

    def watch(self, proxy: Proxy, on_snapshot: SnapshotCallback) -> Watch:
        """Register a stream for `proxy`.

        The returned Watch carries the group's current snapshot. For a new group that is None,
        and the first snapshot is built in the worker and passed to `on_snapshot`.
        """
        key = proxy.group_key
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(proxy=proxy)
            self._unbuilt[key] = self._clock()
            self._start_driver()
        watch = Watch(proxy=proxy, on_snapshot=on_snapshot, snapshot=group.snapshot, _cache=self)
        group.watches[watch] = None
        return watch

    def _remove(self, watch: Watch) -> None:
        key = watch.proxy.group_key
        group = self._groups.get(key)
        if group is None:
            return
        group.watches.pop(watch, None)
        if not group.watches:
            del self._groups[key]
            self._unbuilt.pop(key, None)

    @property
    def group_count(self) -> int:
        return len(self._groups)

    # ----- the rebuild driver (event loop side) -------------------------------------------

    def _start_driver(self) -> None:
        if self._closed or (self._driver is not None and not self._driver.done()):
            return
        self._driver = asyncio.get_running_loop().create_task(self._drive(), name="xds-cache-rebuild")

    async def _drive(self) -> None:
        """Run due rebuilds in the worker one after another until none is left."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                rebuild = self._next_rebuild()
            except Exception:
                # Reading the trust bundle failed. The due state stays, so the next update or
                # refresh tries again.
                log.exception("xds.cache.rebuild_failed", stage="prepare", groups=len(self._groups))
                return
            if rebuild is None:
                return
            try:
                built = await loop.run_in_executor(self._worker, self._build_all, rebuild)
            except Exception:
                # _build_all catches translator errors per group, so this is a bug in the cache itself.
                log.exception("xds.cache.rebuild_failed", stage="build", groups=len(rebuild.groups))
                continue
            self._publish(rebuild, built)

    def _next_rebuild(self) -> _Rebuild | None:
        """Take the newest due state for every group or, failing that, the groups never built."""
        if self._due is not None:
            state, seen_at = self._due, self._due_seen_at
            assert seen_at is not None  # set together with _due
            bundle = self._trust_bundle()
            self._due, self._due_seen_at = None, None
            self._unbuilt.clear()
            return _Rebuild(state, tuple(self._groups.values()), bundle, seen_at, True)
        if not self._unbuilt or self._state is None:
            return None
        bundle = self._trust_bundle()
        groups = tuple(self._groups[key] for key in self._unbuilt)
        seen_at = min(self._unbuilt.values())
        self._unbuilt.clear()
        return _Rebuild(self._state, groups, bundle, seen_at, False)

    def _publish(self, rebuild: _Rebuild, built: Sequence[_Built]) -> int:
        """Store the results and call watchers, in group order; return how many groups changed."""
        if rebuild.whole_mesh:
            self._state = rebuild.state
        changed = 0
        for group, result in zip(rebuild.groups, built):
            if self._groups.get(group.proxy.group_key) is not group:
                continue  # its last stream ended during the rebuild
            if result.problems is not None:
                self._report_problems(group, result.problems)
            if result.snapshot is None or result.snapshot.same_content(group.snapshot):
                continue
            group.snapshot = result.snapshot
            changed += 1
            for watch in list(group.watches):
                watch.snapshot = result.snapshot
                self._notify(watch, result.snapshot)
        log.debug("xds.cache.applied", groups=len(rebuild.groups), changed=changed)
        return changed

    @staticmethod
    def _notify(watch: Watch, snapshot: Snapshot) -> None:
        try:
            watch.on_snapshot(snapshot)
        except Exception:
            # One broken stream must not keep the snapshot from the others in its group.
            log.exception("xds.cache.watcher_failed", node_id=watch.proxy.node_id)

    def _report_problems(self, group: _Group, problems: tuple[str, ...]) -> None:
        if problems and problems != group.problems:
            log.warning("xds.translate.problems", namespace=group.proxy.namespace,
                        workload=group.proxy.workload, count=len(problems), first=problems[0])
        group.problems = problems

    # ----- building (worker thread side) --------------------------------------------------

    def _build_all(self, rebuild: _Rebuild) -> list[_Built]:
        return [self._build(group.proxy, rebuild) for group in rebuild.groups]

    def _build(self, proxy: Proxy, rebuild: _Rebuild) -> _Built:
        """Translate and serialize for one group; on failure keep the group's last snapshot."""
        try:
            config = self._translate(rebuild.state, proxy)
            resources: dict[str, Mapping[str, Message]] = {}
            for type_url, by_name in config.resources.items():
                if type_url not in SERVED_TYPES:
                    log.warning("xds.translate.type_ignored", type_url=type_url, node_id=proxy.node_id)
                elif type_url != SECRET:
                    resources[type_url] = by_name
            resources[SECRET] = self._secrets(config.resources.get(SECRET, {}), proxy, rebuild.trust_bundle)
            snapshot = build_snapshot(resources, seen_at=rebuild.seen_at)
        except Exception:
            # A translator bug must not take down the streams of every other group.
            log.exception("xds.translate.failed", node_id=proxy.node_id, workload=proxy.workload,
                          namespace=proxy.namespace, service_account=proxy.service_account)
            return _Built(None, None)
        return _Built(snapshot, tuple(str(problem) for problem in config.problems))

    @staticmethod
    def _secrets(translated: Mapping[str, Message], proxy: Proxy, bundle: bytes | None) -> dict[str, Message]:
        kept, rejected = servable_secrets(translated)
        for name, reason in rejected:
            log.error("xds.secret.rejected", secret=name, reason=reason, node_id=proxy.node_id)
        if bundle:
            kept[ROOTCA_SECRET] = root_ca_secret(bundle)
        return kept
