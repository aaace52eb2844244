"""An informer: list a collection, then watch it from the listed resourceVersion, in a thread.

The official client is synchronous, so each informer runs in its own thread and hands events
to its owner through `deliver`, which must be safe to call from that thread. The informer keeps
its own copy of the collection, which serves two purposes. First, a relist is turned into
the synthetic ADDED, MODIFIED and DELETED events that the watch would have sent. Second, a
DELETED event for an object already gone is dropped, so the owner never sees a deletion twice.

Recovery depends on how the watch ended:
- the watch ends at `timeoutSeconds`: watch again from the last resourceVersion seen;
- 410 Gone (HTTP status, or an ERROR event with code 410): list again, quietly;
- the server is unreachable or fails: wait with capped exponential backoff, then watch again
  from the last resourceVersion (which may in turn return 410);
- a CRD collection that is not served: report the collection as listed, check discovery again
  every `crd_recheck_seconds`, and log the absence once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client import ApiClient

from controlplane.errors import KubernetesApiError
from controlplane.log import get_logger
from controlplane.sources import k8s_api
from controlplane.sources.k8s_resources import ObjectKey, ResourceKind

log = get_logger("sources.kubernetes")

WATCH_EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Timeouts and retry pacing of every informer, all in seconds."""

    # Sent as timeoutSeconds: the server ends each watch after this long.
    watch_timeout_seconds: int = 300
    connect_timeout_seconds: float = 10.0
    # How much longer than watch_timeout_seconds to wait for bytes before the connection is dead.
    read_margin_seconds: float = 30.0
    # Read timeout of list and discovery requests.
    request_timeout_seconds: float = 60.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    crd_recheck_seconds: float = 60.0
    # How long stop() waits for each informer thread to finish.
    join_timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class Change:
    """One change to deliver: ADDED, MODIFIED or DELETED with the object's key and state."""

    type: str
    key: ObjectKey
    object: Mapping[str, Any]


class WatchExpired(Exception):
    """The watch started from a resourceVersion the server no longer keeps, so a relist is needed."""


def backoff_delay(attempt: int, settings: WatchSettings, rng: random.Random) -> float:
    """Return the wait before retry number `attempt` (0-based): doubling, capped, with jitter.

    The jitter takes the delay from half to the whole of the capped value, so that replicas
    that lost the API server together do not all come back at the same instant.
    """
    capped = min(settings.backoff_max_seconds, settings.backoff_initial_seconds * 2 ** min(attempt, 32))
    return capped * (0.5 + rng.random() / 2)


def diff_listing(
    old: Mapping[ObjectKey, Mapping[str, Any]], new: Mapping[ObjectKey, Mapping[str, Any]]
) -> list[Change]:
    """Return the events that turn collection `old` into `new`.

    An object counts as modified when its resourceVersion changed, or, lacking one, its content.
    Deletions carry the last state that was known.
    """
    events = []
    for key, obj in new.items():
        before = old.get(key)
        if before is None:
            events.append(Change("ADDED", key, obj))
        elif _resource_version(before) != _resource_version(obj) or (not _resource_version(obj) and before != obj):
            events.append(Change("MODIFIED", key, obj))
    for key, obj in old.items():
        if key not in new:
            events.append(Change("DELETED", key, obj))
    return events


def _resource_version(obj: Mapping[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


class Informer:
    """Lists and watches one collection in a daemon thread until `stop()`."""

    def __init__(
        self,
        kind: ResourceKind,
        *,
        api_client: ApiClient,
        deliver: Callable[[Change], None],
        on_listed: Callable[[ResourceKind], None],
        settings: WatchSettings,
        rng: random.Random | None = None,
    ) -> None:
        self.kind = kind
        self._api_client = api_client
        self._deliver = deliver
        self._on_listed = on_listed
        self._settings = settings
        self._rng = rng or random.Random()
        self._cache: dict[ObjectKey, Mapping[str, Any]] = {}
        self._resource_version: str | None = None
        self._listed_once = False
        self._crd_missing_logged = False
        self._unreachable_logged = False
        # Failed requests in a row, which sets the next backoff delay.
        self._failures = 0
        self._stopping = threading.Event()
        self._response_lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._thread = threading.Thread(target=self._run, name=f"informer {kind.path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish and unblock a watch it is reading.

        NOTE: a list or discovery request in flight is not interrupted. The thread ends when it
        returns, within `request_timeout_seconds`, which may be longer than the join timeout.
        """
        self._stopping.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            # shutdown() makes a read blocked in another thread return at once.
            response.shutdown()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the thread and return whether it finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            log.debug("kubernetes.informer.stopped", resource=self.kind.path)

    def _follow(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.kind.crd and self._resource_version is None and not self._check_crd():
                    self._stopping.wait(self._settings.crd_recheck_seconds)
                    continue
                if self._resource_version is None:
                    self._relist()
                if self._watch() == 0:
                    # A stream that ends with no event at all, again and again, must not spin.
                    self._stopping.wait(backoff_delay(0, self._settings, self._rng))
            except WatchExpired:
                log.debug("kubernetes.watch.expired", resource=self.kind.path, resource_version=self._resource_version)
                self._resource_version = None
            except KubernetesApiError as exc:
                if exc.status == 404 and self.kind.crd:
                    # The CRD was deleted: its objects went with it, and discovery decides when to return.
                    log.info("kubernetes.crd.removed", resource=self.kind.path, kind=self.kind.kind)
                    self._forget_collection()
                    self._stopping.wait(self._settings.crd_recheck_seconds)
                    continue
                delay = backoff_delay(self._failures, self._settings, self._rng)
                self._log_failure(exc, self._failures, delay)
                self._failures += 1
                self._stopping.wait(delay)
            except _Stopped:
                return

    def _recovered(self) -> None:
        """Reset the backoff after the API server has responded to a request."""
        self._failures = 0
        if self._unreachable_logged:
            log.info("kubernetes.api.reachable", resource=self.kind.path)
            self._unreachable_logged = False

    def _log_failure(self, exc: KubernetesApiError, attempt: int, delay: float) -> None:
        # Reconnects are expected churn, so they log at debug, plus one warning per outage.
        log.debug("kubernetes.watch.retrying", resource=self.kind.path, attempt=attempt, delay=round(delay, 3), error=str(exc))
        if attempt >= 2 and not self._unreachable_logged:
            log.warning("kubernetes.api.unreachable", resource=self.kind.path, status=exc.status, error=str(exc))
            self._unreachable_logged = True

    def _timeouts(self, read_seconds: float) -> k8s_api.Timeout:
        return (self._settings.connect_timeout_seconds, read_seconds)

    def _check_crd(self) -> bool:
        served = k8s_api.is_served(self._api_client, self.kind, self._timeouts(self._settings.request_timeout_seconds))
        self._recovered()
        if served:
            if self._crd_missing_logged:
                log.info("kubernetes.crd.found", resource=self.kind.path, kind=self.kind.kind)
            self._crd_missing_logged = False
            return True
        if not self._crd_missing_logged:
            log.info("kubernetes.crd.missing", resource=self.kind.path, kind=self.kind.kind)
            self._crd_missing_logged = True
        self._mark_listed()
        return False

    def _forget_collection(self) -> None:
        """Report every cached object deleted, for a CRD collection that returned 404."""
        self._emit(diff_listing(self._cache, {}))
        self._cache = {}
        self._resource_version = None

    def _relist(self) -> None:
        # NOTE: one unpaginated list per collection. Very large clusters would want `limit`
        # and `continue`, with their own 410 handling for an expired continue token.
        items, resource_version = k8s_api.list_objects(
            self._api_client, self.kind, self._timeouts(self._settings.request_timeout_seconds)
        )
        listed = {self.kind.key_of(item): item for item in items}
        self._emit(diff_listing(self._cache, listed))
        self._cache = listed
        self._resource_version = resource_version
        self._recovered()
        log.debug("kubernetes.informer.listed", resource=self.kind.path, objects=len(listed), resource_version=resource_version)
        self._mark_listed()

    def _mark_listed(self) -> None:
        if self._listed_once:
            return
        self._listed_once = True
        try:
            self._on_listed(self.kind)
        except RuntimeError as exc:
            self._orphaned(exc)

    def _watch(self) -> int:
        """Watch from the last resourceVersion until the server ends the stream.

        Return the number of events received.
        """
        assert self._resource_version is not None
        seconds = self._settings.watch_timeout_seconds
        try:
            response = k8s_api.open_watch(
                self._api_client,
                self.kind,
                resource_version=self._resource_version,
                timeout_seconds=seconds,
                timeout=self._timeouts(seconds + self._settings.read_margin_seconds),
            )
        except KubernetesApiError as exc:
            if exc.status == 410:
                raise WatchExpired() from exc
            raise
        self._recovered()
        with self._response_lock:
            self._response = response
        received = 0
        try:
            if self._stopping.is_set():
                raise _Stopped
            for event in k8s_api.iter_events(response, self.kind):
                if self._stopping.is_set():
                    raise _Stopped
                received += 1
                self._handle(event)
        except KubernetesApiError:
            if self._stopping.is_set():
                raise _Stopped from None
            raise
        finally:
            with self._response_lock:
                self._response = None
            response.release_conn()
        return received

    def _handle(self, event: Mapping[str, Any]) -> None:
        event_type = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            log.warning("kubernetes.watch.event_ignored", resource=self.kind.path, type=event_type, reason="no object")
            return
        if event_type == "ERROR":
            self._handle_error(obj)
            return
        if event_type == "BOOKMARK":
            self._advance(obj)
            return
        if event_type not in WATCH_EVENT_TYPES:
            log.warning("kubernetes.watch.event_unknown", resource=self.kind.path, type=event_type)
            return

        obj = self.kind.complete(obj)
        key = self.kind.key_of(obj)
        self._advance(obj)
        if event_type == "DELETED":
            if self._cache.pop(key, None) is not None:
                self._emit([Change("DELETED", key, obj)])
            return
        change = "MODIFIED" if key in self._cache else "ADDED"
        self._cache[key] = obj
        self._emit([Change(change, key, obj)])

    def _handle_error(self, status: Mapping[str, Any]) -> None:
        if status.get("code") == 410:
            raise WatchExpired()
        # Any other error leaves the stream position in doubt, so start over with a list.
        self._resource_version = None
        raise KubernetesApiError(
            f"watch of {self.kind.path} sent an ERROR event: {status.get('code')} {status.get('reason')}: {status.get('message')}",
            resource=self.kind.path,
            status=status.get("code") or 0,
            reason=status.get("reason") or "",
        )

    def _advance(self, obj: Mapping[str, Any]) -> None:
        resource_version = _resource_version(obj)
        if resource_version:
            self._resource_version = resource_version

    def _emit(self, events: list[Change]) -> None:
        for event in events:
            try:
                self._deliver(event)
            except RuntimeError as exc:
                self._orphaned(exc)

    def _orphaned(self, exc: RuntimeError) -> None:
        """Stop the thread because the owner's event loop is closed and cannot take events."""
        log.debug("kubernetes.informer.orphaned", resource=self.kind.path, error=str(exc))
        self._stopping.set()
        raise _Stopped from exc


class _Stopped(Exception):
    """Unwinds the informer thread after stop()."""
