"""Envoy RBAC matcher semantics in the evaluator, on hand-written RBAC configuration."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from google.protobuf import text_format

from controlplane.authz import InvalidRbacError, Request, UnsupportedRbacError, evaluate


def allow_if(permission: str = "any: true", principal: str = "any: true") -> http_rbac_pb2.RBAC:
    """An ALLOW filter with one policy `p` made of one permission and one principal."""
    text = f"""
    rules {{
      policies {{
        key: "p"
        value {{
          permissions {{ {permission} }}
          principals {{ {principal} }}
        }}
      }}
    }}
    """
    return text_format.Parse(text, http_rbac_pb2.RBAC())


def allowed(config: http_rbac_pb2.RBAC, request: Request, kind: str = "http") -> bool:
    return evaluate([config], request, kind=kind).allowed


def request(**kwargs) -> Request:
    values = {"source_ip": "10.0.0.5", "destination_port": 8080}
    values.update(kwargs)
    return Request(**values)


@pytest.mark.parametrize(
    ("permission", "expected"),
    [
        ("and_rules { rules { any: true } rules { destination_port: 8080 } }", True),
        ("and_rules { rules { any: true } rules { destination_port: 9090 } }", False),
        ("or_rules { rules { destination_port: 1 } rules { destination_port: 8080 } }", True),
        ("or_rules { rules { destination_port: 1 } rules { destination_port: 2 } }", False),
        ("not_rule { destination_port: 8080 }", False),
        ("not_rule { not_rule { destination_port: 8080 } }", True),
        ("destination_port_range { start: 8000 end: 8080 }", False),
        ("destination_port_range { start: 8080 end: 8081 }", True),
        ("destination_ip { address_prefix: '127.0.0.0' prefix_len { value: 8 } }", True),
        ("destination_ip { address_prefix: '10.0.0.0' prefix_len { value: 8 } }", False),
        # No prefix_len means /0, which contains every address of the same IP version.
        ("destination_ip { address_prefix: '10.0.0.0' }", True),
        ("destination_ip { address_prefix: '::' }", False),
    ],
)
def test_permission_combinators_and_ports(permission, expected):
    assert allowed(allow_if(permission=permission), request()) is expected


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("and_ids { ids { any: true } ids { direct_remote_ip { address_prefix: '10.0.0.0' prefix_len { value: 24 } } } }", True),
        ("or_ids { ids { not_id { any: true } } ids { remote_ip { address_prefix: '10.0.0.5' prefix_len { value: 32 } } } }", True),
        ("not_id { source_ip { address_prefix: '10.0.0.5' prefix_len { value: 32 } } }", False),
        ("direct_remote_ip { address_prefix: '10.0.0.4' prefix_len { value: 31 } }", True),
        ("direct_remote_ip { address_prefix: '10.0.0.6' prefix_len { value: 31 } }", False),
    ],
)
def test_principal_combinators_and_addresses(principal, expected):
    assert allowed(allow_if(principal=principal), request()) is expected


def test_remote_ip_uses_forwarded_address_and_direct_remote_ip_does_not():
    forwarded = request(remote_ip="203.0.113.1")
    remote = allow_if(principal="remote_ip { address_prefix: '203.0.113.0' prefix_len { value: 24 } }")
    direct = allow_if(principal="direct_remote_ip { address_prefix: '203.0.113.0' prefix_len { value: 24 } }")
    assert allowed(remote, forwarded)
    assert not allowed(direct, forwarded)


def test_ipv4_range_never_contains_an_ipv6_address():
    config = allow_if(principal="direct_remote_ip { address_prefix: '0.0.0.0' prefix_len { value: 0 } }")
    assert not allowed(config, request(source_ip="::ffff:10.0.0.5"))
    assert allowed(config, request(source_ip="10.0.0.5"))


PEER = "spiffe://example.org/ns/payments/sa/api"


@pytest.mark.parametrize(
    ("principal", "req", "expected"),
    [
        ("authenticated { principal_name { exact: '" + PEER + "' } }", request(principal=PEER), True),
        ("authenticated { principal_name { exact: '" + PEER + "' } }", request(), False),
        ("authenticated { }", request(principal=PEER), True),
        ("authenticated { }", request(), False),
        # TLS without a client certificate still counts as authenticated when no name is required.
        ("authenticated { }", request(tls=True), True),
        ("authenticated { principal_name { safe_regex { regex: '.+' } } }", request(tls=True), False),
        ("authenticated { principal_name { safe_regex { regex: '.*/ns/payments/.*' } } }", request(principal=PEER), True),
        ("authenticated { principal_name { prefix: 'SPIFFE://' ignore_case: true } }", request(principal=PEER), True),
        ("authenticated { principal_name { prefix: 'SPIFFE://' } }", request(principal=PEER), False),
        # After the URI SANs Envoy tries the DNS SANs and then the subject.
        ("authenticated { principal_name { exact: 'ledger.internal' } }", request(principal=PEER, peer_dns_sans=("ledger.internal",)), True),
        ("authenticated { principal_name { contains: 'O=idmesh' } }", request(principal=PEER, peer_subject="CN=x,O=idmesh"), True),
    ],
)
def test_authenticated_principal_name(principal, req, expected):
    assert allowed(allow_if(principal=principal), req) is expected


@pytest.mark.parametrize(
    ("path_matcher", "path", "expected"),
    [
        ("exact: '/data'", "/data?x=1", True),
        ("exact: '/data'", "/data#frag", True),
        ("exact: '/data'", "/data/", False),
        ("prefix: '/api/'", "/api/v1", True),
        ("suffix: '.json'", "/a.json?q=.xml", True),
        ("safe_regex { regex: '/users/[0-9]+' }", "/users/42?x", True),
        ("safe_regex { regex: '/users/[0-9]+' }", "/users/42/x", False),
        ("exact: '/DATA' ignore_case: true", "/data", True),
    ],
)
def test_url_path_strips_query_and_fragment(path_matcher, path, expected):
    config = allow_if(permission=f"url_path {{ path {{ {path_matcher} }} }}")
    assert allowed(config, request(method="GET", path=path)) is expected


def test_url_path_without_path_header_never_matches():
    config = allow_if(permission="url_path { path { prefix: '/' } }")
    assert not allowed(config, request(method="CONNECT"))
    negated = allow_if(permission="not_rule { url_path { path { prefix: '/' } } }")
    assert allowed(negated, request(method="CONNECT"))


@pytest.mark.parametrize(
    ("header", "headers", "expected"),
    [
        ("name: 'x-a' string_match { exact: 'b' }", {"X-A": "b"}, True),
        ("name: 'X-A' string_match { exact: 'b' }", {"x-a": "b"}, True),
        ("name: 'x-a' string_match { exact: 'b' }", {}, False),
        # A missing header fails even an inverted value matcher.
        ("name: 'x-a' string_match { exact: 'b' } invert_match: true", {}, False),
        ("name: 'x-a' string_match { exact: 'b' } invert_match: true", {"x-a": "c"}, True),
        ("name: 'x-a' present_match: true", {}, False),
        ("name: 'x-a' present_match: true invert_match: true", {}, True),
        ("name: 'x-a' present_match: false", {}, True),
        ("name: 'x-a' present_match: false", {"x-a": ""}, False),
        ("name: 'x-a'", {"x-a": "anything"}, True),
        ("name: 'x-a' string_match { exact: '' } treat_missing_header_as_empty: true", {}, True),
        # Repeated headers are joined with ",".
        ("name: 'x-a' string_match { exact: 'b,c' }", {"x-a": ["b", "c"]}, True),
        ("name: 'x-a' string_match { exact: 'b' }", {"x-a": ["b", "c"]}, False),
        ("name: 'x-a' exact_match: ''", {"x-a": "whatever"}, True),
        ("name: 'x-a' prefix_match: 'ab'", {"x-a": "abc"}, True),
        ("name: 'x-a' suffix_match: 'bc'", {"x-a": "abc"}, True),
        ("name: 'x-a' contains_match: 'b'", {"x-a": "abc"}, True),
        ("name: 'x-a' safe_regex_match { regex: 'a.c' }", {"x-a": "abc"}, True),
        ("name: 'x-a' range_match { start: 1 end: 10 }", {"x-a": " 9 "}, True),
        ("name: 'x-a' range_match { start: 1 end: 10 }", {"x-a": "10"}, False),
        ("name: 'x-a' range_match { start: 1 end: 10 }", {"x-a": "5x"}, False),
        ("name: 'x-a' string_match { contains: 'B' ignore_case: true }", {"x-a": "abc"}, True),
    ],
)
def test_header_matcher(header, headers, expected):
    config = allow_if(principal=f"header {{ {header} }}")
    assert allowed(config, request(headers=headers)) is expected


def test_pseudo_headers_come_from_request_fields():
    config = allow_if(
        permission="and_rules { rules { header { name: ':method' string_match { exact: 'POST' } } } "
        "rules { header { name: ':authority' string_match { exact: 'ledger:8080' } } } }"
    )
    assert allowed(config, request(method="POST", path="/", host="ledger:8080"))
    assert not allowed(config, request(method="GET", path="/", host="ledger:8080"))


def test_network_filters_see_no_headers():
    config = allow_if(permission="header { name: 'x-a' present_match: true invert_match: true }")
    assert allowed(config, request(headers={"x-a": "1"}), kind="network") is True
    assert allowed(config, request(headers={"x-a": "1"}), kind="http") is False


@pytest.mark.parametrize(
    ("sni_matcher", "sni", "expected"),
    [
        ("exact: 'ledger.svc'", "ledger.svc", True),
        ("exact: ''", "", True),
        ("suffix: '.svc'", "", False),
    ],
)
def test_requested_server_name(sni_matcher, sni, expected):
    config = allow_if(permission=f"requested_server_name {{ {sni_matcher} }}")
    assert allowed(config, request(sni=sni)) is expected


@pytest.mark.parametrize(
    ("permission", "principal"),
    [
        ("metadata { filter: 'f' path { key: 'k' } value { string_match { exact: 'v' } } }", "any: true"),
        ("any: true", "filter_state { key: 'k' string_match { exact: 'v' } }"),
        ("any: true", "metadata { filter: 'f' path { key: 'k' } value { present_match: true } }"),
        ("requested_server_name { safe_regex { regex: '(?=a)a' } }", "any: true"),
        ("requested_server_name { safe_regex { regex: 'a\\\\Z' } }", "any: true"),
        ("requested_server_name { safe_regex { regex: '(a)\\\\1' } }", "any: true"),
        ("requested_server_name { safe_regex { regex: '\\\\s+' } }", "any: true"),
        ("requested_server_name { safe_regex { regex: '(?x)a' } }", "any: true"),
        ("header { name: 'x' string_match { safe_regex { regex: '[' } } }", "any: true"),
    ],
)
def test_unsupported_matchers_raise_before_evaluation(permission, principal):
    # The unsupported matcher sits behind a failing `and`, so Envoy would never reach it at run
    # time; the evaluator still refuses the whole configuration instead of guessing.
    config = allow_if(permission=f"and_rules {{ rules {{ destination_port: 1 }} rules {{ {permission} }} }}", principal=principal)
    with pytest.raises(UnsupportedRbacError):
        evaluate([config], request())


def test_cel_condition_is_unsupported():
    config = allow_if()
    config.rules.policies["p"].condition.const_expr.bool_value = True
    with pytest.raises(UnsupportedRbacError, match="CEL"):
        evaluate([config], request())


def test_case_insensitive_regex_on_non_ascii_input_is_unsupported():
    config = allow_if(permission="requested_server_name { safe_regex { regex: '(?i)ä' } }")
    with pytest.raises(UnsupportedRbacError, match="non-ASCII"):
        evaluate([config], request(sni="Ä"))


def test_invalid_cidr_is_reported():
    config = allow_if(principal="direct_remote_ip { address_prefix: '10.0.0.300' prefix_len { value: 8 } }")
    with pytest.raises(InvalidRbacError, match="10.0.0.300"):
        evaluate([config], request())
