"""SPIFFE ID parsing follows the SPIFFE ID specification; each invalid case names its rule."""

from __future__ import annotations

import pytest

from controlplane.errors import SpiffeIdError
from controlplane.identity.spiffe_id import SpiffeId

VALID = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/ns/payments/sa/ledger", "example.org", "/ns/payments/sa/ledger"),
    ("spiffe://cluster.local/ns/a-b/sa/c_d.e", "cluster.local", "/ns/a-b/sa/c_d.e"),
    ("spiffe://td-1_x.y/Upper/Case.Path", "td-1_x.y", "/Upper/Case.Path"),
    ("spiffe://example.org/" + "a" * 2000, "example.org", "/" + "a" * 2000),
]

INVALID = [
    # (input, rule it breaks)
    ("spiffe://example.org/ns/payments/sa/ledger/", "trailing-slash"),
    ("spiffe://example.org//ns/payments", "empty-segment"),
    ("spiffe://example.org/ns/pay%6Dents", "percent-encoding"),
    ("spiffe://example.org/ns/./payments", "dot-segment"),
    ("spiffe://example.org/ns/../payments", "dot-segment"),
    ("spiffe://example.org:8443/x", "port"),
    ("spiffe://u@example.org/x", "userinfo"),
    ("spiffe://example.org/" + "a" * 2040, "too-long"),
    ("spiffe://example.org/x?y=1", "query"),
    ("spiffe://example.org/x#frag", "fragment"),
    ("spiffe://Example.org/x", "trust-domain-chars"),
    ("spiffe:///x", "trust-domain-empty"),
    ("spiffe://", "trust-domain-empty"),
    ("SPIFFE://example.org/x", "scheme"),
    ("https://example.org/x", "scheme"),
    ("example.org/x", "scheme"),
    ("", "empty"),
    ("spiffe://example.org/ns/pay ments", "path-chars"),
    ("spiffe://exa%41mple.org/x", "percent-encoding"),
    ("spiffe://example.org/", "trailing-slash"),
]


@pytest.mark.parametrize(("value", "trust_domain", "path"), VALID)
def test_valid_id_parses_and_formats_back(value: str, trust_domain: str, path: str) -> None:
    parsed = SpiffeId.parse(value)
    assert parsed.trust_domain == trust_domain
    assert parsed.path == path
    assert str(parsed) == value


@pytest.mark.parametrize(("value", "rule"), INVALID)
def test_invalid_id_is_rejected_with_rule(value: str, rule: str) -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse(value)
    assert caught.value.rule == rule
    assert "invalid SPIFFE ID" in str(caught.value)


def test_id_of_exactly_2048_bytes_is_accepted() -> None:
    prefix = "spiffe://example.org/"
    value = prefix + "a" * (2048 - len(prefix))
    assert len(value.encode()) == 2048
    assert str(SpiffeId.parse(value)) == value


def test_workload_form_exposes_namespace_and_service_account() -> None:
    sid = SpiffeId.for_workload("example.org", "payments", "worker")
    assert str(sid) == "spiffe://example.org/ns/payments/sa/worker"
    assert sid.namespace == "payments"
    assert sid.service_account == "worker"


def test_non_workload_path_has_no_namespace() -> None:
    sid = SpiffeId.parse("spiffe://example.org/controlplane")
    assert sid.namespace is None
    assert sid.service_account is None


def test_ids_compare_by_value() -> None:
    assert SpiffeId.parse("spiffe://a/x") == SpiffeId.parse("spiffe://a/x")
    assert SpiffeId.parse("spiffe://a/x") != SpiffeId.parse("spiffe://a/y")
    assert len({SpiffeId.parse("spiffe://a/x"), SpiffeId.parse("spiffe://a/x")}) == 1


def test_workload_helper_rejects_invalid_namespace() -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.for_workload("example.org", "pay/ments", "worker")
    assert caught.value.rule == "workload-segment"
