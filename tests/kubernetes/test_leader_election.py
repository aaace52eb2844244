"""Leader election on a Lease: one leader at a time, takeover after expiry, stepping down on loss."""

from __future__ import annotations

import asyncio
import contextlib

import kubernetes
import pytest

from controlplane.errors import ConfigError
from controlplane.kube.leader import ElectionSettings, LeaderElector, Outcome, holder_identity, run_while_leading
from tests.kubernetes.conftest import wait_until
from tests.kubernetes.k8s_extras import FakeClock, WriteBarrier, api_server  # noqa: F401 - fixture

NAMESPACE = "idmesh-system"
SETTINGS = ElectionSettings(lease_duration=15, renew_deadline=10, retry_period=2)


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def make_elector(client_configuration, clock):
    clients = []

    def make(pod: str, **kwargs) -> LeaderElector:
        client = kubernetes.client.ApiClient(client_configuration)
        clients.append(client)
        kwargs.setdefault("settings", SETTINGS)
        return LeaderElector(
            client, namespace=NAMESPACE, identity=holder_identity(pod), clock=clock, sleep=clock.sleep, **kwargs
        )

    try:
        yield make
    finally:
        for client in clients:
            client.close()


@contextlib.asynccontextmanager
async def running(*electors: LeaderElector):
    tasks = {elector: asyncio.create_task(elector.run()) for elector in electors}
    try:
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def lease_holder(kube) -> str | None:
    lease = await kube(kubernetes.client.CoordinationV1Api(kube.api_client).read_namespaced_lease, "idmesh-controlplane", NAMESPACE)
    return lease.spec.holder_identity


async def test_holder_identity_is_pod_name_with_suffix():
    first = holder_identity("controlplane-7d9f")
    second = holder_identity("controlplane-7d9f")

    assert first.startswith("controlplane-7d9f_")
    assert first != second


def test_settings_must_be_ordered():
    with pytest.raises(ConfigError) as caught:
        ElectionSettings(lease_duration=10, renew_deadline=10, retry_period=2)

    assert "renew deadline (10s) < lease duration (10s)" in caught.value.message


async def test_two_electors_one_leader(make_elector, clock, kube):
    first, second = make_elector("cp-a"), make_elector("cp-b")

    async with running(first, second):
        await wait_until(lambda: clock.sleepers == 2, what="both electors to finish their first round")

        assert [first.is_leader, second.is_leader].count(True) == 1
        leader = first if first.is_leader else second
        assert await lease_holder(kube) == leader.identity


async def test_racing_creates_one_winner(make_elector, emulator):
    first, second = make_elector("cp-a"), make_elector("cp-b")
    # Both reads happen before either create, so both candidates try to create the Lease.
    emulator.write_barriers["leases"] = WriteBarrier(2)

    outcomes = await asyncio.gather(first.try_acquire_or_renew(), second.try_acquire_or_renew())

    assert sorted(outcome.value for outcome in outcomes) == ["following", "leading"]


async def test_racing_takeovers_one_winner(make_elector, clock, emulator, kube):
    stale = make_elector("cp-old")
    assert await stale.try_acquire_or_renew() is Outcome.LEADING
    first, second = make_elector("cp-a"), make_elector("cp-b")
    assert await first.try_acquire_or_renew() is Outcome.FOLLOWING
    assert await second.try_acquire_or_renew() is Outcome.FOLLOWING
    await clock.advance(16)
    emulator.write_barriers["leases"] = WriteBarrier(2)

    outcomes = await asyncio.gather(first.try_acquire_or_renew(), second.try_acquire_or_renew())

    assert sorted(outcome.value for outcome in outcomes) == ["failed", "leading"]
    assert emulator.conflicts["leases"] == 1
    winner = first if outcomes[0] is Outcome.LEADING else second
    assert await lease_holder(kube) == winner.identity


async def test_follower_takes_over_after_expiry(make_elector, clock, kube):
    first, second = make_elector("cp-a"), make_elector("cp-b")
    assert await first.try_acquire_or_renew() is Outcome.LEADING

    async with running(second):
        await wait_until(lambda: clock.sleepers == 1, what="the follower's first round")
        # The leader has stopped renewing. 14 s after the follower saw the record, it still waits.
        for _ in range(7):
            await clock.advance(2, rounds=1)
        assert not second.is_leader

        await clock.advance(2, rounds=1)
        assert second.is_leader

    assert await lease_holder(kube) == second.identity


async def test_live_leader_keeps_lease(make_elector, clock):
    first = make_elector("cp-a")
    candidate = make_elector("cp-b")

    async with running(first):
        await wait_until(lambda: first.is_leader, what="the first elector to lead")
        assert await candidate.try_acquire_or_renew() is Outcome.FOLLOWING
        for _ in range(10):
            await clock.advance(2, rounds=1)
        # Each renewal changes the record, so the candidate's 15 s wait starts over each time.
        assert await candidate.try_acquire_or_renew() is Outcome.FOLLOWING
        assert first.is_leader


async def test_leader_steps_down_when_another_holds_lease(make_elector, clock, kube):
    changes: list[bool] = []
    first = make_elector("cp-a", on_change=changes.append)
    leases = kubernetes.client.CoordinationV1Api(kube.api_client)

    async with running(first):
        await wait_until(lambda: first.is_leader, what="the first elector to lead")
        await kube(leases.patch_namespaced_lease, "idmesh-controlplane", NAMESPACE, {"spec": {"holderIdentity": "cp-b_0000"}})
        await clock.advance(2, rounds=1)

        assert changes == [True, False]
        assert first.following.is_set()


async def test_leader_steps_down_after_renew_deadline(make_elector, clock, api_server):
    first = make_elector("cp-a")

    async with running(first):
        await wait_until(lambda: first.is_leader, what="the elector to lead")
        await api_server.stop()
        # Renewals at 2, 4, 6 and 8 s fail, and the last renewal (at 0 s) is within the 10 s deadline.
        for _ in range(4):
            await clock.advance(2, rounds=1)
        assert first.is_leader

        await clock.advance(2, rounds=1)
        assert not first.is_leader

    assert first.following.is_set()


async def test_released_lease_taken_at_once(make_elector, kube):
    first, second = make_elector("cp-a"), make_elector("cp-b")
    assert await first.try_acquire_or_renew() is Outcome.LEADING
    assert await second.try_acquire_or_renew() is Outcome.FOLLOWING

    await first.release()

    assert await second.try_acquire_or_renew() is Outcome.LEADING
    assert await lease_holder(kube) == second.identity


async def test_duty_runs_only_while_leading(make_elector, clock, api_server):
    first = make_elector("cp-a")
    started: list[str] = []
    cancelled: list[str] = []

    async def duty() -> None:
        started.append("duty")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("duty")
            raise

    duties = asyncio.create_task(run_while_leading(first, duty))
    try:
        async with running(first):
            await wait_until(lambda: started == ["duty"], what="the duty to start")
            await api_server.stop()
            for _ in range(5):
                await clock.advance(2, rounds=1)
            await wait_until(lambda: cancelled == ["duty"], what="the duty to be cancelled")
    finally:
        duties.cancel()
        await asyncio.gather(duties, return_exceptions=True)

    assert started == ["duty"]
