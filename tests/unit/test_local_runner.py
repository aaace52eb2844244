"""A scenario call that cannot be routed fails on its own, as an error, not a reset."""

from __future__ import annotations

from controlplane.local.plan import plan_local_mesh
from controlplane.local.runner import run_calls
from controlplane.local.scenario import parse_scenario
from controlplane.model.types import MeshState, Workload


async def test_unknown_caller_is_an_error_and_others_still_run() -> None:
    state = MeshState(workloads=(Workload(namespace="a", name="x", injected=False),))
    plan = plan_local_mesh(state, subnet="127.20.0.0/16")
    calls = parse_scenario("- {name: ghost, from: a/ghost, to: 'svc:80'}\n- {name: no service, from: outside, to: 'svc.a:80'}")

    first, second = await run_calls(calls, state=state, plan=plan, timeout=1)

    assert first.outcome.result == "error"
    assert first.reasons == ("workload 'a/ghost' not found; known workloads: a/x",)
    assert second.outcome.result == "error"
    assert "no service named 'svc' in namespace 'a'" in second.reasons[0]
