"""The snapshot cache: one configuration per proxy group, shared by every stream in the group.

Proxies with equal `Proxy.group_key` get the same configuration, so the translator runs once per
group and the serialized resources are shared. `update(state)` is debounced. When it fires, each
group with connected proxies is translated again. Its watchers are notified only if the serialized
bytes of some resource changed.

Secrets: the cache adds `ROOTCA` (the trust bundle as a validation context) to every snapshot and
passes on translator secrets only when they are validation contexts too. A secret holding a
private key (`tls_certificate`) or any other secret material is dropped and logged: workload keys
stay in the pod and reach Envoy only from the mesh-agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

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
    """One stream's interest in its group's snapshot; `cancel()` when the stream ends."""

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
    watches: set[Watch] = field(default_factory=set)
    problems: tuple[str, ...] = ()


class SnapshotCache:
    """Computes and shares snapshots per proxy group; notifies watchers of changed groups."""

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
        self._pending: MeshState | None = None

    # ----- state changes ------------------------------------------------------------------

    def update(self, state: MeshState) -> None:
        """Schedule a rebuild for `state` after the debounce; call from the event loop."""
        self._pending = state
        self._debouncer.trigger()

    def refresh(self) -> None:
        """Schedule a rebuild of the current state, e.g. after the trust bundle rotated."""
        if self._pending is None and self._state is not None:
            self._pending = self._state
        self._debouncer.trigger()

    def _fire(self, first_change: float) -> None:
        state, self._pending = self._pending, None
        if state is not None:
            self.apply(state, seen_at=first_change)

    def apply(self, state: MeshState, *, seen_at: float) -> int:
        """Rebuild every watched group for `state` now; return how many groups changed."""
        self._state = state
        changed = 0
        for group in list(self._groups.values()):
            snapshot = self._build(group, seen_at)
            if snapshot is None or snapshot.same_content(group.snapshot):
                continue
            group.snapshot = snapshot
            changed += 1
            for watch in list(group.watches):
                watch.snapshot = snapshot
                watch.on_snapshot(snapshot)
        log.debug("xds.cache.applied", groups=len(self._groups), changed=changed)
        return changed

    async def close(self) -> None:
        await self._debouncer.close()

    # ----- watches ------------------------------------------------------------------------

    def watch(self, proxy: Proxy, on_snapshot: SnapshotCallback) -> Watch:
        """Register a stream for `proxy`; the returned Watch carries the current snapshot."""
        group = self._groups.get(proxy.group_key)
        if group is None:
            group = _Group(proxy=proxy)
            group.snapshot = self._build(group, self._clock())
            self._groups[proxy.group_key] = group
        watch = Watch(proxy=proxy, on_snapshot=on_snapshot, snapshot=group.snapshot, _cache=self)
        group.watches.add(watch)
        return watch

    def _remove(self, watch: Watch) -> None:
        group = self._groups.get(watch.proxy.group_key)
        if group is None:
            return
        group.watches.discard(watch)
        if not group.watches:
            del self._groups[watch.proxy.group_key]

    @property
    def group_count(self) -> int:
        return len(self._groups)

    # ----- building -----------------------------------------------------------------------

    def _build(self, group: _Group, seen_at: float) -> Snapshot | None:
        """Translate for the group's proxy; on failure keep the group's last snapshot."""
        if self._state is None:
            return group.snapshot
        proxy = group.proxy
        try:
            config = self._translate(self._state, proxy)
        except Exception:
            # A translator bug must not take down the streams of every other group.
            log.exception("xds.translate.failed", node_id=proxy.node_id, workload=proxy.workload,
                          namespace=proxy.namespace)
            return group.snapshot
        self._report_problems(group, config)
        resources: dict[str, Mapping[str, Message]] = {}
        for type_url, by_name in config.resources.items():
            if type_url not in SERVED_TYPES:
                log.warning("xds.translate.type_ignored", type_url=type_url, node_id=proxy.node_id)
            elif type_url != SECRET:
                resources[type_url] = by_name
        resources[SECRET] = self._secrets(config.resources.get(SECRET, {}), proxy)
        return build_snapshot(resources, seen_at=seen_at)

    def _secrets(self, translated: Mapping[str, Message], proxy: Proxy) -> dict[str, Message]:
        kept, rejected = servable_secrets(translated)
        for name, reason in rejected:
            log.error("xds.secret.rejected", secret=name, reason=reason, node_id=proxy.node_id)
        bundle = self._trust_bundle()
        if bundle:
            kept[ROOTCA_SECRET] = root_ca_secret(bundle)
        return kept

    def _report_problems(self, group: _Group, config: ProxyConfig) -> None:
        problems = tuple(str(problem) for problem in config.problems)
        if problems and problems != group.problems:
            log.warning("xds.translate.problems", namespace=group.proxy.namespace,
                        workload=group.proxy.workload, count=len(problems), first=problems[0])
        group.problems = problems
