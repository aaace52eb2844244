"""Validation: output Envoy would reject is left out or fails closed, naming the object at fault."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2

from controlplane.errors import TranslationError
from controlplane.model.types import Service, ServicePort
from controlplane.translate import translate, validate
from controlplane.translate.resources import CLUSTER, ROUTE
from controlplane.translate.validate import Built
from tests.golden.meshes import WEB, proxy_for, small_mesh


def virtual_host(name: str, *domains: str, cluster: str = "c") -> route_components_pb2.VirtualHost:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"), route=route_components_pb2.RouteAction(cluster=cluster)
    )
    return route_components_pb2.VirtualHost(name=name, domains=list(domains), routes=[route])


def test_duplicate_domain_leaves_out_later_virtual_host() -> None:
    config = route_pb2.RouteConfiguration(
        name="8080", virtual_hosts=[virtual_host("a:8080", "a", "shared"), virtual_host("b:8080", "b", "SHARED")]
    )
    problems = validate.drop_conflicting_domains(config, {"a:8080": "Service x/a", "b:8080": "Service x/b"})
    assert [host.name for host in config.virtual_hosts] == ["a:8080"]
    assert len(problems) == 1
    assert str(problems[0]) == (
        "Service x/b: domain 'SHARED' in route configuration '8080' is already claimed by Service x/a; "
        "virtual host 'b:8080' is left out"
    )


def test_services_sharing_cluster_ip_keep_first_by_cluster_name() -> None:
    state = small_mesh()
    clash = Service(
        "shop", "other", ports=(ServicePort(8080, 8080, name="http", mesh_protocol="http"),),
        selector={"app": "nothing"}, cluster_ip="10.96.0.21",
    )
    state = replace(state, services=(*state.services, clash))
    config = translate(state, proxy_for(WEB, ip="10.0.0.2", mode="kubernetes"))
    hosts = [host.name for host in config.resources[ROUTE]["8080"].virtual_hosts]
    assert "other.shop.svc.cluster.local:8080" not in hosts
    assert "legacy.shop.svc.cluster.local:8080" in hosts
    messages = [str(problem) for problem in config.problems]
    assert any(
        message.startswith("Service shop/other: domain '10.96.0.21") and "claimed by Service shop/legacy" in message
        for message in messages
    ), messages


def test_duplicate_service_is_left_out_and_named() -> None:
    state = small_mesh()
    state = replace(state, services=(*state.services, state.services[0]))
    config = translate(state, proxy_for(WEB, ip=WEB.ip))
    assert "outbound|8080||ledger.payments.svc.cluster.local" in config.resources[CLUSTER]
    assert all(isinstance(problem, TranslationError) for problem in config.problems)
    assert any(
        "Service payments/ledger: cluster 'outbound|8080||ledger.payments.svc.cluster.local' is also generated"
        in str(problem)
        for problem in config.problems
    )


def test_unique_by_name_keeps_first() -> None:
    message = route_pb2.RouteConfiguration(name="x")
    kept, problems = validate.unique_by_name(
        [Built("x", message, "Service a/one"), Built("x", message, "Service a/two")], kind="listener"
    )
    assert kept["x"].origin == "Service a/one"
    assert str(problems[0]) == "Service a/two: listener 'x' is also generated for Service a/one; the second one is left out"


def test_route_to_unknown_cluster_is_left_out() -> None:
    config = route_pb2.RouteConfiguration(
        name="15001", virtual_hosts=[virtual_host("a:80", "a", cluster="known"), virtual_host("b:80", "b", cluster="gone")]
    )
    problems = validate.drop_routes_to_unknown_clusters(config, {"known"}, {"b:80": "Service x/b"})
    assert [host.name for host in config.virtual_hosts] == ["a:80"]
    assert problems[0].object == "Service x/b"
    assert "names cluster 'gone', which is not generated" in str(problems[0])


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [("/api/[", "missing ]: ["), ("a{150}", "program size 154 exceeds Envoy's limit of 100")],
)
def test_re2_rejects_pattern_with_reason(pattern: str, reason: str) -> None:
    assert validate.regex_error(pattern) == reason


@pytest.mark.parametrize("pattern", ["/api/(?=x)", r"(a)\1", "/api/["])
def test_fallback_check_rejects_what_re2_lacks(monkeypatch, pattern: str) -> None:
    monkeypatch.setattr(validate, "_re2", None)
    assert validate.regex_error(pattern) is not None


def test_fallback_check_accepts_plain_regex(monkeypatch) -> None:
    monkeypatch.setattr(validate, "_re2", None)
    assert validate.regex_error(r".*/ns/payments/.*") is None


def test_regex_problems_report_field_path() -> None:
    config = route_pb2.RouteConfiguration(name="r", virtual_hosts=[virtual_host("a", "a")])
    config.virtual_hosts[0].routes[0].match.safe_regex.regex = "/api/["
    assert validate.regex_problems(config) == [("virtual_hosts[0].routes[0].match.safe_regex", "/api/[", "missing ]: [")]
