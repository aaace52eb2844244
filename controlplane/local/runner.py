"""Run scenario calls against a local mesh the way its workloads would make them.

A workload with a sidecar sends HTTP to its own Envoy's outbound listener (`address:15001`) with
the target in the authority, and TCP as an HTTP CONNECT tunnel through that listener. A workload
without a sidecar, and the caller `outside`, connect straight to an address behind the service:
the selected workload's address and target port, in plain text.
"""

from __future__ import annotations

from typing import Sequence

from controlplane.errors import ConfigError
from controlplane.local import client
from controlplane.local.plan import LocalPlan, LocalWorkload
from controlplane.local.scenario import OUTSIDE, Call, Outcome, Verdict, judge
from controlplane.model.types import MeshState, Service
from controlplane.translate.resources import OUTBOUND_CAPTURE_PORT


def _service_for(call: Call, state: MeshState, caller_namespace: str | None) -> Service:
    namespace = call.target.namespace or caller_namespace
    candidates = [
        s for s in state.services
        if s.name == call.target.service and (namespace is None or s.namespace == namespace)
    ]
    if len(candidates) != 1:
        where = f"namespace {namespace!r}" if namespace else "any namespace (write service.namespace to choose)"
        found = "no service" if not candidates else "several services"
        raise ConfigError(f"call {call.name!r}: {found} named {call.target.service!r} in {where}", call=call.name)
    return candidates[0]


def _direct_address(call: Call, state: MeshState, plan: LocalPlan, caller_namespace: str | None) -> tuple[str, int]:
    """Return the address and port of the first workload behind the call's service port."""
    service = _service_for(call, state, caller_namespace)
    port = next((p for p in service.ports if p.port == call.target.port), None)
    if port is None:
        offered = ", ".join(str(p.port) for p in service.ports)
        raise ConfigError(f"call {call.name!r}: service {service.namespace}/{service.name} has no port {call.target.port} (ports: {offered})", call=call.name)
    for workload in state.workloads:
        if workload.namespace != service.namespace or not service.selector:
            continue
        if any(workload.labels.get(k) != v for k, v in service.selector.items()):
            continue
        target = port.target_port
        if isinstance(target, str):
            target = next((p.port for p in workload.ports if p.name == target), None)
            if target is None:
                continue
        return plan.find(f"{workload.namespace}/{workload.name}").address, target
    raise ConfigError(f"call {call.name!r}: no workload behind service {service.namespace}/{service.name}", call=call.name)


async def run_call(call: Call, *, state: MeshState, plan: LocalPlan, timeout: float = 10.0) -> Outcome:
    caller: LocalWorkload | None = None if call.source == OUTSIDE else plan.find(call.source)
    authority = f"{call.target.host}:{call.target.port}"
    if caller is not None and caller.sidecar:
        if call.protocol == "tcp":
            return await client.tcp_call_via_connect(caller.address, OUTBOUND_CAPTURE_PORT, authority=authority, timeout=timeout)
        return await client.http_call(
            caller.address, OUTBOUND_CAPTURE_PORT, method=call.method, path=call.path, authority=authority,
            headers=call.headers, body=call.body, timeout=timeout,
        )
    address, port = _direct_address(call, state, plan, caller.namespace if caller else None)
    if call.protocol == "tcp":
        return await client.tcp_call(address, port, timeout=timeout)
    return await client.http_call(
        address, port, method=call.method, path=call.path, authority=authority,
        headers=call.headers, body=call.body, timeout=timeout,
    )


async def run_calls(calls: Sequence[Call], *, state: MeshState, plan: LocalPlan, timeout: float = 10.0) -> list[Verdict]:
    """Run calls one after another, so a table reads in the scenario's order."""
    verdicts = []
    for call in calls:
        try:
            outcome = await run_call(call, state=state, plan=plan, timeout=timeout)
        except ConfigError as exc:
            # A call that cannot be routed fails on its own; the other calls still run.
            outcome = Outcome(result="error", detail=str(exc))
            verdicts.append(Verdict(call=call, outcome=outcome, passed=False, reasons=(str(exc),)))
            continue
        verdicts.append(judge(call, outcome))
    return verdicts
