"""`meshctl describe WORKLOAD`: identity, mTLS per port, policies and services of one workload.

The text form reads like `kubectl describe`; `-o json` and `-o yaml` print the control plane's
`/debug/workloads/{namespace}/{name}` document unchanged.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from meshctl.certs import resolve_workload
from meshctl.errors import EXIT_OK
from meshctl.client import NotFoundError, add_connection_arguments, admin_client
from meshctl.output import add_output_argument

EPILOG = """examples:
  meshctl describe payments/ledger            who the ledger is, how it is reached and who may call it
  meshctl describe ledger -n payments -o wide also every outbound service it can reach
  meshctl describe ledger -n payments -o yaml the whole document
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="show a workload's identity, mTLS modes, authorization policies and services",
        description="Describe WORKLOAD (NAME with -n, or NAMESPACE/NAME): its SPIFFE ID, the mTLS "
        "mode of each port and the PeerAuthentication that decided it, the AuthorizationPolicies "
        "that apply with their rules, the Services that select it and the services it can reach.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", metavar="WORKLOAD", help="NAME (in -n, default: default) or NAMESPACE/NAME")
    parser.add_argument("-n", "--namespace", default=None, help="namespace of WORKLOAD")
    add_output_argument(parser)
    add_connection_arguments(parser)
    parser.set_defaults(run=run)


def _policy_lines(policy: dict[str, Any]) -> list[str]:
    flags = [policy["action"]]
    if policy.get("dry_run"):
        flags.append("dry-run")
    selector = policy.get("selector")
    selects = ",".join(f"{k}={v}" for k, v in selector.items()) if selector else "every workload"
    lines = [f"  {policy['namespace']}/{policy['name']}  {' '.join(flags)}  selector: {selects}"]
    if policy.get("error"):
        lines.append(f"    fails closed (denies every request): {policy['error']}")
    if not policy.get("rules"):
        lines.append("    no rules" + (": denies every request" if policy["action"] == "ALLOW" else ""))
    for index, rule in enumerate(policy.get("rules", [])):
        lines.append(f"    rule[{index}]: {json.dumps(rule, separators=(', ', ': '))}")
    return lines


def describe_text(document: dict[str, Any], *, wide: bool) -> str:
    """Render a `/debug/workloads` document as indented text sections."""
    lines = [
        f"Name:             {document['name']}",
        f"Namespace:        {document['namespace']}",
        f"Kind:             {document['kind']}",
        f"Identity:         {document['identity']}",
        f"Service account:  {document['service_account']}",
        f"Address:          {document.get('address') or '-'}",
        f"Labels:           {','.join(f'{k}={v}' for k, v in document['labels'].items()) or '-'}",
        f"Sidecar:          {'injected' if document['injected'] else 'none'}",
        "Proxies:" if document["proxies"] else "Proxies:          none connected",
    ]
    lines += [f"  {p['node_id']}  connected since {p['connected_since']}" for p in document["proxies"]]
    lines.append(f"mTLS (mesh default {document['mtls']['default']}):")
    for port in document["mtls"]["ports"]:
        decided = port["decided_by"] + (f" PeerAuthentication {port['policy']}" if port["policy"] else " setting")
        lines.append(f"  port {port['port']}/{port['protocol']}: {port['mode']}  (decided by {decided})")
        if port.get("policy_error"):
            lines.append(f"    that policy is invalid, so STRICT is enforced: {port['policy_error']}")
    policies = document["authorization_policies"]
    lines.append("Authorization policies:" if policies else "Authorization policies: none (every authenticated caller is allowed)")
    for policy in policies:
        lines += _policy_lines(policy)
    lines.append("Inbound services:" if document["inbound_services"] else "Inbound services: none")
    for service in document["inbound_services"]:
        ports = ", ".join(f"{p['port']}->{p['target_port']}/{p['protocol']}" for p in service["ports"])
        lines.append(f"  {service['service']}  {ports}")
    outbound = document["outbound_services"]
    lines.append(f"Outbound services: {len(outbound)}" + ("" if wide or not outbound else " (-o wide lists them)"))
    if wide:
        for target in outbound:
            ids = ",".join(target["spiffe_ids"]) or "no mesh identity"
            lines.append(f"  {target['host']}:{target['port']}/{target['protocol']}  "
                         f"{target['endpoints']} endpoint(s)  {ids}")
    if document["problems"]:
        lines.append("Problems:")
        lines += [f"  {problem}" for problem in document["problems"]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    namespace, name = resolve_workload(args)
    client = admin_client(args)
    try:
        document = client.get_json(f"/debug/workloads/{namespace}/{name}")
    except NotFoundError as exc:
        raise NotFoundError(f"workload {namespace}/{name} is not in the mesh; check the name and -n",
                            namespace=namespace, name=name) from exc
    if args.output == "json":
        args.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    elif args.output == "yaml":
        args.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    else:
        args.stdout.write(describe_text(document, wide=args.output == "wide"))
    return EXIT_OK
