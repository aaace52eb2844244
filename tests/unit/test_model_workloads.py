"""Workloads from Pods and Deployment templates, and which objects the parser reads."""

from __future__ import annotations

from controlplane.model.parse import parse_objects
from controlplane.model.types import Workload


def pod(name, labels, ports, ip=None, namespace="shop"):
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"serviceAccountName": f"{name}-sa", "containers": [{"name": "app", "ports": ports}]},
    }
    if ip:
        obj["status"] = {"podIP": ip}
    return obj


def service(ports, name="api", namespace="shop"):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": "api"}, "ports": ports},
    }


def test_deployment_template_becomes_one_workload():
    state = parse_objects([{
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ledger", "namespace": "payments", "uid": "u-1", "labels": {"team": "money"}},
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"labels": {"app": "ledger"}, "annotations": {"idmesh.io/inject": "true"}},
                "spec": {
                    "serviceAccountName": "api",
                    "containers": [
                        {"name": "ledger", "ports": [{"containerPort": 8080, "name": "http"}]},
                        {"name": "metrics", "ports": [{"containerPort": 9100, "protocol": "TCP"}]},
                    ],
                },
            },
        },
    }])
    (workload,) = state.workloads
    assert workload.kind == "Deployment"
    assert workload.name == "ledger"
    assert workload.namespace == "payments"
    assert workload.service_account == "api"
    assert dict(workload.labels) == {"app": "ledger"}
    assert [(p.port, p.name) for p in workload.ports] == [(8080, "http"), (9100, "")]
    assert workload.ip is None
    assert workload.injected is True
    assert workload.uid == "u-1"


def test_pod_reads_ip_host_network_and_default_service_account():
    state = parse_objects([{
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "namespace": "kube-system", "annotations": {"idmesh.io/inject": "true"}},
        "spec": {"hostNetwork": True, "nodeName": "node-1", "containers": [{"name": "agent"}]},
        "status": {"podIP": "192.168.0.5"},
    }])
    (workload,) = state.workloads
    assert workload.service_account == "default"
    assert workload.host_network is True
    assert workload.injected is False
    assert workload.ip == "192.168.0.5"
    assert workload.node_name == "node-1"


def test_pod_with_injection_status_counts_as_injected():
    state = parse_objects([{
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "old", "namespace": "shop", "annotations": {"idmesh.io/status": "{}"}},
        "spec": {"containers": [{"name": "app"}]},
    }])
    assert state.workloads[0].injected is True


def test_pod_with_bad_container_port_left_out():
    state = parse_objects([pod("api-1", {"app": "api"}, [{"containerPort": 70000, "name": "http"}])])
    assert state.workloads == ()
    assert [str(e) for e in state.errors] == [
        "Pod shop/api-1: spec.containers[0].ports[0].containerPort: 70000 is not a port number; use an integer from 1 to 65535"
    ]


def test_pod_without_namespace_goes_to_default():
    state = parse_objects([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": []}}])
    assert state.workloads == (Workload(namespace="default", name="a"),)


def test_unknown_kinds_ignored():
    state = parse_objects([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "y"}},
        {"apiVersion": "example.org/v1", "kind": "Pod", "metadata": {"name": "z"}},
    ])
    assert state.errors == ()
    assert state.workloads == ()


def test_duplicate_object_reported_and_first_kept():
    first = service([{"name": "http", "port": 80}])
    second = service([{"name": "http", "port": 81}])
    state = parse_objects([first, second])
    assert [s.ports[0].port for s in state.services] == [80]
    assert [str(e) for e in state.errors] == ["Service shop/api: is defined more than once; the first definition is used"]
