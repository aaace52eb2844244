"""Scenario files: parsing, validation messages, and judging outcomes."""

from __future__ import annotations

import pytest

from controlplane.errors import ValidationError
from controlplane.local.scenario import Outcome, Target, judge, parse_scenario, parse_target

FULL = """
calls:
  - name: worker settles
    from: payments/worker
    to: ledger.payments.svc.cluster.local:8080
    method: POST
    path: //v1/../settlements
    headers: {x-id: "7"}
    expect: [200, 201]
    expectPrincipal: spiffe://cluster.local/ns/payments/sa/worker
  - from: outside
    to: ledger-tcp.payments:9000
    protocol: tcp
    expect: reset
"""


def test_full_call_keeps_every_field() -> None:
    first, second = parse_scenario(FULL)
    assert first.name == "worker settles"
    assert first.source == "payments/worker"
    assert first.target == Target(host="ledger.payments.svc.cluster.local", service="ledger", namespace="payments", port=8080)
    assert first.method == "POST"
    assert first.path == "//v1/../settlements"
    assert first.headers == (("x-id", "7"),)
    assert first.expect == (200, 201)
    assert first.expect_principal == "spiffe://cluster.local/ns/payments/sa/worker"
    assert second.name == "call 1"
    assert second.protocol == "tcp"
    assert second.expect == ("reset",)


@pytest.mark.parametrize(
    ("text", "service", "namespace", "port"),
    [("ledger:8080", "ledger", None, 8080), ("ledger.payments:80", "ledger", "payments", 80)],
)
def test_short_targets_parse(text: str, service: str, namespace: str | None, port: int) -> None:
    target = parse_target(text, path="to", source="s")
    assert (target.service, target.namespace, target.port) == (service, namespace, port)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("- {from: a, to: ledger}", "calls[0].to: 'ledger' is not a service host and port"),
        ("- {from: a, to: 'ledger:99999'}", "calls[0].to: port '99999' is not a number from 1 to 65535"),
        ("- {from: a, to: 'a.b.c:80'}", "calls[0].to: host 'a.b.c' is not <service>"),
        ("- {to: 'a:80'}", "calls[0]: missing field 'from'"),
        ("- {from: a, to: 'a:80', expect: maybe}", "calls[0].expect: 'maybe' is not an outcome"),
        ("- {from: a, to: 'a:80', expect: 700}", "calls[0].expect: HTTP status 700 is outside 100-599"),
        ("- {from: a, to: 'a:80', protocol: udp}", "calls[0].protocol: protocol 'udp' is not http or tcp"),
        ("- {from: a, to: 'a:80', verb: GET}", "calls[0]: unknown field 'verb'"),
        ("- {from: a/b/c, to: 'a:80'}", "calls[0].from: from 'a/b/c' is not a workload name"),
        ("- {name: x, from: a, to: 'a:80'}\n- {name: x, from: a, to: 'a:80'}", "calls: call name 'x' is used more than once"),
        ("calls: 3", "calls: expected a list of calls"),
    ],
)
def test_invalid_scenarios_name_the_field(document: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_scenario(document, source="demo/scenario.yaml")
    assert str(caught.value).startswith("Scenario demo/scenario.yaml: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("expect", "protocol", "result", "passed"),
    [
        ("ok", "http", 204, True),
        ("ok", "http", 403, False),
        ("ok", "tcp", "ok", True),
        ("denied", "http", 403, True),
        ("denied", "http", "reset", False),
        ("denied", "tcp", "reset", True),
        ("reset", "http", "reset", True),
        ("404", "http", 404, True),
    ],
)
def test_judge_matches_outcomes(expect: str, protocol: str, result: int | str, passed: bool) -> None:
    (call,) = parse_scenario(f"- {{from: a, to: 'b:80', protocol: {protocol}, expect: {expect}}}")
    assert judge(call, Outcome(result=result)).passed is passed


def test_judge_checks_principal() -> None:
    (call,) = parse_scenario("- {from: a, to: 'b:80', expectPrincipal: 'spiffe://td/ns/a/sa/x'}")
    verdict = judge(call, Outcome(result=200, principal="spiffe://td/ns/a/sa/y"))
    assert not verdict.passed
    assert verdict.reasons == ("expected principal spiffe://td/ns/a/sa/x, callee saw spiffe://td/ns/a/sa/y",)


def test_error_names_the_call_by_name() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_scenario("- {name: worker settles, from: a, to: 'a:80', expect: okk}", source="s.yaml")
    assert str(caught.value) == (
        "Scenario s.yaml: calls[0].expect: 'okk' is not an outcome; use ok, reset, denied or an HTTP status code"
        ' (call "worker settles")'
    )
