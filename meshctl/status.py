"""`meshctl status`: every connected sidecar, its xDS sync state and its certificate expiry.

The sync state comes from the control plane (`/debug/syncz`): per xDS type the version sent,
the version the proxy ACKed, and SYNCED, STALE (a response in flight or changes not sent yet)
or NACKED with the error Envoy returned. The certificate comes from each proxy's mesh-agent
(`/healthz/ready` on port 15020), which keeps the SVID that Envoy serves. When the agent cannot
be reached, the certificate columns show that instead.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from controlplane.translate.resources import PUSH_ORDER, SHORT_NAMES
from meshctl.errors import EXIT_OK, EXIT_PROBLEMS
from meshctl.client import AdminApiError, add_connection_arguments, admin_client, gather
from meshctl.output import Column, add_output_argument, render

TYPES = tuple(SHORT_NAMES[type_url] for type_url in PUSH_ORDER)
CERTIFICATE_SOURCE = "agent"

COLUMNS = (
    Column("WORKLOAD", "proxy"),
    Column("IDENTITY", "identity"),
    *(Column(short, f"{short}_cell") for short in TYPES),
    Column("AGE", "age"),
    Column("CERT EXPIRES IN", "certificate_time_left"),
    Column("NODE", "node_id", wide=True),
    Column("CERT SOURCE", "certificate_source", wide=True),
    Column("CERT SERIAL", "certificate_serial", wide=True),
    Column("CERT NOT AFTER", "certificate_not_after", wide=True),
    Column("ERROR", "error", wide=True),
)

# Keys that only feed table cells; json and yaml carry the same facts nested.
FLATTENED = frozenset({
    "error", "age", "certificate_serial", "certificate_not_after", "certificate_time_left", "certificate_source",
})

EPILOG = """examples:
  meshctl status                         every connected sidecar, from the local mesh
  meshctl status -n payments -o wide     versions, serials and NACK errors in payments
  meshctl status -o json                 everything, for scripts
  meshctl status --kubernetes            through the Kubernetes API server

exit status: 1 when any proxy NACKED its configuration or the control plane cannot be
read, else 0 (STALE is normal for a moment after every change).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show every connected sidecar's xDS sync state and certificate expiry",
        description="List the sidecars connected to the control plane, with per xDS type the "
        "sync state (SYNCED, STALE or NACKED) and, from each sidecar's agent, when its "
        "certificate expires.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", "--namespace", default=None, help="only sidecars in this namespace (default: all)")
    add_output_argument(parser)
    add_connection_arguments(parser)
    parser.set_defaults(run=run)


def time_left(not_after: datetime, now: datetime) -> str:
    """`3h12m`, `45m`, `2d4h`, or `expired 5m ago`."""
    seconds = int((not_after - now).total_seconds())
    text = format_duration(abs(seconds))
    return text if seconds >= 0 else f"expired {text} ago"


def format_duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def certificate_fields(agent: dict[str, Any] | AdminApiError, now: datetime) -> dict[str, Any]:
    """Extract the certificate facts an agent reported, or the reason there are none."""
    if isinstance(agent, AdminApiError):
        return {"certificate": {"source": None, "error": str(agent)}}
    svid = agent.get("svid") or {}
    if not svid.get("not_after"):
        return {"certificate": {"source": CERTIFICATE_SOURCE, "error": "the agent has no certificate"}}
    not_after = datetime.fromisoformat(svid["not_after"])
    return {
        "certificate": {
            "source": CERTIFICATE_SOURCE,
            "spiffe_id": svid.get("spiffe_id"),
            "serial": svid.get("serial"),
            "not_before": svid.get("not_before"),
            "not_after": svid["not_after"],
        },
        "certificate_serial": svid.get("serial"),
        "certificate_not_after": svid["not_after"],
        "certificate_time_left": time_left(not_after, now),
    }


def overall(types: dict[str, dict[str, str]]) -> str:
    statuses = {entry.get("status") for entry in types.values()}
    for status in ("NACKED", "STALE"):
        if status in statuses:
            return status
    return "SYNCED" if statuses else "UNREQUESTED"


def status_record(proxy: dict[str, Any], agent: dict[str, Any] | AdminApiError, *, now: datetime, wide: bool) -> dict[str, Any]:
    """Build one output row: the debug API's proxy entry, its table cells and its certificate."""
    types = proxy.get("types", {})
    connected = datetime.fromisoformat(proxy["connected_since"])
    record = {
        "proxy": f"{proxy['namespace']}/{proxy['workload']}",
        **proxy,
        "status": overall(types),
        **certificate_fields(agent, now),
        "age": format_duration(max(int((now - connected).total_seconds()), 0)),
    }
    record["certificate_source"] = record["certificate"]["source"] or "unreachable"
    errors = []
    for short in TYPES:
        entry = types.get(short)
        if entry is None:
            record[f"{short}_cell"] = "-"
            continue
        cell = entry["status"]
        if wide:
            cell += f" {entry.get('version_acked') or '-'}"
        record[f"{short}_cell"] = cell
        if entry.get("error"):
            errors.append(f"{short}: {entry['error']}")
    record["error"] = "; ".join(errors)
    return record


def nack_lines(records: list[dict[str, Any]]) -> list[str]:
    """Format one line per NACK, printed under the table so the message is not cut to a column."""
    lines = []
    for record in records:
        for short in TYPES:
            entry = record.get("types", {}).get(short, {})
            if entry.get("status") == "NACKED":
                lines.append(f"{record['proxy']} {short} NACKED version {entry.get('version_sent')}: {entry.get('error', '')}")
    return lines


def run(args: argparse.Namespace) -> int:
    client = admin_client(args)
    proxies = client.get_json("/debug/syncz").get("proxies", [])
    if args.namespace is not None:
        proxies = [p for p in proxies if p.get("namespace") == args.namespace]
    agents = gather(client.agent_status, proxies)
    now = datetime.now(timezone.utc)
    wide = args.output == "wide"
    records = [status_record(p, a, now=now, wide=wide) for p, a in zip(proxies, agents)]
    if args.output in ("json", "yaml"):
        records = [{k: v for k, v in r.items() if k not in FLATTENED and not k.endswith("_cell")} for r in records]
    where = f" in namespace {args.namespace}" if args.namespace else ""
    args.stdout.write(render(records, COLUMNS, args.output, empty=f"No proxies connected{where}."))
    if args.output in ("table", "wide"):
        for line in nack_lines(records):
            args.stdout.write(line + "\n")
    return EXIT_PROBLEMS if any(r["status"] == "NACKED" for r in records) else EXIT_OK
