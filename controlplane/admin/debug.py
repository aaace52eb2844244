"""The read-only debug JSON API that `meshctl` reads: sync state, principals, workloads, config.

Every route is a GET that returns JSON and changes nothing. Pure functions of the mesh state
and the open ADS connections build the documents, so tests need no server, and
`register_debug_routes` adapts them to the admin server. docs/debug-api.md describes each
document field by field.

The control plane does not store workload certificates. Each one is signed by whichever
replica received the CSR, and only the agent keeps it. Certificate serials and expiry therefore
come from the agents and Envoys (`meshctl status`, `meshctl certs`), and these documents give
each connected proxy's address so a client can ask them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.json_format import MessageToDict

from controlplane.admin.server import AdminServer
from controlplane.identity.spiffe_id import SCHEME_PREFIX, SpiffeId
from controlplane.model.types import AuthorizationPolicy, MeshState, Proxy, Rule, Workload
from controlplane.translate import translate
from controlplane.translate.clusters import plan_outbound
from controlplane.translate.mesh import MeshIndex, inbound_ports, selecting_services
from controlplane.translate.mtls import MtlsPolicy, resolve_mtls
from controlplane.translate.rbac import policies_for_workload
from controlplane.translate.rbac_matchers import expand_trust_domains
from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

MESSAGE_TYPES = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
}


def not_found(message: str, **fields: str) -> web.HTTPNotFound:
    """Build a 404 whose body is `{"error": message, ...fields}`."""
    body = json.dumps({"error": message, **fields})
    return web.HTTPNotFound(text=body, content_type="application/json")


# ----- proxies -------------------------------------------------------------------------------


def proxy_summary(connection: Any) -> dict[str, Any]:
    """Summarise one ADS connection: what a client needs to find and reach the proxy."""
    status = connection.status()
    return {
        "node_id": status["node_id"],
        "workload": f"{status['namespace']}/{status['workload']}",
        "address": connection.proxy.ip,
        "connected_since": status["connected_since"],
    }


def proxies_of(connections: Iterable[Any], namespace: str, name: str) -> list[Any]:
    return [c for c in connections if c.proxy.namespace == namespace and c.proxy.workload == name]


def sync_document(connections: Iterable[Any]) -> dict[str, Any]:
    """`/debug/syncz`: every connection's sync status, plus the proxy's address."""
    return {"proxies": [{**c.status(), "address": c.proxy.ip} for c in connections]}


# ----- /debug/config -------------------------------------------------------------------------


def resource_json(type_url: str, payload: bytes) -> dict[str, Any]:
    """Decode one served resource into the JSON form Envoy's config_dump uses (proto field names)."""
    message = MESSAGE_TYPES[type_url]()
    message.ParseFromString(payload)
    return MessageToDict(message, preserving_proto_field_name=True)


def config_document(state: MeshState, connection: Any, all_proxies: list[Any]) -> dict[str, Any]:
    """`/debug/config/{ns}/{name}`: what the control plane serves this connection, decoded."""
    snapshot = connection.stream.snapshot
    resources: dict[str, dict[str, Any]] = {}
    for type_url, by_name in (snapshot.resources.items() if snapshot is not None else ()):
        resources[type_url] = {
            name: resource_json(type_url, resource.payload)
            for name, resource in sorted(by_name.items())
            if resource.payload is not None
        }
    # Problems are computed again for the current state, because the cache keeps only a summary.
    problems = [str(problem) for problem in translate(state, connection.proxy).problems]
    return {
        "node_id": connection.proxy.node_id,
        "namespace": connection.proxy.namespace,
        "workload": connection.proxy.workload,
        "proxies": [c.proxy.node_id for c in all_proxies],
        "version": connection.stream.sync_status(),
        "resources": resources,
        "problems": problems,
    }


# ----- /debug/principals ---------------------------------------------------------------------


def istio_match(pattern: str, value: str) -> bool:
    """Match `value` against an AuthorizationPolicy value: exact, `prefix*`, `*suffix` or `*`."""
    if pattern == "*":
        return bool(value)
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _namespace_match(pattern: str, namespace: str) -> bool:
    # Namespaces become a regular expression in which every `*` stands for any characters.
    parts = pattern.split("*")
    if len(parts) == 1:
        return namespace == pattern
    if not namespace.startswith(parts[0]) or not namespace.endswith(parts[-1]):
        return False
    position = len(parts[0])
    for middle in parts[1:-1]:
        found = namespace.find(middle, position)
        if found < 0:
            return False
        position = found + len(middle)
    return position <= len(namespace) - len(parts[-1])


# (attribute of Source, field name in the policy, is a namespace field)
_SOURCE_FIELDS = (
    ("principals", "principals", False),
    ("not_principals", "notPrincipals", False),
    ("namespaces", "namespaces", True),
    ("not_namespaces", "notNamespaces", True),
)
_CONDITION_KEYS = {"source.principal": False, "source.namespace": True}


def _matches(value: str, identity: SpiffeId, *, namespace_field: bool, state: MeshState) -> str | None:
    """Return the form of `value` that names `identity` (after trust domain aliases), or None."""
    if namespace_field:
        return value if _namespace_match(value, identity.namespace or "") else None
    bare = str(identity)[len(SCHEME_PREFIX):]
    for form in expand_trust_domains(value, state.config):
        if istio_match(form, bare):
            return form
    return None


def policy_mentions(policy: AuthorizationPolicy, identity: SpiffeId, state: MeshState) -> list[dict[str, Any]]:
    """List every `from` and `when` value of `policy` that matches `identity`, with its field path."""
    found = []
    for index, rule in enumerate(policy.rules):
        entries: list[tuple[str, str, bool]] = []
        for source in rule.sources:
            for attribute, field_name, namespace_field in _SOURCE_FIELDS:
                entries += [(field_name, value, namespace_field) for value in getattr(source, attribute)]
        for condition in rule.conditions:
            if condition.key in _CONDITION_KEYS:
                namespace_field = _CONDITION_KEYS[condition.key]
                entries += [(f"when {condition.key}", v, namespace_field) for v in condition.values]
                entries += [(f"when {condition.key} notValues", v, namespace_field) for v in condition.not_values]
        for field_name, value, namespace_field in entries:
            matched = _matches(value, identity, namespace_field=namespace_field, state=state)
            if matched is not None:
                found.append({
                    "policy": f"{policy.namespace}/{policy.name}",
                    "action": policy.action,
                    "rule": index,
                    "field": field_name,
                    "value": value,
                    "matched_as": matched,
                })
    return found


def principals_document(state: MeshState, connections: list[Any], *, namespace: str | None) -> dict[str, Any]:
    """`/debug/principals`: each SPIFFE ID from ServiceAccounts and workloads, and who uses it."""
    trust_domain = state.config.trust_domain
    accounts: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(ns: str, account: str) -> dict[str, Any]:
        key = (ns, account)
        if key not in accounts:
            accounts[key] = {"service_account_declared": False, "workloads": [], "proxies": []}
        return accounts[key]

    for account in state.service_accounts:
        entry(account.namespace, account.name)["service_account_declared"] = True
    for workload in state.workloads:
        entry(workload.namespace, workload.service_account)["workloads"].append(f"{workload.namespace}/{workload.name}")
    for connection in connections:
        entry(connection.proxy.namespace, connection.proxy.service_account)["proxies"].append(proxy_summary(connection))

    principals = []
    for (ns, account), facts in sorted(accounts.items()):
        if namespace is not None and ns != namespace:
            continue
        identity = SpiffeId.for_workload(trust_domain, ns, account)
        mentions = [m for policy in state.authorization_policies for m in policy_mentions(policy, identity, state)]
        principals.append({
            "spiffe_id": str(identity),
            "namespace": ns,
            "service_account": account,
            **facts,
            "policies": mentions,
        })
    return {
        "trust_domain": trust_domain,
        "trust_domain_aliases": list(state.config.trust_domain_aliases),
        "principals": principals,
    }


# ----- /debug/workloads ----------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _fields(value: Any) -> dict[str, Any]:
    """Non-empty fields of a Source, Operation or Condition, named as in the policy YAML."""
    return {_camel(name): list(getattr(value, name)) if isinstance(getattr(value, name), tuple) else getattr(value, name)
            for name in value.__slots__ if getattr(value, name)}


def rule_json(rule: Rule) -> dict[str, Any]:
    """Convert a rule back to the AuthorizationPolicy YAML shape: `from`, `to` and `when`."""
    result: dict[str, Any] = {}
    if rule.sources:
        result["from"] = [{"source": _fields(source)} for source in rule.sources]
    if rule.operations:
        result["to"] = [{"operation": _fields(operation)} for operation in rule.operations]
    if rule.conditions:
        result["when"] = [_fields(condition) for condition in rule.conditions]
    return result


def policy_json(policy: AuthorizationPolicy) -> dict[str, Any]:
    return {
        "namespace": policy.namespace,
        "name": policy.name,
        "action": policy.action,
        "provider": policy.provider or None,
        "dry_run": policy.dry_run,
        "selector": dict(policy.selector) if policy.selector is not None else None,
        "rules": [rule_json(rule) for rule in policy.rules],
        "error": policy.error,
    }


def explain_mtls(policy: MtlsPolicy, port: int) -> dict[str, Any]:
    """Return the mTLS mode of `port` and the PeerAuthentication level that decided it, as `mode_for_port` does."""
    mode = policy.mode_for_port(port)
    decider = None
    level_name = "default"
    if policy.workload is not None and policy.workload.port_level.get(port, "UNSET") != "UNSET":
        decider, level_name = policy.workload, "workload port-level"
    else:
        for name, level in (("workload", policy.workload), ("namespace", policy.namespace), ("mesh", policy.mesh)):
            if level is not None and (level.error or level.mode != "UNSET"):
                decider, level_name = level, name
                break
    return {
        "port": port,
        "mode": mode,
        "decided_by": level_name,
        "policy": f"{decider.namespace}/{decider.name}" if decider is not None else None,
        "policy_error": decider.error if decider is not None else None,
    }


def _proxy_for(workload: Workload, trust_domain: str) -> Proxy:
    """Build a stand-in Proxy, so the translator can describe a workload whose sidecar is not connected."""
    return Proxy(
        node_id="", namespace=workload.namespace, workload=workload.name,
        service_account=workload.service_account, ip=workload.ip or "",
        spiffe_id=workload.spiffe_id(trust_domain), labels=workload.labels,
    )


def workload_document(state: MeshState, workload: Workload, connections: list[Any]) -> dict[str, Any]:
    """`/debug/workloads/{ns}/{name}`: identity, mTLS per port, policies and services."""
    trust_domain = state.config.trust_domain
    proxy = connections[0].proxy if connections else _proxy_for(workload, trust_domain)
    ports, problems = inbound_ports(state, proxy)
    mtls = resolve_mtls(state, namespace=workload.namespace, labels=workload.labels)
    inbound = selecting_services(state, workload.namespace, workload.labels)
    policies = policies_for_workload(state, namespace=workload.namespace, labels=workload.labels)
    outbound = plan_outbound(state, MeshIndex.build(state))
    return {
        "namespace": workload.namespace,
        "name": workload.name,
        "kind": workload.kind,
        "identity": str(workload.spiffe_id(trust_domain)),
        "service_account": workload.service_account,
        "labels": dict(workload.labels),
        "address": workload.ip,
        "injected": workload.injected,
        "proxies": [proxy_summary(c) for c in connections],
        "mtls": {
            "default": mtls.default,
            "ports": [{**explain_mtls(mtls, p.port), "protocol": p.protocol} for p in ports],
        },
        "authorization_policies": [policy_json(policy) for policy in policies],
        "inbound_services": [
            {"service": f"{service.namespace}/{service.name}",
             "ports": [{"port": p.port, "target_port": p.target_port, "protocol": p.mesh_protocol} for p in service.ports]}
            for service in inbound
        ],
        "outbound_services": [
            {"service": f"{target.service.namespace}/{target.service.name}", "host": target.host,
             "port": target.port.port, "protocol": target.port.mesh_protocol, "cluster": target.cluster,
             "endpoints": len(target.endpoints), "spiffe_ids": list(target.spiffe_ids)}
            for target in outbound
        ],
        "problems": [str(problem) for problem in (*mtls.problems, *problems)],
    }


def find_workload(state: MeshState, namespace: str, name: str) -> Workload | None:
    return next((w for w in state.workloads if w.namespace == namespace and w.name == name), None)


# ----- routes --------------------------------------------------------------------------------


def register_debug_routes(admin: AdminServer, *, mesh: Any, cache: Any, ads: Any, ca: Any) -> None:
    """Add the `/debug/...` routes to `admin`; call before the admin server starts.

    `mesh` is the MeshRuntime (current state), `ads` the AggregatedDiscoveryServer (open
    streams). `cache` and `ca` are accepted so the routes can grow without a new signature.
    """
    del cache, ca

    def syncz(_request: web.Request) -> dict[str, Any]:
        return sync_document(ads.connections())

    def principals(request: web.Request) -> dict[str, Any]:
        namespace = request.query.get("namespace") or None
        return principals_document(mesh.state, list(ads.connections()), namespace=namespace)

    def workload(request: web.Request) -> dict[str, Any]:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        found = find_workload(mesh.state, namespace, name)
        connected = proxies_of(ads.connections(), namespace, name)
        if found is None:
            raise not_found(f"workload {namespace}/{name} is not in the mesh state", namespace=namespace, name=name)
        return workload_document(mesh.state, found, connected)

    def config(request: web.Request) -> dict[str, Any]:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        connected = proxies_of(ads.connections(), namespace, name)
        requested_node = request.query.get("node_id")
        chosen = [c for c in connected if requested_node is None or c.proxy.node_id == requested_node]
        if not chosen:
            qualifier = f"with node id {requested_node!r} " if requested_node else ""
            raise not_found(f"no proxy {qualifier}of workload {namespace}/{name} is connected",
                            namespace=namespace, name=name)
        return config_document(mesh.state, chosen[0], connected)

    admin.add_json_route("/debug/syncz", syncz)
    admin.add_json_route("/debug/mesh", lambda _request: mesh.describe())
    admin.add_json_route("/debug/principals", principals)
    admin.add_json_route("/debug/workloads/{namespace}/{name}", workload)
    admin.add_json_route("/debug/config/{namespace}/{name}", config)
