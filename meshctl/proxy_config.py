"""`meshctl proxy-config WORKLOAD KIND`: a sidecar's listeners, clusters, routes or secrets.

`--source controlplane` (default) shows what the control plane serves the workload's proxy
(`/debug/config/{namespace}/{name}`). `--source envoy` shows what that Envoy loaded, from its
admin `config_dump`. That includes static resources from the bootstrap and listeners or
clusters still warming, so comparing the two shows configuration that Envoy did not take. Both
sources use proto field names, as Envoy's config_dump does. `-o json` prints the resources
without summarising.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Iterable

import yaml

from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshctl.certs import connected_proxy, resolve_workload
from meshctl.errors import EXIT_OK
from meshctl.client import NotFoundError, add_connection_arguments, admin_client, envoy_get_json
from meshctl.output import Column, add_output_argument, render

KINDS = ("listeners", "clusters", "routes", "secrets")
TYPE_URLS = {"listeners": LISTENER, "clusters": CLUSTER, "routes": ROUTE, "secrets": SECRET}
# Per kind: the config_dump section's @type suffix and its lists as (key, state, key of the resource).
DUMP_SECTIONS: dict[str, tuple[str, tuple[tuple[str, str, str | None], ...]]] = {
    "listeners": ("ListenersConfigDump", (
        ("static_listeners", "static", "listener"),
        ("dynamic_listeners", "", None),
    )),
    "clusters": ("ClustersConfigDump", (
        ("static_clusters", "static", "cluster"),
        ("dynamic_active_clusters", "active", "cluster"),
        ("dynamic_warming_clusters", "warming", "cluster"),
    )),
    "routes": ("RoutesConfigDump", (
        ("static_route_configs", "static", "route_config"),
        ("dynamic_route_configs", "active", "route_config"),
    )),
    "secrets": ("SecretsConfigDump", (
        ("static_secrets", "static", "secret"),
        ("dynamic_active_secrets", "active", "secret"),
        ("dynamic_warming_secrets", "warming", "secret"),
    )),
}
# A dynamic listener is kept in one of these states; Envoy sets one of them per entry.
LISTENER_STATES = ("active_state", "warming_state", "draining_state")

EPILOG = """examples:
  meshctl proxy-config payments/ledger listeners                 what the control plane serves
  meshctl proxy-config payments/ledger listeners --source envoy  what the ledger's Envoy loaded
  meshctl proxy-config ledger -n payments clusters -o wide
  meshctl proxy-config ledger -n payments routes -o json         the resources, unsummarised
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy-config",
        help="summarise a sidecar's listeners, clusters, routes or secrets",
        description="Summarise the listeners, clusters, routes or secrets of WORKLOAD's sidecar, "
        "as the control plane serves them or as its Envoy loaded them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", metavar="WORKLOAD", help="NAME (in -n, default: default) or NAMESPACE/NAME")
    parser.add_argument("kind", choices=KINDS, help="which resources to show")
    parser.add_argument("-n", "--namespace", default=None, help="namespace of WORKLOAD")
    parser.add_argument("--source", choices=("controlplane", "envoy"), default="controlplane",
                        help="read the control plane's snapshot or Envoy's config_dump (default: %(default)s)")
    parser.add_argument("--envoy-admin-url", metavar="URL", default=None,
                        help="Envoy admin base URL for --source envoy (default: the proxy's address, port 15000)")
    add_output_argument(parser)
    add_connection_arguments(parser)
    parser.set_defaults(run=run)


# ----- reading ---------------------------------------------------------------------------------


def from_control_plane(document: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Resources of `kind` from a `/debug/config` document, as (state, version, resource) entries."""
    short = {"listeners": "LDS", "clusters": "CDS", "routes": "RDS", "secrets": "SDS"}[kind]
    version = document.get("version", {}).get(short, {}).get("version_sent", "")
    by_name = document.get("resources", {}).get(TYPE_URLS[kind], {})
    return [{"state": "served", "version": version, "resource": by_name[name]} for name in sorted(by_name)]


def _lb_endpoint_count(assignment: dict[str, Any]) -> int:
    return sum(len(group.get("lb_endpoints", [])) for group in assignment.get("endpoints", []))


def endpoint_counts(document: dict[str, Any] | None, dump: dict[str, Any] | None) -> dict[str, int]:
    """Endpoints per EDS service name, from a `/debug/config` document or an Envoy config_dump."""
    counts: dict[str, int] = {}
    if document is not None:
        for name, assignment in document.get("resources", {}).get(ENDPOINT, {}).items():
            counts[name] = _lb_endpoint_count(assignment)
    for config in (dump or {}).get("configs", []):
        for item in config.get("dynamic_endpoint_configs", []):
            assignment = item.get("endpoint_config", {})
            counts[assignment.get("cluster_name", "")] = _lb_endpoint_count(assignment)
    return counts


def from_envoy(dump: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Resources of `kind` from an Envoy config_dump, with their state and version."""
    section_type, lists = DUMP_SECTIONS[kind]
    entries = []
    for config in dump.get("configs", []):
        if not config.get("@type", "").endswith(section_type):
            continue
        for key, state, resource_key in lists:
            for item in config.get(key, []):
                if resource_key is not None:
                    entries.append({"state": state, "version": item.get("version_info", ""),
                                    "resource": item.get(resource_key, {})})
                    continue
                # A dynamic listener sits in one of LISTENER_STATES, and error_state records a rejection.
                for listener_state in LISTENER_STATES:
                    if listener_state in item:
                        placed = item[listener_state]
                        entries.append({"state": listener_state.removesuffix("_state"),
                                        "version": placed.get("version_info", ""), "resource": placed.get("listener", {})})
                if "error_state" in item:
                    entries.append({"state": "rejected", "version": "",
                                    "resource": {"name": item.get("name", "")},
                                    "error": item["error_state"].get("details", "")})
    return entries


# ----- summaries ---------------------------------------------------------------------------------


def _address(resource: dict[str, Any]) -> str:
    socket = resource.get("address", {}).get("socket_address", {})
    return f"{socket.get('address', '')}:{socket.get('port_value', 0)}" if socket else ""


def _filters(chain: dict[str, Any]) -> Iterable[str]:
    return (f.get("name", "") for f in chain.get("filters", []))


def listener_row(resource: dict[str, Any], _endpoints: dict[str, int]) -> dict[str, Any]:
    chains = resource.get("filter_chains", [])
    return {
        "address": _address(resource),
        "direction": resource.get("traffic_direction", ""),
        "chains": len(chains),
        "details": sorted({name for chain in chains for name in _filters(chain)}),
    }


def cluster_row(resource: dict[str, Any], endpoints_by_name: dict[str, int]) -> dict[str, Any]:
    if resource.get("transport_socket"):
        transport = "tls"
    elif resource.get("transport_socket_matches"):
        # The mesh's outbound clusters pick mutual TLS per endpoint, by endpoint metadata.
        transport = "tls-by-endpoint"
    else:
        transport = "plaintext"
    eds_name = resource.get("eds_cluster_config", {}).get("service_name") or resource.get("name", "")
    if resource.get("type") == "EDS":
        endpoints = endpoints_by_name.get(eds_name, "")
    else:
        endpoints = _lb_endpoint_count(resource.get("load_assignment", {}))
    return {
        # proto3 JSON leaves out enum defaults, and STATIC is the Cluster type's zero value.
        "type": resource.get("type", "STATIC") if "cluster_type" not in resource else "CUSTOM",
        "transport": transport,
        "endpoints": endpoints,
        "details": [eds_name] if resource.get("type") == "EDS" else [],
    }


def route_row(resource: dict[str, Any], _endpoints: dict[str, int]) -> dict[str, Any]:
    hosts = resource.get("virtual_hosts", [])
    return {"virtual_hosts": len(hosts), "details": sorted(d for host in hosts for d in host.get("domains", []))}


def secret_row(resource: dict[str, Any], _endpoints: dict[str, int]) -> dict[str, Any]:
    kinds = [k for k in ("tls_certificate", "validation_context", "session_ticket_keys", "generic_secret") if k in resource]
    return {"type": kinds[0] if kinds else "", "details": []}


SUMMARIES: dict[str, Callable[[dict[str, Any], dict[str, int]], dict[str, Any]]] = {
    "listeners": listener_row, "clusters": cluster_row, "routes": route_row, "secrets": secret_row,
}
COLUMNS = {
    "listeners": (Column("NAME", "name"), Column("ADDRESS", "address"), Column("DIRECTION", "direction"),
                  Column("FILTER CHAINS", "chains"), Column("STATE", "state", wide=True),
                  Column("VERSION", "version", wide=True), Column("FILTERS", "details", wide=True)),
    "clusters": (Column("NAME", "name"), Column("TYPE", "type"), Column("TRANSPORT", "transport"),
                 Column("ENDPOINTS", "endpoints", wide=True), Column("STATE", "state", wide=True),
                 Column("VERSION", "version", wide=True), Column("EDS NAME", "details", wide=True)),
    "routes": (Column("NAME", "name"), Column("VIRTUAL HOSTS", "virtual_hosts"), Column("STATE", "state", wide=True),
               Column("VERSION", "version", wide=True), Column("DOMAINS", "details", wide=True)),
    "secrets": (Column("NAME", "name"), Column("TYPE", "type"), Column("STATE", "state", wide=True),
                Column("VERSION", "version", wide=True)),
}


def summary_records(entries: list[dict[str, Any]], kind: str, endpoints: dict[str, int]) -> list[dict[str, Any]]:
    records = []
    for entry in entries:
        resource = entry["resource"]
        record = {"name": resource.get("name", ""), "state": entry["state"], "version": entry["version"]}
        record.update(SUMMARIES[kind](resource, endpoints) if entry["state"] != "rejected" else {"details": [entry["error"]]})
        records.append(record)
    return records


def run(args: argparse.Namespace) -> int:
    namespace, name = resolve_workload(args)
    client = admin_client(args)
    if args.source == "controlplane":
        try:
            document = client.get_json(f"/debug/config/{namespace}/{name}")
        except NotFoundError:
            connected_proxy(client, namespace, name)  # raises an error naming what is missing
            raise
        entries = from_control_plane(document, args.kind)
        endpoints = endpoint_counts(document, None)
    else:
        proxy = connected_proxy(client, namespace, name)
        envoy = args.envoy_admin_url or client.envoy_admin_url(proxy)
        dump = envoy_get_json(envoy, "/config_dump?include_eds")
        entries = from_envoy(dump, args.kind)
        endpoints = endpoint_counts(None, dump)
    if args.output == "json":
        args.stdout.write(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    elif args.output == "yaml":
        args.stdout.write(yaml.safe_dump(entries, sort_keys=False, allow_unicode=True))
    else:
        records = summary_records(entries, args.kind, endpoints)
        args.stdout.write(render(records, COLUMNS[args.kind], args.output, empty=f"No {args.kind} found."))
    return EXIT_OK
