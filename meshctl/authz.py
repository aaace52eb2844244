"""`meshctl authz check`: explain whether a call would be allowed, and which policy decides.

The command reads the configuration the control plane sent to the callee's Envoy
(`GET /debug/config/{namespace}/{name}`), picks the inbound filter chain for the port and the
caller's transport, applies Envoy's path normalization, and runs the RBAC filters with the
evaluator in `controlplane.authz`. It names the deciding filter, the RBAC policy and the
AuthorizationPolicy (namespace/name and rule) behind it, plus dry-run and AUDIT results.

The exit code is 0 whatever the decision, because the command succeeded in deciding; scripts
read `decision` from `-o json`. It is 1 when the decision cannot be made (workload not
connected, configuration the evaluator does not support) and 2 for invalid arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from typing import Any

from controlplane.authz.check import Call, Outcome, check_call
from controlplane.authz.errors import AuthzError
from controlplane.authz.inbound import parse_listeners
from controlplane.authz.report import outcome_record
from controlplane.errors import MeshError, SpiffeIdError
from controlplane.identity.spiffe_id import SCHEME_PREFIX, SpiffeId
from meshctl.errors import EXIT_OK, UsageError
from meshctl.client import AdminClient, NotFoundError, add_connection_arguments, admin_client, split_workload
from meshctl.output import add_output_argument, format_table, render

NO_CERTIFICATE = ("none", "plaintext")
# `<trust domain>/ns/<namespace>/sa/<service account>`, the principal form of AuthorizationPolicy.
_ISTIO_PRINCIPAL = re.compile(r"[^/]+/ns/[^/]+/sa/[^/]+")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Used when neither the options nor the debug API give an address.
DEFAULT_ADDRESS = "127.0.0.1"


class CheckError(MeshError):
    """The call cannot be checked: the callee or caller is unknown to the control plane."""


CHECK_EXAMPLES = """examples:
  meshctl authz check --from payments/worker --to payments/ledger --port 8080 --method POST --path /v1/settlements
  meshctl authz check --from cluster.local/ns/shop/sa/web --to ledger -n payments --port 8080
  meshctl authz check --from none --to payments/ledger --port 8080        a caller without a certificate
  meshctl authz check --from worker -n payments --to ledger --port 8080 --header x-team=blue -o json
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("authz", help="explain authorization decisions", description="Explain authorization decisions.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser(
        "check",
        help="explain whether a call would be allowed, and which policy decides",
        description="Decide one call with the RBAC configuration the callee's Envoy has, and explain "
        "the decision. Exits 0 whatever the decision; 1 when it cannot be decided.",
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--from", dest="caller", required=True, metavar="CALLER",
        help="a SPIFFE ID, a principal (cluster.local/ns/NS/sa/SA), a workload (NAME or NS/NAME), "
        "or none (also: plaintext) for a caller without a certificate",
    )
    check.add_argument("--to", dest="callee", required=True, metavar="WORKLOAD", help="the callee workload, NAME or NS/NAME")
    check.add_argument("--port", required=True, type=int, help="the callee's port (the container port)")
    check.add_argument("--method", default="GET", help="HTTP method (default: GET)")
    check.add_argument("--path", default="/", help="request path with optional query, as the caller sends it (default: /)")
    check.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE",
        help="request header; repeat for more. host=VALUE sets :authority (default: NAME.NS:PORT of --to)",
    )
    check.add_argument("--source-ip", metavar="IP", help="the caller's address (default: the caller workload's address)")
    check.add_argument(
        "--plaintext", action="store_true",
        help="connect without TLS even if the caller has a certificate (default: mutual TLS when it has one)",
    )
    check.add_argument("-n", "--namespace", default=None, help="namespace of workloads given as NAME (default: default)")
    add_output_argument(check, formats=("table", "json", "yaml"))
    add_connection_arguments(check)
    check.set_defaults(run=run)


def parse_headers(values: list[str]) -> tuple[str | None, dict[str, tuple[str, ...]]]:
    """Split `KEY=VALUE` options into the host and the other headers (lower-case names)."""
    host: str | None = None
    headers: dict[str, tuple[str, ...]] = {}
    for value in values:
        name, sep, content = value.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise UsageError(f"--header {value!r} is not KEY=VALUE")
        if name in ("host", ":authority"):
            host = content
        elif name.startswith(":"):
            raise UsageError(f"--header {value!r}: set {name} with --method or --path, not --header")
        else:
            headers[name] = headers.get(name, ()) + (content,)
    return host, headers


def _workload_ref(text: str, namespace: str | None, option: str) -> tuple[str, str]:
    try:
        return split_workload(text, namespace)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from exc


def _get(client: AdminClient, path: str, missing: str) -> dict[str, Any]:
    try:
        return client.get_json(path)
    except NotFoundError as exc:
        raise CheckError(f"{missing}: {exc}") from exc


def resolve_caller(text: str, args: argparse.Namespace, client: AdminClient) -> dict[str, Any]:
    """Resolve `--from` to the caller's principal (None without a certificate) and address."""
    if text.lower() in NO_CERTIFICATE:
        return {"caller": "none", "principal": None, "address": None}
    if text.startswith(SCHEME_PREFIX):
        try:
            return {"caller": text, "principal": str(SpiffeId.parse(text)), "address": None}
        except SpiffeIdError as exc:
            raise UsageError(f"--from: {exc}") from exc
    if _ISTIO_PRINCIPAL.fullmatch(text):
        trust_domain, _, rest = text.partition("/")
        if trust_domain == "cluster.local":
            # As in policies, cluster.local stands for the mesh's own trust domain.
            trust_domain = _get(client, "/debug/mesh", "cannot read the mesh settings")["trust_domain"]
        try:
            return {"caller": text, "principal": str(SpiffeId.parse(f"{SCHEME_PREFIX}{trust_domain}/{rest}")), "address": None}
        except SpiffeIdError as exc:
            raise UsageError(f"--from: {exc}") from exc
    namespace, name = _workload_ref(text, args.namespace, "--from")
    workload = _get(client, f"/debug/workloads/{namespace}/{name}", f"caller {namespace}/{name}")
    # A workload without a sidecar has no certificate, so it calls in plaintext.
    principal = workload.get("identity") if workload.get("injected") else None
    return {"caller": f"{namespace}/{name}", "principal": principal, "address": workload.get("address")}


def _node_address(node_id: str) -> str | None:
    """Return the instance IP in a node ID `sidecar~<ip>~<workload>.<namespace>~...`."""
    parts = node_id.split("~")
    return parts[1] if len(parts) > 2 and parts[1] else None


def validate_arguments(args: argparse.Namespace) -> tuple[str | None, dict[str, tuple[str, ...]]]:
    """Check the request options before any network call; return the host and headers."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number (1-65535)")
    if not _METHOD.fullmatch(args.method):
        raise UsageError(f"--method {args.method!r} is not an HTTP method token")
    if not args.path.startswith("/"):
        raise UsageError(f"--path {args.path!r} must start with /")
    if args.source_ip is not None:
        try:
            ipaddress.ip_address(args.source_ip)
        except ValueError as exc:
            raise UsageError(f"--source-ip {args.source_ip!r} is not an IP address") from exc
    return parse_headers(args.header)


def check(args: argparse.Namespace, client: AdminClient) -> tuple[Call, Outcome, dict[str, Any]]:
    """Resolve the arguments through the debug API and decide the call."""
    host, headers = validate_arguments(args)
    namespace, name = _workload_ref(args.callee, args.namespace, "--to")
    config = _get(
        client, f"/debug/config/{namespace}/{name}",
        f"cannot read the configuration of {namespace}/{name} (is its sidecar connected?)",
    )
    caller = resolve_caller(args.caller, args, client)
    call = Call(
        port=args.port,
        source_ip=args.source_ip or caller["address"] or DEFAULT_ADDRESS,
        destination_ip=_node_address(config.get("node_id", "")) or DEFAULT_ADDRESS,
        principal=caller["principal"],
        plaintext=args.plaintext,
        method=args.method,
        path=args.path,
        host=host if host is not None else f"{name}.{namespace}:{args.port}",
        headers=headers,
    )
    try:
        outcome = check_call(parse_listeners(config.get("resources", {})), call)
    except AuthzError as exc:
        raise CheckError(f"cannot decide the call to {namespace}/{name} port {args.port}: {exc}") from exc
    context = {
        "caller": caller["caller"],
        "callee": f"{namespace}/{name}",
        "source_ip_given": bool(args.source_ip or caller["address"]),
        "problems": list(config.get("problems", [])),
    }
    return call, outcome, context


def _from_line(record: dict[str, Any]) -> str:
    caller = record["from"]
    identity = caller["principal"] or "no certificate"
    if caller["caller"] not in (None, "none", caller["principal"]):
        identity = f"{caller['caller']} ({identity})"
    return f"{identity}, {caller['transport']}, source IP {caller['source_ip']}"


def _to_line(record: dict[str, Any]) -> str:
    callee = record["to"]
    text = f"{callee['workload']} port {callee['port']}"
    if callee["listener"]:
        text += f" ({callee['protocol']}), listener {callee['listener']}, filter chain {callee['filter_chain']}"
    return text


def _request_line(record: dict[str, Any]) -> str | None:
    request = record["request"]
    if request["method"] is None:
        return None
    path = request["path"]
    text = f"{request['method']} {path['normalized'] or path['sent']} host {request['host']}"
    headers = [f"{name}={value}" for name, values in request["headers"].items() for value in values]
    return text + (f" headers {' '.join(headers)}" if headers else "")


def _policy_label(entry: dict[str, Any]) -> str:
    if entry["policy"] is None:
        return entry["rbac_policy"] or "no policy"
    rule = "fail-closed" if entry["fail_closed"] else f"rule {entry['rule']}"
    return f"{entry['policy']} {rule} [{entry['rbac_policy']}]"


def table_rows(record: dict[str, Any]) -> list[list[str]]:
    """Lay out the explanation as label/value rows, one fact a row."""
    rows = [["Decision:", record["decision"]], ["Reason:", record["reason"]], ["From:", _from_line(record)], ["To:", _to_line(record)]]
    request = _request_line(record)
    if request is not None:
        rows.append(["Request:", request])
    path = record["request"]["path"]
    if path is not None and path["normalized"] != path["sent"] and path["normalized"] is not None:
        rows.append(["Path:", f"{path['sent']} normalized to {path['normalized']}"])
    deciding = record["deciding"]
    if deciding is not None:
        rows.append(["Decided by:", f"filter {deciding['filter']} ({deciding['holds']}), matched {_policy_label(deciding)}"])
    for entry in record["dry_run"]:
        rows.append(["Dry run:", f"{entry['dry_run_policy'] or entry['filter']} would {entry['result']} ({entry['action']}, "
                                 f"matched {_policy_label(entry)})"])
    rows += [["Audit:", f"logged by {_policy_label(entry)}"] for entry in record["audit"]]
    rows += [["Note:", note] for note in record["notes"]]
    rows += [["Problem:", problem] for problem in record["problems"]]
    return rows


def render_outcome(record: dict[str, Any], output: str) -> str:
    if output in ("json", "yaml"):
        return render([record], (), output)
    return format_table(table_rows(record))


def run(args: argparse.Namespace) -> int:
    client = admin_client(args)
    call, outcome, context = check(args, client)
    record = outcome_record(call, outcome, context)
    args.stdout.write(render_outcome(record, args.output))
    return EXIT_OK

