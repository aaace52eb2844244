"""Service ports: mesh protocol detection, targetPort resolution and endpoints."""

from __future__ import annotations

import pytest

from controlplane.model.endpoints import endpoints_from_selectors
from controlplane.model.parse import parse_objects
from controlplane.model.services import detect_protocol
from controlplane.model.types import Endpoint


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("http", "", "http"),
        ("http-api", "", "http"),
        ("HTTP-api", "", "http"),
        ("http2", "", "http2"),
        ("http2-stream", "", "http2"),
        ("grpc", "", "grpc"),
        ("grpc-ledger", "", "grpc"),
        ("grpc-web", "", "http"),
        ("grpc-webui", "", "http"),
        ("tcp", "", "tcp"),
        ("tcp-store", "", "tcp"),
        ("https", "", "tcp"),
        ("mysql-main", "", "tcp"),
        ("httpx", "", "tcp"),
        ("web", "", "tcp"),
        ("", "", "tcp"),
        ("tcp-store", "http", "http"),
        ("http", "tcp", "tcp"),
        ("web", "grpc", "grpc"),
        ("web", "HTTP2", "http2"),
        ("web", "kubernetes.io/h2c", "http2"),
        ("web", "kubernetes.io/ws", "http"),
        ("http", "example.com/custom", "http"),
        ("web", "example.com/custom", "tcp"),
    ],
)
def test_protocol_detection(name, app_protocol, expected):
    assert detect_protocol(name, app_protocol) == expected


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


def service(ports, selector=None, name="api", namespace="shop"):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector if selector is not None else {"app": "api"}, "ports": ports},
    }


def test_named_target_port_resolved_from_pods():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8081, "name": "web"}]),
        service([{"name": "http", "port": 80, "targetPort": "web"}]),
    ])
    (svc,) = state.services
    assert svc.ports[0].target_port == 8081
    assert state.errors == ()


def test_named_target_port_kept_when_pods_disagree():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8081, "name": "web"}], ip="10.0.0.1"),
        pod("api-2", {"app": "api"}, [{"containerPort": 9091, "name": "web"}], ip="10.0.0.2"),
        service([{"name": "http", "port": 80, "targetPort": "web"}]),
    ])
    (svc,) = state.services
    assert svc.ports[0].target_port == "web"
    endpoints = endpoints_from_selectors(state)
    assert sorted((e.address, e.port) for e in endpoints) == [("10.0.0.1", 8081), ("10.0.0.2", 9091)]


def test_named_target_port_unknown_stays_a_name():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8081, "name": "web"}], ip="10.0.0.1"),
        service([{"name": "http", "port": 80, "targetPort": "admin"}]),
    ])
    assert state.services[0].ports[0].target_port == "admin"
    assert endpoints_from_selectors(state) == ()


def test_target_port_defaults_to_port():
    state = parse_objects([service([{"name": "http", "port": 8080}])])
    assert state.services[0].ports[0].target_port == 8080


def test_endpoints_from_selectors_cover_every_port():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8080, "name": "web"}, {"containerPort": 9000}], ip="10.0.0.1"),
        pod("other", {"app": "other"}, [{"containerPort": 8080}], ip="10.0.0.9"),
        pod("no-ip", {"app": "api"}, [{"containerPort": 8080}]),
        service([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "tcp-db", "port": 9000}]),
    ])
    assert endpoints_from_selectors(state) == (
        Endpoint("shop", "api", 80, "10.0.0.1", 8080, workload="api-1", service_account="api-1-sa"),
        Endpoint("shop", "api", 9000, "10.0.0.1", 9000, workload="api-1", service_account="api-1-sa"),
    )


def test_service_without_selector_selects_nothing():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8080}], ip="10.0.0.1"),
        service([{"name": "http", "port": 80}], selector={}),
    ])
    assert endpoints_from_selectors(state) == ()


def test_service_in_other_namespace_not_selected():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8080}], ip="10.0.0.1", namespace="payments"),
        service([{"name": "http", "port": 80}]),
    ])
    assert endpoints_from_selectors(state) == ()


def endpoint_slice(endpoints, ports, service_name="api", address_type="IPv4"):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service_name}-abc12", "namespace": "shop", "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    }


def test_endpoint_slice_parsed_by_port_name():
    state = parse_objects([
        pod("api-1", {"app": "api"}, [{"containerPort": 8081, "name": "web"}], ip="10.0.0.1"),
        service([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "grpc", "port": 90, "targetPort": 9090}]),
        endpoint_slice(
            [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "api-1", "namespace": "shop"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"]},
            ],
            [{"name": "http", "port": 8081, "protocol": "TCP"}, {"name": "grpc", "port": 9090}],
        ),
    ])
    assert state.errors == ()
    assert state.endpoints == (
        Endpoint("shop", "api", 80, "10.0.0.1", 8081, workload="api-1", service_account="api-1-sa", ready=True),
        Endpoint("shop", "api", 90, "10.0.0.1", 9090, workload="api-1", service_account="api-1-sa", ready=True),
        Endpoint("shop", "api", 80, "10.0.0.2", 8081, ready=False),
        Endpoint("shop", "api", 90, "10.0.0.2", 9090, ready=False),
        Endpoint("shop", "api", 80, "10.0.0.3", 8081, ready=True),
        Endpoint("shop", "api", 90, "10.0.0.3", 9090, ready=True),
    )


def test_endpoint_slice_of_unknown_service_yields_nothing():
    state = parse_objects([endpoint_slice([{"addresses": ["10.0.0.1"]}], [{"name": "http", "port": 80}], service_name="gone")])
    assert state.endpoints == ()
    assert state.errors == ()


def test_endpoint_slice_fqdn_skipped():
    state = parse_objects([
        service([{"name": "http", "port": 80}]),
        endpoint_slice([{"addresses": ["api.example.org"]}], [{"name": "http", "port": 80}], address_type="FQDN"),
    ])
    assert state.endpoints == ()
    assert state.errors == ()


def test_endpoint_slice_bad_address_reported():
    state = parse_objects([
        service([{"name": "http", "port": 80}]),
        endpoint_slice([{"addresses": ["10.0.0.1", "10.0.0.999"]}], [{"name": "http", "port": 80}]),
    ])
    assert [str(e) for e in state.errors] == [
        'EndpointSlice shop/api-abc12: endpoints[0].addresses[1]: "10.0.0.999" is not an IP address'
    ]
    assert [e.address for e in state.endpoints] == ["10.0.0.1"]
