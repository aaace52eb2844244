"""`meshctl principals`: every SPIFFE ID in the mesh, who runs as it and which policies name it.

Identities come from ServiceAccounts and workloads (`/debug/principals`). For each identity the
command lists its workloads, its connected proxies with the certificate serial and expiry their
agents report, and every AuthorizationPolicy value that matches it: `principals` and
`notPrincipals` (also through trust domain aliases and `*` patterns), `namespaces` and
`notNamespaces`, and `source.principal` / `source.namespace` conditions.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from meshctl.errors import EXIT_OK
from meshctl.client import AdminApiError, add_connection_arguments, admin_client, gather
from meshctl.output import Column, add_output_argument, render
from meshctl.status import time_left

COLUMNS = (
    Column("SPIFFE ID", "spiffe_id"),
    Column("WORKLOADS", "workloads"),
    Column("PROXIES", "proxy_count"),
    Column("POLICIES", "policy_names"),
    Column("CERT EXPIRES IN", "expires_in"),
    Column("SERVICE ACCOUNT", "service_account_state", wide=True),
    Column("CERT SERIALS", "serials", wide=True),
    Column("POLICY FIELDS", "policy_fields", wide=True),
)

EPILOG = """examples:
  meshctl principals                    every identity in the mesh
  meshctl principals -n payments -o wide    with certificate serials and the policy fields that match
  meshctl principals -o json            everything, for scripts
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "principals",
        help="list SPIFFE IDs, their workloads, certificates and the policies that name them",
        description="List every SPIFFE ID in the mesh (from ServiceAccounts and workloads), "
        "the workloads and connected proxies using it, the certificate serial and expiry each "
        "proxy's agent reports, and the AuthorizationPolicy values that match it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", "--namespace", default=None, help="only identities in this namespace (default: all)")
    add_output_argument(parser)
    add_connection_arguments(parser)
    parser.set_defaults(run=run)


def certificate_of(agent: dict[str, Any] | AdminApiError) -> dict[str, Any]:
    if isinstance(agent, AdminApiError):
        return {"source": None, "error": str(agent)}
    svid = agent.get("svid") or {}
    if not svid.get("serial"):
        return {"source": "agent", "error": "the agent has no certificate"}
    return {"source": "agent", "serial": svid["serial"], "not_after": svid.get("not_after")}


def principal_record(principal: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """Add the table cells to one `/debug/principals` entry, whose proxies carry certificates."""
    policies = principal.get("policies", [])
    expiries = [
        datetime.fromisoformat(p["certificate"]["not_after"])
        for p in principal.get("proxies", [])
        if p.get("certificate", {}).get("not_after")
    ]
    return {
        **principal,
        "proxy_count": len(principal.get("proxies", [])),
        "policy_names": sorted({f"{m['policy']}({m['action']})" for m in policies}),
        "policy_fields": [f"{m['policy']} rule[{m['rule']}] {m['field']}={m['value']}" for m in policies],
        "serials": [p["certificate"]["serial"] for p in principal.get("proxies", []) if p["certificate"].get("serial")],
        "expires_in": time_left(min(expiries), now) if expiries else "",
        "service_account_state": "declared" if principal.get("service_account_declared") else "not declared",
    }


def run(args: argparse.Namespace) -> int:
    client = admin_client(args)
    document = client.get_json("/debug/principals")
    principals = [
        p for p in document.get("principals", []) if args.namespace is None or p.get("namespace") == args.namespace
    ]
    proxies = [proxy for principal in principals for proxy in principal.get("proxies", [])]
    for proxy, agent in zip(proxies, gather(client.agent_status, proxies)):
        proxy["certificate"] = certificate_of(agent)
    now = datetime.now(timezone.utc)
    records = [principal_record(p, now=now) for p in principals]
    if args.output in ("json", "yaml"):
        records = principals
    where = f" in namespace {args.namespace}" if args.namespace else ""
    args.stdout.write(render(records, COLUMNS, args.output, empty=f"No principals found{where}."))
    return EXIT_OK
