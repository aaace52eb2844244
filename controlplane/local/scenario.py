"""Scenario files: the calls `meshctl up DIR --check` makes and the outcome each must have.

`scenario.yaml` contains `calls:`, a list of mappings (a bare list is accepted too):

    - name: worker may settle
      from: payments/worker        # workload "name" or "namespace/name", or "outside"
      to: ledger.payments:8080     # service host and port
      protocol: http               # http (default) or tcp
      method: POST
      path: /v1/settlements        # sent byte for byte
      headers: {x-request-id: "1"}
      expect: ok                   # ok, an HTTP status, reset, denied, or a list of these
      expectPrincipal: spiffe://cluster.local/ns/payments/sa/worker

Parsing is pure; running the calls lives in `controlplane.local.client` and `meshctl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from controlplane.errors import ValidationError

OUTSIDE = "outside"
SYMBOLIC_EXPECTATIONS = ("ok", "reset", "denied")
CALL_FIELDS = {"name", "from", "to", "protocol", "method", "path", "headers", "body", "expect", "expectPrincipal"}

Expectation = int | Literal["ok", "reset", "denied"]


@dataclass(frozen=True, slots=True)
class Target:
    """A `to` value split into service name, namespace (None when not written) and port."""

    host: str
    service: str
    namespace: str | None
    port: int


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    source: str  # "outside", "name" or "namespace/name"
    target: Target
    protocol: Literal["http", "tcp"] = "http"
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    expect: tuple[Expectation, ...] = ("ok",)
    expect_principal: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one call: an HTTP status, `ok` for a TCP echo round trip, or `reset`."""

    # `error` means the call could not be made at all, e.g. its caller is not in the mesh.
    result: int | Literal["ok", "reset", "error"]
    principal: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    call: Call
    outcome: Outcome
    passed: bool
    reasons: tuple[str, ...] = field(default=())


def _error(message: str, *, path: str, value: Any, source: str) -> ValidationError:
    return ValidationError(message, kind="Scenario", name=source, path=path, value=value)


def parse_target(text: Any, *, path: str, source: str, cluster_domain: str = "cluster.local") -> Target:
    if not isinstance(text, str) or ":" not in text:
        raise _error(f"{text!r} is not a service host and port such as ledger:8080", path=path, value=text, source=source)
    host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _error(f"port {port_text!r} is not a number from 1 to 65535", path=path, value=text, source=source)
    suffix = f".svc.{cluster_domain}"
    bare = host[: -len(suffix)] if host.endswith(suffix) else host
    parts = bare.split(".")
    if not host or len(parts) > 2 or not all(parts):
        raise _error(
            f"host {host!r} is not <service>, <service>.<namespace> or <service>.<namespace>{suffix}",
            path=path, value=text, source=source,
        )
    return Target(host=host, service=parts[0], namespace=parts[1] if len(parts) == 2 else None, port=int(port_text))


def _parse_expect(value: Any, *, path: str, source: str) -> tuple[Expectation, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _error("expect is an empty list; give at least one outcome", path=path, value=value, source=source)
    parsed: list[Expectation] = []
    for item in items:
        if isinstance(item, bool):
            raise _error(f"{item!r} is not an outcome", path=path, value=item, source=source)
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            code = int(item)
            if not 100 <= code <= 599:
                raise _error(f"HTTP status {code} is outside 100-599", path=path, value=item, source=source)
            parsed.append(code)
        elif item in SYMBOLIC_EXPECTATIONS:
            parsed.append(item)
        else:
            raise _error(
                f"{item!r} is not an outcome; use ok, reset, denied or an HTTP status code",
                path=path, value=item, source=source,
            )
    return tuple(parsed)


def parse_call(raw: Any, *, index: int, source: str) -> Call:
    base = f"calls[{index}]"
    if not isinstance(raw, dict):
        raise _error("a call must be a mapping", path=base, value=raw, source=source)
    try:
        return _parse_call_fields(raw, index=index, base=base, source=source)
    except ValidationError as exc:
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise
        # Name the call as well as its index: a reader finds a call in the file by its name.
        raise _error(f'{exc.detail} (call "{name}")', path=exc.path, value=exc.value, source=source) from exc


def _parse_call_fields(raw: dict, *, index: int, base: str, source: str) -> Call:
    unknown = sorted(set(raw) - CALL_FIELDS)
    if unknown:
        raise _error(f"unknown field {unknown[0]!r}; known fields: {', '.join(sorted(CALL_FIELDS))}", path=base, value=unknown[0], source=source)
    for required in ("from", "to"):
        if required not in raw:
            raise _error(f"missing field {required!r}", path=base, value=None, source=source)
    protocol = raw.get("protocol", "http")
    if protocol not in ("http", "tcp"):
        raise _error(f"protocol {protocol!r} is not http or tcp", path=f"{base}.protocol", value=protocol, source=source)
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        raise _error("headers must be a mapping of name to value", path=f"{base}.headers", value=headers, source=source)
    principal = raw.get("expectPrincipal")
    if principal is not None and not isinstance(principal, str):
        raise _error("expectPrincipal must be a SPIFFE ID string", path=f"{base}.expectPrincipal", value=principal, source=source)
    origin = raw["from"]
    if not isinstance(origin, str) or not origin or origin.count("/") > 1:
        raise _error(f"from {origin!r} is not a workload name, namespace/name or 'outside'", path=f"{base}.from", value=origin, source=source)
    return Call(
        name=str(raw.get("name") or f"call {index}"),
        source=origin,
        target=parse_target(raw["to"], path=f"{base}.to", source=source),
        protocol=protocol,
        method=str(raw.get("method", "GET")),
        path=str(raw.get("path", "/")),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        body=str(raw.get("body", "")),
        expect=_parse_expect(raw.get("expect", "ok"), path=f"{base}.expect", source=source),
        expect_principal=principal,
    )


def parse_scenario(text: str, *, source: str = "scenario.yaml") -> tuple[Call, ...]:
    """Parse a scenario document; raise `ValidationError` naming the call and field at fault."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _error(f"not valid YAML: {exc}", path="", value=None, source=source) from exc
    calls = document.get("calls") if isinstance(document, dict) else document
    if not isinstance(calls, list):
        raise _error("expected a list of calls, or a mapping with a 'calls' list", path="calls", value=None, source=source)
    parsed = tuple(parse_call(raw, index=i, source=source) for i, raw in enumerate(calls))
    names = [call.name for call in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _error(f"call name {duplicates[0]!r} is used more than once", path="calls", value=duplicates[0], source=source)
    return parsed


def _matches(expectation: Expectation, call: Call, result: int | str) -> bool:
    if expectation == "ok":
        return result == "ok" if call.protocol == "tcp" else isinstance(result, int) and 200 <= result < 300
    if expectation == "denied":
        return result == "reset" if call.protocol == "tcp" else result == 403
    return expectation == result


def judge(call: Call, outcome: Outcome) -> Verdict:
    """Compare an outcome with the call's expectations."""
    reasons = []
    if not any(_matches(expected, call, outcome.result) for expected in call.expect):
        wanted = " or ".join(str(e) for e in call.expect)
        reasons.append(f"expected {wanted}, got {outcome.result}")
    if call.expect_principal is not None and outcome.principal != call.expect_principal:
        reasons.append(f"expected principal {call.expect_principal}, callee saw {outcome.principal or 'none'}")
    return Verdict(call=call, outcome=outcome, passed=not reasons, reasons=tuple(reasons))
