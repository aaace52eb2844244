"""`meshctl authz check` decides as the real Envoy does, on a seeded corpus of generated calls.

One local mesh runs three callers (in three namespaces, with different service accounts) and
six callees. Each callee gets its own random policy set: ALLOW, DENY and AUDIT policies,
dry-run policies, principals and namespaces with their `not` forms, methods, exact, prefix and
suffix paths, hosts, ports, IP blocks and `when` conditions. One callee is STRICT, one DISABLE,
and one also has a policy that fails closed. Every call runs through the caller's sidecar (or
straight to the callee in plaintext for a caller without one), and Envoy's response (200, or 403
with `RBAC: access denied`, or a reset) is compared with the decision `meshctl authz check`
prints for the same call.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.local.client import http_call, tcp_call, tcp_call_via_connect
from controlplane.translate.resources import OUTBOUND_CAPTURE_PORT
from meshctl.cli import main
from tests.integration.local_mesh import access_log_entries, running_mesh

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SEED = 1204
HTTP_PORT = 8080
TCP_PORT = 9000
OUTSIDE = "outside"
CALLERS = {"alpha/client": "client", "beta/reader": "reader", "gamma/ops": "ops"}
# name -> (namespace, has a TCP port, mTLS mode or None for the mesh default PERMISSIVE)
CALLEES = {
    "svc-1": ("alpha", True, None),
    "svc-2": ("alpha", False, None),
    "svc-3": ("beta", True, "STRICT"),
    "svc-4": ("beta", False, "DISABLE"),
    "svc-5": ("gamma", False, None),
    "svc-6": ("gamma", False, None),
}
FAIL_CLOSED_CALLEE = "svc-6"
HTTP_CALLS_PER_CALLEE = {"svc-6": 10}
DEFAULT_HTTP_CALLS = 40
TCP_CALLS_PER_CALLEE = 6

PRINCIPALS = ["cluster.local/ns/alpha/sa/client", "cluster.local/ns/beta/sa/reader", "cluster.local/ns/gamma/*", "*/sa/ops", "*"]
NAMESPACES = ["alpha", "beta", "gam*", "*ta"]
IP_BLOCKS = ["127.0.0.0/8", "10.0.0.0/8"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
PATH_PATTERNS = ["/admin", "/admin/*", "/api/*", "*.json", "/public/*", "/health", "*"]
TEAMS = ["red", "blue", "g*", "*e"]
REQUEST_PATHS = [
    "/admin",
    "/admin/users",
    "/Admin",
    "/api/v1/items",
    "/api/v1/items?id=7",
    "/api/./v1/x",
    "/public/index.html",
    "/public/report.json",
    "/public/../admin",
    "//admin",
    "/api/v1/%2e%2e/%2e%2e/admin",
    "/public/a%2F..%2F..%2Fadmin",
    "/data.json",
    "/health",
]


# ----- policy generation ---------------------------------------------------------------------


def _some(rng: random.Random, pool: list[str], maximum: int = 2) -> list[str]:
    return rng.sample(pool, rng.randint(1, min(maximum, len(pool))))


def gen_source(rng: random.Random) -> dict[str, Any]:
    fields = {
        "principals": lambda: _some(rng, PRINCIPALS),
        "notPrincipals": lambda: _some(rng, PRINCIPALS[:-1]),
        "namespaces": lambda: _some(rng, NAMESPACES),
        "notNamespaces": lambda: _some(rng, NAMESPACES[:2], 1),
        "ipBlocks": lambda: _some(rng, IP_BLOCKS, 1),
        "notIpBlocks": lambda: _some(rng, IP_BLOCKS, 1),
    }
    chosen = rng.sample(sorted(fields), rng.choice([1, 1, 2]))
    return {name: fields[name]() for name in chosen}


def gen_operation(rng: random.Random, callee: str, namespace: str) -> dict[str, Any]:
    hosts = [f"{callee}.{namespace}:{HTTP_PORT}", f"*.svc.cluster.local:{HTTP_PORT}"]
    fields = {
        "methods": lambda: _some(rng, METHODS),
        "notMethods": lambda: _some(rng, METHODS, 1),
        "paths": lambda: _some(rng, PATH_PATTERNS),
        "notPaths": lambda: _some(rng, PATH_PATTERNS[:-1]),
        "ports": lambda: [str(rng.choice([HTTP_PORT, TCP_PORT]))],
        "notPorts": lambda: [str(TCP_PORT)],
        "hosts": lambda: _some(rng, hosts, 1),
        "notHosts": lambda: _some(rng, hosts, 1),
    }
    weights = {"methods": 3, "paths": 4, "notPaths": 2, "notMethods": 1, "ports": 1, "notPorts": 1, "hosts": 1, "notHosts": 1}
    names = sorted(fields)
    chosen = set(rng.choices(names, weights=[weights[n] for n in names], k=rng.choice([1, 1, 2])))
    return {name: fields[name]() for name in sorted(chosen)}


def gen_condition(rng: random.Random) -> dict[str, Any]:
    key, pool = rng.choice([
        ("request.headers[x-team]", TEAMS),
        ("request.headers[x-team]", TEAMS),
        ("source.namespace", NAMESPACES),
        ("source.principal", PRINCIPALS[:-1]),
        ("destination.port", [str(HTTP_PORT), str(TCP_PORT)]),
    ])
    field_name = "values" if rng.random() < 0.7 else "notValues"
    return {"key": key, field_name: _some(rng, pool)}


def gen_rule(rng: random.Random, action: str, callee: str, namespace: str) -> dict[str, Any]:
    """A rule; DENY rules always name an operation, so that they stay narrow enough to let calls through."""
    rule: dict[str, Any] = {}
    parts = rng.choices(["from", "to", "when"], weights=[4, 5, 1], k=rng.choice([1, 1, 2]))
    if action == "DENY" and "to" not in parts:
        parts.append("to")
    if "from" in parts:
        rule["from"] = [{"source": gen_source(rng)} for _ in range(rng.choice([1, 1, 2]))]
    if "to" in parts:
        rule["to"] = [{"operation": gen_operation(rng, callee, namespace)} for _ in range(rng.choice([1, 1, 2]))]
    if "when" in parts:
        rule["when"] = [gen_condition(rng)]
    return rule


def gen_policy(rng: random.Random, callee: str, namespace: str, index: int) -> dict[str, Any]:
    action = rng.choices(["ALLOW", "DENY", "AUDIT"], weights=[5, 3, 2])[0]
    metadata: dict[str, Any] = {"name": f"{callee}-{action.lower()}-{index}", "namespace": namespace}
    if rng.random() < 0.15:
        metadata["annotations"] = {"idmesh.io/dry-run": "true"}
    # ALLOW with no rules denies every request, so it is rare, or few calls would be allowed.
    rule_count = rng.choices([0, 1, 2, 3], weights=[1 if action == "ALLOW" else 2, 10, 6, 3])[0]
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": callee}}, "action": action}
    if rule_count:
        spec["rules"] = [gen_rule(rng, action, callee, namespace) for _ in range(rule_count)]
    return {"apiVersion": "security.idmesh.io/v1", "kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec}


def fail_closed_policy(callee: str, namespace: str) -> dict[str, Any]:
    # Request principals come from JWTs, which idmesh does not validate, so the policy fails closed.
    return {
        "apiVersion": "security.idmesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": f"{callee}-jwt", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": callee}}, "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
    }


# ----- mesh folder ---------------------------------------------------------------------------


def _deployment(name: str, namespace: str, account: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": f"example/{name}"}
    if ports:
        container["ports"] = ports
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"idmesh.io/inject": "true"}},
                "spec": {"serviceAccountName": account, "containers": [container]},
            },
        },
    }


def mesh_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "idmesh-system"}},
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "idmesh", "namespace": "idmesh-system"},
            "data": {"mesh": "trustDomain: cluster.local\ndefaultMtlsMode: PERMISSIVE\n"},
        },
    ]
    objects += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in ("alpha", "beta", "gamma")]
    for key, account in CALLERS.items():
        namespace, name = key.split("/")
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}})
        objects.append(_deployment(name, namespace, account, []))
    for name, (namespace, has_tcp, mode) in CALLEES.items():
        ports = [{"containerPort": HTTP_PORT, "name": "http"}]
        if has_tcp:
            ports.append({"containerPort": TCP_PORT, "name": "tcp-data"})
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
        objects.append(_deployment(name, namespace, name, ports))
        objects.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"]} for p in ports]},
        })
        if mode is not None:
            objects.append({
                "apiVersion": "security.idmesh.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": f"{name}-{mode.lower()}", "namespace": namespace},
                "spec": {"selector": {"matchLabels": {"app": name}}, "mtls": {"mode": mode}},
            })
    return objects


def generate_policies(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    policies: dict[str, list[dict[str, Any]]] = {}
    for name, (namespace, _tcp, _mode) in CALLEES.items():
        policies[name] = [gen_policy(rng, name, namespace, i) for i in range(rng.randint(1, 4))]
        if name == FAIL_CLOSED_CALLEE:
            policies[name].append(fail_closed_policy(name, namespace))
    return policies


def write_folder(folder: Path, policies: dict[str, list[dict[str, Any]]]) -> None:
    folder.mkdir(parents=True)
    (folder / "mesh.yaml").write_text(yaml.safe_dump_all(mesh_objects(), sort_keys=False))
    every = [policy for name in CALLEES for policy in policies[name]]
    (folder / "policies.yaml").write_text(yaml.safe_dump_all(every, sort_keys=False))


# ----- calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    callee: str
    caller: str
    protocol: str = "http"
    method: str = "GET"
    path: str = "/"
    host: str = ""
    team: str | None = None

    def describe(self) -> str:
        if self.protocol == "tcp":
            return f"{self.caller} -> {self.callee}:{TCP_PORT} (tcp)"
        team = f" x-team={self.team}" if self.team is not None else ""
        return f"{self.caller} -> {self.callee}: {self.method} {self.path} host={self.host}{team}"


def generate_cases(rng: random.Random) -> list[Case]:
    cases = []
    callers = [*CALLERS, OUTSIDE]
    for name, (namespace, has_tcp, _mode) in CALLEES.items():
        for _ in range(HTTP_CALLS_PER_CALLEE.get(name, DEFAULT_HTTP_CALLS)):
            host = rng.choice([f"{name}.{namespace}:{HTTP_PORT}", f"{name}.{namespace}.svc.cluster.local:{HTTP_PORT}"])
            cases.append(Case(
                callee=name,
                caller=rng.choices(callers, weights=[3, 3, 3, 1])[0],
                method=rng.choice(METHODS),
                path=rng.choice(REQUEST_PATHS),
                host=host,
                team=rng.choice([None, "red", "blue", "green"]),
            ))
        if has_tcp:
            cases += [Case(callee=name, caller=rng.choice(callers), protocol="tcp") for _ in range(TCP_CALLS_PER_CALLEE)]
    return cases


async def envoy_decision(mesh, case: Case) -> str:
    """ALLOW or DENY from the real call, or a description of anything else that came back."""
    namespace = CALLEES[case.callee][0]
    target = mesh.plan.find(f"{namespace}/{case.callee}")
    headers = (("x-team", case.team),) if case.team is not None else ()
    if case.protocol == "tcp":
        if case.caller == OUTSIDE:
            outcome = await tcp_call(target.address, TCP_PORT, timeout=5)
        else:
            caller = mesh.plan.find(case.caller)
            authority = f"{case.callee}.{namespace}:{TCP_PORT}"
            outcome = await tcp_call_via_connect(caller.address, OUTBOUND_CAPTURE_PORT, authority=authority, timeout=5)
        return "ALLOW" if outcome.result == "ok" else "DENY"
    if case.caller == OUTSIDE:
        address, port = target.address, HTTP_PORT
    else:
        address, port = mesh.plan.find(case.caller).address, OUTBOUND_CAPTURE_PORT
    outcome = await http_call(address, port, method=case.method, path=case.path, authority=case.host, headers=headers, timeout=5)
    if outcome.result == 200:
        return "ALLOW"
    if outcome.result == "reset" or (outcome.result == 403 and "RBAC: access denied" in outcome.detail):
        return "DENY"
    return f"HTTP {outcome.result}: {outcome.detail[:100]}"


def meshctl_argv(case: Case, admin_url: str, outside_ip: str) -> list[str]:
    namespace = CALLEES[case.callee][0]
    argv = ["authz", "check", "--to", f"{namespace}/{case.callee}", "--admin-url", admin_url, "-o", "json"]
    argv += ["--from", "none", "--source-ip", outside_ip] if case.caller == OUTSIDE else ["--from", case.caller]
    if case.protocol == "tcp":
        return argv + ["--port", str(TCP_PORT)]
    argv += ["--port", str(HTTP_PORT), "--method", case.method, "--path", case.path, "--header", f"host={case.host}"]
    if case.team is not None:
        argv += ["--header", f"x-team={case.team}"]
    return argv


def meshctl_decision(case: Case, admin_url: str, outside_ip: str) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = main(meshctl_argv(case, admin_url, outside_ip), stdout=out, stderr=err)
    if code != 0:
        return {"decision": f"exit {code}: {err.getvalue().strip()}"}
    return json.loads(out.getvalue())[0]


async def outside_source_ip(mesh) -> str:
    """Return the source address the callee's Envoy observes for a direct call from this test process."""
    target = mesh.plan.find("alpha/svc-1")
    await http_call(target.address, HTTP_PORT, method="GET", path="/source-probe", authority="probe", timeout=5)
    for _ in range(50):
        entries = [e for e in access_log_entries(mesh, "alpha/svc-1") if e.get("path") == "/source-probe"]
        if entries:
            return entries[0]["downstream_remote_address"].rsplit(":", 1)[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the probe call never reached the access log of alpha/svc-1")


def disagreement(case: Case, envoy: str, record: dict[str, Any], policies: dict[str, list[dict[str, Any]]]) -> str:
    return (
        f"\n--- {case.describe()}\nEnvoy: {envoy}\nmeshctl: {record.get('decision')} ({record.get('reason')}), "
        f"deciding: {json.dumps(record.get('deciding'))}\npolicies:\n{yaml.safe_dump_all(policies[case.callee], sort_keys=False)}"
    )


async def test_meshctl_agrees_with_envoy_on_generated_corpus(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    policies = generate_policies(rng)
    cases = generate_cases(rng)
    folder = tmp_path / "mesh"
    write_folder(folder, policies)

    async with running_mesh(folder, tmp_path / "run") as mesh:
        outside_ip = await outside_source_ip(mesh)
        results = []
        for case in cases:
            envoy = await envoy_decision(mesh, case)
            record = await asyncio.to_thread(meshctl_decision, case, mesh.admin_url, outside_ip)
            results.append((case, envoy, record))

    agreed = sum(envoy == record["decision"] for _case, envoy, record in results)
    allowed = sum(envoy == "ALLOW" for _case, envoy, _record in results)
    tcp = sum(case.protocol == "tcp" for case, _envoy, _record in results)
    print(f"differential corpus: {len(results)} calls ({tcp} TCP, {allowed} allowed by Envoy), "
          f"meshctl agreed on {agreed}")
    problems = [disagreement(c, e, r, policies) for c, e, r in results if e != r["decision"]]

    assert len(results) >= 200
    assert problems == []
    # A corpus where every call gets the same decision would prove little.
    assert 0.15 < allowed / len(results) < 0.85
    fail_closed = [r for c, _e, r in results if c.callee == FAIL_CLOSED_CALLEE and c.protocol == "http"]
    assert fail_closed and all(r["decision"] == "DENY" for r in fail_closed)
