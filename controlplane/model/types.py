"""Typed, immutable mesh state.

Sources (files, Kubernetes) turn API objects into these values through `controlplane.model.parse`;
the translator reads only these. Collections are tuples and mappings are read-only, so a
`MeshState` can be shared between tasks and compared cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

from controlplane.identity.spiffe_id import SpiffeId

EMPTY: Mapping[str, str] = MappingProxyType({})

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_ROOT_NAMESPACE = "idmesh-system"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_CERT_TTL_SECONDS = 24 * 3600

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
PolicyAction = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]
# How a service port is proxied, decided from the port name prefix or appProtocol as in Istio.
PortProtocol = Literal["http", "http2", "grpc", "tcp"]


def frozen_map(values: Mapping[str, str] | None) -> Mapping[str, str]:
    """Return a read-only copy of `values` (an empty shared mapping for None)."""
    return MappingProxyType(dict(values)) if values else EMPTY


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Names one Kubernetes object, for messages and for status reporting."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Mesh-wide settings from the `idmesh` ConfigMap, key `mesh`."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    trust_domain_aliases: tuple[str, ...] = ()
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    default_cert_ttl_seconds: int = DEFAULT_CERT_TTL_SECONDS
    max_cert_ttl_seconds: int = 7 * 24 * 3600
    default_mtls_mode: MtlsMode = "PERMISSIVE"
    # Debounce for configuration pushes: quiet period and longest delay, in seconds.
    push_debounce_seconds: float = 0.1
    push_max_delay_seconds: float = 1.0

    @property
    def trust_domains(self) -> tuple[str, ...]:
        """The trust domain followed by its aliases: every domain a peer may come from."""
        return (self.trust_domain, *self.trust_domain_aliases)


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod, or in local mode a Deployment's pod template standing in for its pods."""

    namespace: str
    name: str
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    ports: tuple[ContainerPort, ...] = ()
    ip: str | None = None
    node_name: str = ""
    host_network: bool = False
    # Whether the workload runs an idmesh sidecar (injected, or marked for injection in local mode).
    injected: bool = False
    kind: str = "Pod"
    uid: str = ""

    def spiffe_id(self, trust_domain: str) -> SpiffeId:
        return SpiffeId.for_workload(trust_domain, self.namespace, self.service_account)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""
    # Decided at parse time from name / appProtocol; "tcp" when nothing says otherwise.
    mesh_protocol: PortProtocol = "tcp"

    @property
    def is_http(self) -> bool:
        return self.mesh_protocol != "tcp"


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()
    selector: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    cluster_ip: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    def host(self, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
        return f"{self.name}.{self.namespace}.svc.{cluster_domain}"

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Service", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready address behind one service port."""

    namespace: str
    service: str
    service_port: int
    address: str
    port: int
    workload: str = ""
    service_account: str = ""
    ready: bool = True


@dataclass(frozen=True, slots=True)
class Source:
    """`from.source` of an AuthorizationPolicy rule. Empty tuples mean "not constrained"."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """`to.operation` of an AuthorizationPolicy rule. Ports are strings as in the Istio API."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """One `when` entry: `key` matches any of `values` and none of `not_values`."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: every `from` OR-ed, every `to` OR-ed, `when` AND-ed, and the three AND-ed."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    namespace: str
    name: str
    action: PolicyAction = "ALLOW"
    # None: no `selector` field, the policy applies to every workload in its namespace (or the
    # whole mesh in the root namespace). An empty mapping selects every workload too.
    selector: Mapping[str, str] | None = None
    rules: tuple[Rule, ...] = ()
    provider: str = ""
    dry_run: bool = False
    api_version: str = "security.idmesh.io/v1"
    # Set when the policy is invalid or uses a feature idmesh cannot enforce. The policy then
    # fails closed: every workload it selects denies all requests, and the reason is reported.
    error: str | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("AuthorizationPolicy", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    namespace: str
    name: str
    selector: Mapping[str, str] | None = None
    mode: MtlsMode = "UNSET"
    port_level: Mapping[int, MtlsMode] = field(default_factory=lambda: MappingProxyType({}))
    api_version: str = "security.idmesh.io/v1"
    error: str | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("PeerAuthentication", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class MeshState:
    """Everything the translator needs, as one immutable value."""

    config: MeshConfig = MeshConfig()
    namespaces: tuple[Namespace, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    # Problems found while parsing objects; the objects concerned are skipped or fail closed.
    errors: tuple[Exception, ...] = ()


ProxyMode = Literal["kubernetes", "local"]


@dataclass(frozen=True, slots=True)
class Proxy:
    """One connected sidecar: whose configuration the translator computes.

    In `kubernetes` mode iptables sends inbound traffic to 15006 and outbound traffic to 15001,
    and the app listens on its ports at `app_address` (127.0.0.1). In `local` mode there is no
    iptables: inbound listeners bind `ip:<container port>` directly, the app listens on
    `app_address:<container port>` (another loopback address), and the app sends outbound HTTP
    to `ip:15001` with the service host in the authority, or opens TCP with HTTP CONNECT there.
    """

    node_id: str
    namespace: str
    workload: str
    service_account: str
    ip: str
    spiffe_id: SpiffeId
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    mode: ProxyMode = "kubernetes"
    app_address: str = "127.0.0.1"

    @property
    def group_key(self) -> tuple:
        """Everything that shapes this proxy's configuration; proxies with equal keys share it."""
        return (
            self.namespace,
            self.workload,
            self.service_account,
            tuple(sorted(self.labels.items())),
            self.mode,
            self.ip if self.mode == "local" else "",
            self.app_address,
        )
