"""A Kubernetes API emulator on loopback, used with the official client over real HTTP.

`kmock.KubernetesEmulator` stores objects, serves discovery, list, watch, get, create, merge
patch and delete. It falls short of a real API server where informers depend on it, so
`ApiEmulator` adds, without mocking the client:

- resourceVersion: one counter for the whole server, stamped on every created, patched and
  deleted object (a DELETED event carries a new version, as etcd gives it). Lists return the
  counter as `metadata.resourceVersion`. Created objects also get `metadata.uid`,
  `metadata.creationTimestamp` and the namespace from the URL.
- watch from a resourceVersion: events after that version are replayed from a history, then
  live events follow. Without a version (or with "0") the watch starts with ADDED events for
  every current object, as a real server does.
- 410 Gone: `expire_watches()` compacts the history up to the current version and ends every
  open watch with an ERROR event of code 410 ("Expired"). A later watch from an older version
  gets the same ERROR event. With `gone_as_http_status` set, open watches end without an event
  and a later watch from an older version gets an HTTP 410 Status instead.
- `hold_watch_events`: while set, changes are stored and recorded in the history but not sent to
  open watches. This is how a watch connection that silently broke looks to the client.
- `timeoutSeconds` ends a watch; with `allowWatchBookmarks=true` a BOOKMARK event carrying the
  last version the watch has passed is sent first.
- `fieldSelector` on `metadata.name` and `metadata.namespace` (`=`, `==`, `!=`) for list and watch.
- `list_gates`: a list of the named plural waits until its event is set, so a test can hold one
  informer before its first list.
- `send_to_watches()` writes any event, such as one of an unknown type, to open watches.
- `drop_watches()` ends every open watch, as a server does when it shuts down; `ApiServer` stops
  and restarts the HTTP listener on the same port while the emulator keeps its state.
- CRD discovery comes from kmock itself: a group appears under `/apis/GROUP/VERSION` once its
  resources are declared in `emulator.resources`, and an undeclared group returns 404.
  `uninstall()` removes a declared resource and its objects, as deleting a CRD does.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import functools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import kubernetes
import pytest
import pytest_asyncio
from kmock._internal import enums, rendering
from kmock._internal.k8s import KubernetesError, KubernetesResourceNotFoundError

from controlplane.sources.kubernetes import Change, KubernetesSource, WatchSettings

T = TypeVar("T")

# How long an emulator-side wait (a list gate) may block before the request fails.
GATE_TIMEOUT_SECONDS = 10.0
# A watch without timeoutSeconds ends after this, so no handler outlives a test.
DEFAULT_WATCH_SECONDS = 30.0

# The resources a real cluster always serves, declared so that empty lists return 200.
CORE_RESOURCES: dict[str, kmock.ResourceInfo] = {
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False),
    "v1/serviceaccounts": kmock.ResourceInfo(kind="ServiceAccount", namespaced=True),
    "v1/pods": kmock.ResourceInfo(kind="Pod", namespaced=True),
    "v1/services": kmock.ResourceInfo(kind="Service", namespaced=True),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", namespaced=True),
    "discovery.k8s.io/v1/endpointslices": kmock.ResourceInfo(kind="EndpointSlice", namespaced=True),
}

POLICY_PLURALS = {"authorizationpolicies": "AuthorizationPolicy", "peerauthentications": "PeerAuthentication"}

_CLOSE = object()
_PLACEHOLDER = "-"
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(/[^/]+)?")
_MUTATIONS = {enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE}


def declare_policy_crds(emulator: kmock.KubernetesEmulator, group: str, version: str = "v1") -> None:
    """Declare the AuthorizationPolicy and PeerAuthentication resources of one API group."""
    for plural, kind in POLICY_PLURALS.items():
        emulator.resources[f"{group}/{version}/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True)


def _parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """Split `a=b,c!=d` into (field, equal, value) terms."""
    terms = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            field, value = term.split("!=", 1)
            terms.append((field, False, value))
        else:
            field, value = term.replace("==", "=").split("=", 1)
            terms.append((field, True, value))
    return terms


def _matches(obj: dict[str, Any], namespace: str | None, selector: list[tuple[str, bool, str]]) -> bool:
    metadata = obj.get("metadata", {})
    if namespace is not None and metadata.get("namespace") != namespace:
        return False
    for field, equal, value in selector:
        if field not in ("metadata.name", "metadata.namespace"):
            raise KubernetesError(status=400, reason="BadRequest", message=f"field label not supported: {field}")
        actual = metadata.get(field.split(".", 1)[1], "")
        if (actual == value) != equal:
            return False
    return True


@attrs.define(eq=False)
class _Watch:
    resource: Any
    namespace: str | None
    selector: list[tuple[str, bool, str]]
    queue: asyncio.Queue[Any] = attrs.field(factory=asyncio.Queue)
    # The last version this watch has passed: every event up to it was sent or filtered out.
    position: int = 0
    # Set when the server ended the watch early, as opposed to reaching timeoutSeconds.
    closed: bool = False


class _RecordingBuses(collections.defaultdict):  # type: ignore[type-arg]
    """Replaces kmock's per-resource event buses and routes their events to the emulator."""

    def __init__(self, emulator: ApiEmulator) -> None:
        super().__init__()
        self._emulator = emulator

    def __missing__(self, resource: Any) -> Any:
        bus = _RecordingBus(self._emulator, resource)
        self[resource] = bus
        return bus


@attrs.define
class _RecordingBus:
    emulator: ApiEmulator
    resource: Any

    async def put(self, event: dict[str, Any]) -> None:
        self.emulator._record(self.resource, event)


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesEmulator):
    gone_as_http_status: bool = False
    hold_watch_events: bool = False
    list_gates: dict[str, asyncio.Event] = attrs.field(factory=dict)
    # How many lists of each plural the emulator has served.
    list_counts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # How many watches were refused because they started from a compacted resourceVersion.
    refused_watches: int = 0
    _revision: int = attrs.field(default=1, init=False)
    _compacted: int = attrs.field(default=0, init=False)
    _history: list[tuple[int, Any, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _watches: set[_Watch] = attrs.field(factory=set, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = _RecordingBuses(self)
        for key, info in CORE_RESOURCES.items():
            self.resources[key] = info

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock reads `/api/v1/namespaces/NAME` as a namespace with no resource. Giving
        # Namespaces the placeholder namespace "-" lets it parse them as a resource; `_handle`
        # turns the placeholder back into a cluster-scoped request.
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match:
            url = raw_request.rel_url
            path = f"/api/v1/namespaces/{_PLACEHOLDER}/namespaces{match.group(1) or ''}"
            raw_request = raw_request.clone(rel_url=url.with_path(path).with_query(url.query))
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> Any:
        if request.namespace == _PLACEHOLDER:
            # A copy made with attrs.evolve matches none of kmock's reactions, so the frozen
            # Request is changed in place.
            object.__setattr__(request, "namespace", None)
        if request.resource is None or request.action not in _MUTATIONS:
            return await super()._handle(request)
        # One write at a time, so versions grow in the order events reach the history.
        async with self._write_lock:
            self._revision += 1
            self._stamp(request)
            return await super()._handle(request)

    def _stamp(self, request: rendering.Request) -> None:
        if not isinstance(request.data, dict):
            return
        metadata = request.data.setdefault("metadata", {})
        metadata["resourceVersion"] = str(self._revision)
        if request.action == enums.action.CREATE:
            if request.namespace:
                metadata["namespace"] = request.namespace
            metadata.setdefault("uid", str(uuid.uuid4()))
            now = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
            metadata.setdefault("creationTimestamp", now.isoformat().replace("+00:00", "Z"))

    def _record(self, resource: Any, event: dict[str, Any]) -> None:
        obj = copy.deepcopy(event["object"])
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._revision)
        stamped = {"type": event["type"], "object": obj}
        self._history.append((self._revision, resource, stamped))
        if self.hold_watch_events:
            return
        for watch in self._watches:
            watch.position = self._revision
            if watch.resource == resource and _matches(obj, watch.namespace, watch.selector):
                watch.queue.put_nowait(stamped)

    def _select(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = _parse_field_selector(request.params.get("fieldSelector", ""))
        items = []
        for (resource, _namespace, _name), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            raw = copy.deepcopy(obj.raw)
            if _matches(raw, request.namespace, selector):
                items.append(raw)
        return items

    def _check_known(self, request: rendering.Request) -> None:
        if request.resource not in self._get_resources():
            raise KubernetesResourceNotFoundError()

    async def _serve_list(self, request: rendering.Request) -> Any:
        self._check_known(request)
        assert request.resource is not None
        gate = self.list_gates.get(request.resource.plural)
        if gate is not None:
            await asyncio.wait_for(gate.wait(), GATE_TIMEOUT_SECONDS)
        async with self._write_lock:
            items = self._select(request)
            revision = self._revision
        self.list_counts[request.resource.plural] += 1
        return {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(revision)}, "items": items}

    def _gone_event(self, since: str) -> dict[str, Any]:
        return {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {since} ({self._compacted})",
                "reason": "Expired",
                "code": 410,
            },
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        self._check_known(request)
        since = request.params.get("resourceVersion", "")
        seconds = float(request.params.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        bookmarks = request.params.get("allowWatchBookmarks") == "true"
        selector = _parse_field_selector(request.params.get("fieldSelector", ""))

        async with self._write_lock:
            if since not in ("", "0") and int(since) < self._compacted:
                self.refused_watches += 1
                if self.gone_as_http_status:
                    raise KubernetesError(status=410, reason="Expired", message=f"too old resource version: {since}")
                gone = self._gone_event(since)
                watch = None
            else:
                gone = None
                watch = _Watch(request.resource, request.namespace, selector, position=self._revision)
                if since in ("", "0"):
                    replay = [{"type": "ADDED", "object": obj} for obj in self._select(request)]
                else:
                    replay = [
                        event
                        for revision, resource, event in self._history
                        if revision > int(since)
                        and resource == request.resource
                        and _matches(event["object"], request.namespace, selector)
                    ]
                self._watches.add(watch)

        # An empty first chunk makes kmock send the response headers before any event.
        yield b""
        if watch is None:
            yield gone
            return
        try:
            for event in replay:
                yield event
            async for event in self._live_events(watch, seconds):
                yield event
            if bookmarks and not watch.closed:
                yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(watch.position)}}}
        finally:
            self._watches.discard(watch)

    async def _live_events(self, watch: _Watch, seconds: float) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(watch.queue.get(), remaining)
            except TimeoutError:
                return
            if event is _CLOSE:
                watch.closed = True
                return
            yield event

    def expire_watches(self) -> None:
        """Compact the history and end every open watch.

        Each watch gets a 410 ERROR event first, unless `gone_as_http_status` is set: then the
        stream just ends, and the client learns of the expiry from the HTTP 410 of its next watch.
        """
        self._compacted = self._revision
        self._history.clear()
        for watch in list(self._watches):
            if not self.gone_as_http_status:
                watch.queue.put_nowait(self._gone_event(str(watch.position)))
            watch.queue.put_nowait(_CLOSE)

    def is_watching(self, plural: str) -> bool:
        return any(watch.resource.plural == plural for watch in self._watches)

    def send_to_watches(self, plural: str, event: dict[str, Any]) -> int:
        """Send `event` as it is to every open watch of `plural`; return how many received it."""
        watches = [watch for watch in self._watches if watch.resource.plural == plural]
        for watch in watches:
            watch.queue.put_nowait(event)
        return len(watches)

    def uninstall(self, resource_key: str) -> None:
        """Remove a resource such as `security.istio.io/v1/authorizationpolicies` with its objects.

        Open watches of it end, and discovery, list and watch then return 404, as after a CRD
        is deleted.
        """
        del self.resources[resource_key]
        for key in [key for key in self._objects if key[0] == kmock.resource(resource_key)]:
            del self._objects[key]
        for watch in [watch for watch in self._watches if watch.resource == kmock.resource(resource_key)]:
            watch.queue.put_nowait(_CLOSE)

    def drop_watches(self) -> None:
        """End every open watch without an event, as a server that shuts down does."""
        for watch in list(self._watches):
            watch.queue.put_nowait(_CLOSE)


class ApiServer:
    """The emulator behind an HTTP listener on 127.0.0.1 that can stop and start on one port."""

    def __init__(self, emulator: ApiEmulator) -> None:
        self.emulator = emulator
        self.port = 0
        self._server: kmock.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = kmock.Server(self.emulator, host="127.0.0.1", port=self.port or None)
        await server.__aenter__()
        self._server = server
        self.port = server.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self.emulator.drop_watches()
        server, self._server = self._server, None
        await server.__aexit__(None, None, None)


@pytest_asyncio.fixture()
async def api_server() -> AsyncIterator[ApiServer]:
    async with ApiEmulator() as emulator:
        server = ApiServer(emulator)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@pytest.fixture()
def emulator(api_server: ApiServer) -> ApiEmulator:
    return api_server.emulator


@pytest.fixture()
def client_configuration(api_server: ApiServer) -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration(host=api_server.url)
    # One quick retry at most, so a stopped server fails fast instead of in urllib3's loop.
    configuration.retries = 1
    return configuration


class Kube:
    """Runs the official client's blocking calls in a thread, off the loop that serves the emulator."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self.api_client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.discovery = kubernetes.client.DiscoveryV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)

    async def __call__(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(functools.partial(call, *args, **kwargs))


@pytest.fixture()
def kube(client_configuration: kubernetes.client.Configuration) -> Kube:
    return Kube(client_configuration)


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` every 20 ms until it is true, and fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def within(awaitable: Awaitable[T], *, timeout: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, timeout)


# Short server-side watch timeouts and retry pacing, so reconnects happen within a test.
FAST_SETTINGS = WatchSettings(
    watch_timeout_seconds=2,
    connect_timeout_seconds=2.0,
    read_margin_seconds=3.0,
    request_timeout_seconds=12.0,
    backoff_initial_seconds=0.05,
    backoff_max_seconds=0.4,
    crd_recheck_seconds=0.2,
    join_timeout_seconds=5.0,
)


class ChangeLog:
    """Every change a source reported, in order."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)

    def of(self, key: tuple[str, str, str]) -> list[str]:
        """Return the change types seen for one object key."""
        return [change.type for change in self.changes if change.key == key]


@pytest.fixture()
def change_log() -> ChangeLog:
    return ChangeLog()


@pytest_asyncio.fixture()
async def make_source(
    client_configuration: kubernetes.client.Configuration, change_log: ChangeLog
) -> AsyncIterator[Callable[..., Awaitable[KubernetesSource]]]:
    """Start sources against the emulator with `FAST_SETTINGS`, and stop them all at teardown."""
    sources: list[KubernetesSource] = []

    async def start(**kwargs: Any) -> KubernetesSource:
        kwargs.setdefault("settings", FAST_SETTINGS)
        kwargs.setdefault("on_change", change_log)
        source = KubernetesSource(client_configuration, **kwargs)
        sources.append(source)
        await source.start()
        return source

    try:
        yield start
    finally:
        for source in sources:
            await source.stop()
