"""Leader election with a `coordination.k8s.io/v1` Lease, for the control plane's singleton duties.

Every replica runs a `LeaderElector` on the same Lease (`idmesh-controlplane` in the root
namespace). The rules follow client-go's leader election:

- a candidate takes the Lease when it does not exist, has no holder, or its record has not
  changed for `leaseDurationSeconds` *as measured on the candidate's own clock* since the
  candidate first saw that record. Comparing `renewTime` with the local clock would trust the
  holder's clock, so it is used for nothing but display;
- the holder renews every `retry_period`. It steps down when the Lease shows another holder, or
  when it has not renewed for `renew_deadline`, which is shorter than the lease duration, so
  the old leader stops before anyone else may start;
- every write carries the `resourceVersion` that was read, so when two candidates race, the API
  server accepts one write and refuses the other with 409 Conflict. Creating the Lease races
  the same way and ends in 409 AlreadyExists for the loser.

`clock` and `sleep` are injected, so tests drive the state machine with a fake clock. The API
requests run in worker threads through the official client.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from kubernetes.client import ApiClient, CoordinationV1Api

from controlplane.errors import ConfigError, KubernetesApiError
from controlplane.kube.rest import DEFAULT_TIMEOUT, MERGE_PATCH, Timeout, call_json
from controlplane.log import get_logger

LEASE_NAME = "idmesh-controlplane"

log = get_logger("kube.leader")


def holder_identity(pod_name: str) -> str:
    """Return a holder identity unique to this process: the pod name and a random suffix.

    The suffix keeps a restarted container from mistaking the Lease of its previous run for its own.
    """
    return f"{pod_name}_{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class ElectionSettings:
    """Lease timing in seconds; the defaults are those of kube-controller-manager and controller-runtime."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ConfigError(
                f"leader election needs 0 < retry period ({self.retry_period:g}s) < renew deadline "
                f"({self.renew_deadline:g}s) < lease duration ({self.lease_duration:g}s)"
            )


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The fields of a Lease that the election reads."""

    holder: str
    duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_object(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(lease.get("metadata") or {}).get("resourceVersion", ""),
        )


def micro_time(moment: datetime) -> str:
    """Format `moment` as a Kubernetes MicroTime, such as `2030-01-01T00:00:00.000000Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Outcome(Enum):
    """The result of one election round."""

    LEADING = "leading"
    FOLLOWING = "following"
    # The round could not finish: a write conflict or an API failure. Try again next round.
    FAILED = "failed"


class LeaderElector:
    """Takes and renews the Lease for `identity`, and reports leadership through events and a callback."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        identity: str,
        name: str = LEASE_NAME,
        settings: ElectionSettings | None = None,
        clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_change: Callable[[bool], None] | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._api = CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.settings = settings or ElectionSettings()
        self._clock = clock
        self._sleep = sleep
        self._on_change = on_change
        self._timeout = timeout
        # Set while this replica holds the Lease; `following` is set at every other time.
        self.leading = asyncio.Event()
        self.following = asyncio.Event()
        self.following.set()
        self._observed: tuple[str, str | None, str] | None = None
        self._observed_at: datetime | None = None
        self._last_renewal: datetime | None = None

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def run(self) -> None:
        """Take part in the election every `retry_period` until cancelled; step down on cancellation."""
        try:
            while True:
                outcome = await self.try_acquire_or_renew()
                self._update_leadership(outcome, self._clock())
                await self._sleep(self.settings.retry_period)
        finally:
            self._set_leading(False)

    async def try_acquire_or_renew(self) -> Outcome:
        """Run one election round: read the Lease, then create, take over or renew it if allowed."""
        now = self._clock()
        try:
            lease = await asyncio.to_thread(self._read)
            if lease is None:
                return await asyncio.to_thread(self._create, now)
            record = LeaseRecord.from_object(lease)
            self._observe(record, now)
            if record.holder and record.holder != self.identity and not self._expired(record, now):
                return Outcome.FOLLOWING
            return await asyncio.to_thread(self._claim, record, now)
        except KubernetesApiError as exc:
            log.warning("leader.round.failed", lease=self.name, holder=self.identity, status=exc.status, error=exc.message)
            return Outcome.FAILED

    async def release(self) -> None:
        """Give up the Lease if this replica holds it, so another replica can take it at once."""
        self._set_leading(False)
        lease = await asyncio.to_thread(self._read)
        if lease is None or LeaseRecord.from_object(lease).holder != self.identity:
            return
        patch = {
            "metadata": {"resourceVersion": LeaseRecord.from_object(lease).resource_version},
            "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time(self._clock())},
        }
        try:
            await asyncio.to_thread(self._patch, patch)
        except KubernetesApiError as exc:
            log.warning("leader.release.failed", lease=self.name, holder=self.identity, error=exc.message)
            return
        log.info("leader.released", lease=self.name, holder=self.identity)

    def _update_leadership(self, outcome: Outcome, now: datetime) -> None:
        if outcome is Outcome.LEADING:
            self._last_renewal = now
            self._set_leading(True)
            return
        if not self.is_leader:
            return
        if outcome is Outcome.FOLLOWING:
            log.warning("leader.lost", lease=self.name, holder=self.identity, reason="another holder")
            self._set_leading(False)
        elif self._last_renewal is None or now - self._last_renewal >= timedelta(seconds=self.settings.renew_deadline):
            log.warning("leader.lost", lease=self.name, holder=self.identity, reason="renew deadline passed",
                        renew_deadline=self.settings.renew_deadline)
            self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        if leading:
            self.following.clear()
            self.leading.set()
            log.info("leader.elected", lease=self.name, holder=self.identity)
        else:
            self.leading.clear()
            self.following.set()
            log.info("leader.stepped_down", lease=self.name, holder=self.identity)
        if self._on_change is not None:
            self._on_change(leading)

    def _observe(self, record: LeaseRecord, now: datetime) -> None:
        key = (record.holder, record.renew_time, record.resource_version)
        if key != self._observed:
            self._observed = key
            self._observed_at = now

    def _expired(self, record: LeaseRecord, now: datetime) -> bool:
        assert self._observed_at is not None
        duration = record.duration_seconds or self.settings.lease_duration
        return now >= self._observed_at + timedelta(seconds=duration)

    def _spec(self, now: datetime, *, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.settings.lease_duration),
            "acquireTime": acquire_time or micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    # Blocking requests, run in worker threads.

    def _read(self) -> dict[str, Any] | None:
        try:
            return call_json(self._api.read_namespaced_lease, self.name, self.namespace,
                             what=f"GET leases {self.namespace}/{self.name}", timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _create(self, now: datetime) -> Outcome:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(now, acquire_time=None, transitions=0),
        }
        try:
            call_json(self._api.create_namespaced_lease, self.namespace, body,
                      what=f"POST leases {self.namespace}/{self.name}", timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 409:
                log.debug("leader.create.conflict", lease=self.name, holder=self.identity)
                return Outcome.FOLLOWING
            raise
        return Outcome.LEADING

    def _claim(self, record: LeaseRecord, now: datetime) -> Outcome:
        ours = record.holder == self.identity
        spec = self._spec(now, acquire_time=record.acquire_time if ours else None,
                          transitions=record.transitions if ours else record.transitions + 1)
        try:
            self._patch({"metadata": {"resourceVersion": record.resource_version}, "spec": spec})
        except KubernetesApiError as exc:
            if exc.status == 409:
                log.debug("leader.update.conflict", lease=self.name, holder=self.identity)
                return Outcome.FAILED
            raise
        if not ours:
            log.info("leader.lease.taken", lease=self.name, holder=self.identity, previous=record.holder or None)
        return Outcome.LEADING

    def _patch(self, patch: dict[str, Any]) -> None:
        # A merge patch that carries metadata.resourceVersion is a precondition: the API server
        # refuses it with 409 unless the stored Lease still has that version.
        call_json(self._api.patch_namespaced_lease, self.name, self.namespace, patch,
                  what=f"PATCH leases {self.namespace}/{self.name}", timeout=self._timeout, _content_type=MERGE_PATCH)


async def run_while_leading(elector: LeaderElector, duty: Callable[[], Awaitable[None]]) -> None:
    """Run `duty()` each time `elector` becomes leader, and cancel it when leadership ends.

    A duty that returns or fails while this replica still leads is started again only after the
    next election, so a failing duty cannot spin.
    """
    while True:
        await elector.leading.wait()
        task = asyncio.create_task(duty())
        lost = asyncio.create_task(elector.following.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            task.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
        if task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                log.error("leader.duty.failed", lease=elector.name, holder=elector.identity, error=repr(error))
            await elector.following.wait()
