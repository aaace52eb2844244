"""When an install counts as done: the rollout rules, the wait with its timeout, and when an
object needs no update."""

from __future__ import annotations

import pytest

from controlplane.install.cluster import contains, rollout_state, wait_for_rollout
from controlplane.install.errors import RolloutTimeoutError

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "idmesh-controlplane", "namespace": "idmesh-system"},
    "spec": {"replicas": 2},
}


def live(status: dict, generation: int | None = None) -> dict:
    metadata = dict(DEPLOYMENT["metadata"])
    if generation is not None:
        metadata["generation"] = generation
    return {**DEPLOYMENT, "metadata": metadata, "status": status}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Responses:
    """Returns one live Deployment per GET, repeating the last."""

    def __init__(self, *objects: dict) -> None:
        self.objects = list(objects)
        self.gets = 0

    def get(self, _obj: dict) -> dict:
        self.gets += 1
        return self.objects.pop(0) if len(self.objects) > 1 else self.objects[0]


def test_ready_when_every_replica_is_ready():
    assert rollout_state(live({"readyReplicas": 2})).done


def test_not_ready_with_fewer_ready_replicas():
    state = rollout_state(live({"readyReplicas": 1}))

    assert not state.done
    assert (state.ready, state.desired) == (1, 2)


def test_not_ready_before_controller_sees_new_generation():
    assert not rollout_state(live({"readyReplicas": 2, "observedGeneration": 1}, generation=2)).done


def test_not_ready_while_old_replicas_remain():
    assert not rollout_state(live({"readyReplicas": 2, "updatedReplicas": 1, "observedGeneration": 2}, generation=2)).done


def test_no_status_is_not_ready():
    assert not rollout_state({**DEPLOYMENT}).done


def test_wait_returns_once_ready():
    clock, lines = FakeClock(), []
    cluster = Responses(live({}), live({"readyReplicas": 1}), live({"readyReplicas": 2}))

    wait_for_rollout(cluster, DEPLOYMENT, timeout=60, progress=lines.append, clock=clock, sleep=clock.sleep)

    assert cluster.gets == 3
    assert lines == [
        "waiting for deployment/idmesh-controlplane: 0/2 replicas ready",
        "waiting for deployment/idmesh-controlplane: 1/2 replicas ready",
        "deployment/idmesh-controlplane ready: 2/2 replicas",
    ]


def test_wait_times_out_with_replica_counts():
    clock = FakeClock()
    cluster = Responses(live({"readyReplicas": 1}))

    with pytest.raises(RolloutTimeoutError) as raised:
        wait_for_rollout(cluster, DEPLOYMENT, timeout=5, progress=lambda line: None, clock=clock, sleep=clock.sleep)

    assert (raised.value.ready, raised.value.desired) == (1, 2)
    assert str(raised.value).startswith(
        "deployment/idmesh-controlplane in namespace idmesh-system is not ready after 5 s: 1 of 2 replicas ready"
    )
    assert clock.now == 5
    assert cluster.gets == 6


def test_contains_ignores_server_added_fields():
    wanted = {"spec": {"ports": [{"name": "grpc", "port": 15012}]}}
    server = {"metadata": {"uid": "u"}, "spec": {"ports": [{"name": "grpc", "port": 15012, "protocol": "TCP"}], "type": "ClusterIP"}}

    assert contains(server, wanted)


def test_contains_sees_changed_value():
    assert not contains({"spec": {"replicas": 2}}, {"spec": {"replicas": 3}})


def test_contains_sees_removed_list_item():
    assert not contains({"args": ["a", "b"]}, {"args": ["a"]})


def test_contains_sees_missing_field():
    assert not contains({"spec": {}}, {"spec": {"replicas": 2}})
