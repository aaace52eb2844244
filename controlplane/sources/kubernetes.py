"""The Kubernetes configuration source: informers feeding an object store on the event loop.

`KubernetesSource` runs one informer thread per watched collection (see `k8s_informer`) and
applies their events on the asyncio loop that started it, so the store is only ever touched
from that loop. Consumers read `objects()`, wait for `ready`, and follow changes through
`changes()` or an `on_change` callback. Changes are not coalesced: a burst of events gives a
burst of notifications, and the consumer decides how often to rebuild.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.config.config_exception import ConfigException

from controlplane.errors import KubernetesConfigError
from controlplane.log import get_logger
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE
from controlplane.sources.k8s_informer import Change, Informer, WatchSettings
from controlplane.sources.k8s_resources import ObjectKey, ResourceKind, watched_kinds

log = get_logger("sources.kubernetes")

__all__ = ["Change", "KubernetesSource", "WatchSettings", "load_client_configuration"]


def load_client_configuration(
    *, kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.Configuration:
    """Return client settings: in-cluster when run in a pod, otherwise from a kubeconfig.

    In-cluster settings are used when `kubeconfig` is None and `KUBERNETES_SERVICE_HOST` is set.
    Otherwise the kubeconfig is `kubeconfig`, `$KUBECONFIG` or `~/.kube/config`, in that order.
    """
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise KubernetesConfigError(f"in-cluster configuration is unusable: {exc}", source="in-cluster") from exc
        return configuration
    try:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubernetesConfigError(
            f"kubeconfig {where} is unusable: {exc}; pass --kubeconfig or run inside a cluster", source=where
        ) from exc
    return configuration


class KubernetesSource:
    """The watched cluster objects, keyed by (apiVersion/kind, namespace, name).

    Stored objects are the raw dicts the API server sent, with `apiVersion` and `kind` set.
    `objects()` returns copies, but the dicts in each `Change` are shared and must not be modified.
    """

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        settings: WatchSettings | None = None,
        on_change: Callable[[Change], None] | None = None,
        kinds: tuple[ResourceKind, ...] | None = None,
    ) -> None:
        self._configuration = configuration
        self._settings = settings or WatchSettings()
        self._on_change = on_change
        self._kinds = kinds if kinds is not None else watched_kinds(root_namespace)
        self._store: dict[ObjectKey, Mapping[str, Any]] = {}
        self._pending: set[ResourceKind] = set(self._kinds)
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self._informers: list[Informer] = []
        self._api_client: kubernetes.client.ApiClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()

    @property
    def kinds(self) -> tuple[ResourceKind, ...]:
        return self._kinds

    @property
    def unlisted(self) -> tuple[str, ...]:
        """The collection paths that have not listed yet, which is what `ready` waits for."""
        return tuple(sorted(kind.path for kind in self._pending))

    def objects(self) -> list[dict[str, Any]]:
        """Return a copy of every stored object."""
        return [copy.deepcopy(dict(obj)) for obj in self._store.values()]

    def get(self, key: ObjectKey) -> Mapping[str, Any] | None:
        return self._store.get(key)

    async def changes(self) -> AsyncIterator[Change]:
        """Yield every change applied after this call, until the consumer stops iterating."""
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    async def start(self) -> None:
        """Start one informer thread per collection; `ready` is set once each has listed."""
        if self._loop is not None:
            raise RuntimeError("KubernetesSource.start() was already called")
        self._loop = asyncio.get_running_loop()
        self._api_client = kubernetes.client.ApiClient(self._configuration)
        for kind in self._kinds:
            informer = Informer(
                kind,
                api_client=self._api_client,
                deliver=self._deliver_threadsafe,
                on_listed=self._listed_threadsafe,
                settings=self._settings,
            )
            self._informers.append(informer)
            informer.start()
        log.info("kubernetes.source.started", host=self._configuration.host, collections=len(self._kinds))

    async def stop(self) -> None:
        """Stop every informer and wait for its thread, at most `join_timeout_seconds` each."""
        for informer in self._informers:
            informer.stop()
        for informer in self._informers:
            finished = await asyncio.to_thread(informer.join, self._settings.join_timeout_seconds)
            if not finished:
                log.warning(
                    "kubernetes.informer.join_timed_out",
                    resource=informer.kind.path,
                    timeout=self._settings.join_timeout_seconds,
                )
        self._informers.clear()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        log.info("kubernetes.source.stopped")

    async def __aenter__(self) -> KubernetesSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # Called from informer threads.

    def _deliver_threadsafe(self, event: Change) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._apply, event)

    def _listed_threadsafe(self, kind: ResourceKind) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._mark_listed, kind)

    # Called on the event loop.

    def _apply(self, event: Change) -> None:
        if event.type == "DELETED":
            self._store.pop(event.key, None)
        else:
            self._store[event.key] = event.object
        for queue in self._subscribers:
            queue.put_nowait(event)
        if self._on_change is not None:
            try:
                self._on_change(event)
            except Exception:
                # A failing consumer must not stop the store from following the cluster.
                log.exception("kubernetes.source.on_change_failed", key="/".join(event.key), type=event.type)

    def _mark_listed(self, kind: ResourceKind) -> None:
        self._pending.discard(kind)
        if not self._pending and not self.ready.is_set():
            log.info("kubernetes.source.ready", objects=len(self._store))
            self.ready.set()
