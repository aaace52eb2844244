"""`controlplane serve`: assemble the CA, the gRPC server and the admin server, and run them.

`ControlPlane` owns the running parts. Components that other packages add (configuration
sources, the ADS server) register with `control_plane.grpc` (`add_service`) and
`control_plane.admin` (`add_json_route`, `add_readiness_check`) in `build_control_plane`,
before `start()`. With `--source kubernetes`, `kubernetes_mode.KubernetesMode` adds leader
election, the CA Secret, the leader's duties and the injection webhook.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from controlplane.admin import AdminServer
from controlplane.admin.debug import register_debug_routes
from controlplane.api import ca_pb2_grpc
from controlplane.errors import ConfigError
from controlplane.identity.ca import CA_FILES, CertificateAuthority
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.keys import DEFAULT_KEY_TYPE
from controlplane.identity.pemfiles import certificate_to_pem
from controlplane.injector.settings import InjectionSettings
from controlplane.log import get_logger
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN
from controlplane.server.attestation import (
    MISSING_SERVICE_ACCOUNT_TOKEN,
    Attestor,
    FirstCredentialAttestor,
    JoinTokenAttestor,
    PeerSvidAttestor,
)
from controlplane.server.ca_service import CertificateServicer
from controlplane.server.addresses import (
    DEFAULT_ADMIN_ADDRESS,
    DEFAULT_BOOTSTRAP_ADDRESS,
    DEFAULT_MTLS_ADDRESS,
    split_address,
)
from controlplane.server.grpc_server import GrpcServer
from controlplane.server.mesh import MeshRuntime, SourceSpec, load_local_addresses
from controlplane.translate import translate
from controlplane.model.types import MeshConfig, MeshState
from controlplane.translate.resources import CONTROL_PLANE_GRPC_PORT
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.debounce import DebounceSettings
from controlplane.xds.metrics import XdsMetrics
from controlplane.xds.server import AggregatedDiscoveryServer
from envoy.service.discovery.v3 import ads_pb2_grpc
from controlplane.server.tls import (
    ServingCredentials,
    ServingMaterial,
    control_plane_dns_names,
    control_plane_spiffe_id,
    keep_serving_certificate_fresh,
)

if TYPE_CHECKING:
    from controlplane.server.kubernetes_mode import KubernetesMode

log = get_logger("server")

_xds_metrics: XdsMetrics | None = None


def shared_xds_metrics() -> XdsMetrics:
    """Return the process-wide xDS collectors; Prometheus allows each name once per registry."""
    global _xds_metrics
    if _xds_metrics is None:
        _xds_metrics = XdsMetrics()
    return _xds_metrics


# The control plane's own certificate is short-lived because it is renewed in memory.
SERVING_CERTIFICATE_TTL = timedelta(hours=12)

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Settings of `controlplane serve`; addresses are HOST:PORT, port 0 picks a free port.

    The CA comes from exactly one of `ca_dir` (a directory, created on first start) and
    `ca_secret` (a Secret in the root namespace; Kubernetes mode only).
    """

    ca_dir: Path | None = None
    ca_secret: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    grpc_address: str = DEFAULT_MTLS_ADDRESS
    bootstrap_address: str | None = DEFAULT_BOOTSTRAP_ADDRESS
    admin_address: str = DEFAULT_ADMIN_ADDRESS
    shutdown_grace_seconds: float = 5.0
    # Configuration source: "none", "files:DIR" or "kubernetes".
    source: str = "none"
    # Local mode: a JSON map of namespace/name to the workload's loopback address.
    local_addresses: Path | None = None
    kubeconfig: Path | None = None
    kube_context: str | None = None
    push_debounce_seconds: float = 0.1
    push_max_delay_seconds: float = 1.0
    # Kubernetes mode: HOST:PORT of the injection webhook, None for no webhook.
    webhook_address: str | None = None
    # Kubernetes mode: image of the sidecar and init containers that the webhook injects.
    proxy_image: str = InjectionSettings().proxy_image
    # The control plane HOST:PORT injected sidecars dial; None means the Service in the root namespace.
    sidecar_control_plane: str | None = None

    def __post_init__(self) -> None:
        if (self.ca_dir is None) == (self.ca_secret is None):
            raise ConfigError("give exactly one CA source: --ca-dir DIR or --ca-secret NAME",
                              ca_dir=self.ca_dir, ca_secret=self.ca_secret)
        kubernetes = self.source == "kubernetes"
        if self.ca_secret is not None and not kubernetes:
            raise ConfigError(f"--ca-secret needs --source kubernetes, but the source is {self.source!r}; "
                              "use --ca-dir for other sources", source=self.source)
        if self.webhook_address is not None and not kubernetes:
            raise ConfigError(f"--webhook-address needs --source kubernetes, but the source is {self.source!r}: "
                              "the webhook reads namespace labels from the Kubernetes API", source=self.source)

    def injection_settings(self, trust_domain: str) -> InjectionSettings:
        """Return what the webhook injects into pods of a mesh with `trust_domain`."""
        address = self.sidecar_control_plane
        if address is None:
            address = f"{control_plane_dns_names(self.root_namespace)[0]}:{CONTROL_PLANE_GRPC_PORT}"
        return InjectionSettings(proxy_image=self.proxy_image, control_plane_address=address, trust_domain=trust_domain)


def load_or_create_ca(ca_dir: Path, *, trust_domain: str, now: datetime) -> tuple[CertificateAuthority, bool]:
    """Load the CA in `ca_dir`, or create one for `trust_domain` if the directory has none.

    Return the CA and whether it was created. A directory that contains a partial CA is an error
    (from `CertificateAuthority.load`), never silently replaced.
    """
    if any((ca_dir / name).exists() for name in CA_FILES):
        return CertificateAuthority.load(ca_dir, now=now), False
    ca = CertificateAuthority.create(ca_dir, trust_domain=trust_domain, key_type=DEFAULT_KEY_TYPE, now=now)
    return ca, True


def serving_material_issuer(ca: CertificateAuthority, *, root_namespace: str) -> Callable[[datetime], ServingMaterial]:
    """Return a function that issues a fresh serving certificate for the control plane at `now`."""
    identity = control_plane_spiffe_id(ca.trust_domain, root_namespace)
    dns_names = control_plane_dns_names(root_namespace)

    def issue(now: datetime) -> ServingMaterial:
        issued, key_pem = ca.issue(identity, ttl=SERVING_CERTIFICATE_TTL, now=now, dns_names=dns_names)
        roots = "".join(certificate_to_pem(root) for root in ca.trust_bundle().roots)
        return ServingMaterial(
            chain_pem="".join(issued.cert_chain_pem).encode(),
            key_pem=key_pem,
            roots_pem=roots.encode(),
            spiffe_id=issued.spiffe_id,
            serial=issued.serial,
            not_before=issued.not_before,
            not_after=issued.not_after,
        )

    return issue


class ControlPlane:
    """The running control plane: gRPC server, admin server and background tasks."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        grpc: GrpcServer,
        admin: AdminServer,
        credentials: ServingCredentials,
        issue_serving_material: Callable[[datetime], ServingMaterial],
        clock: Clock,
        shutdown_grace_seconds: float,
        mesh: MeshRuntime | None = None,
        cache: SnapshotCache | None = None,
        ads: AggregatedDiscoveryServer | None = None,
        kubernetes: KubernetesMode | None = None,
    ) -> None:
        self.ca = ca
        self.grpc = grpc
        self.admin = admin
        self.mesh = mesh
        self.cache = cache
        self.ads = ads
        self.kubernetes = kubernetes
        self.credentials = credentials
        self._issue_serving_material = issue_serving_material
        self._clock = clock
        self._grace = shutdown_grace_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    async def start(self) -> None:
        if self.mesh is not None:
            await self.mesh.start()
        await self.grpc.start()
        renewal = asyncio.create_task(
            keep_serving_certificate_fresh(self.credentials, self._issue_serving_material, clock=self._clock),
            name="serving-certificate-renewal",
        )
        renewal.add_done_callback(_log_task_failure)
        self._tasks.append(renewal)
        if self.kubernetes is not None:
            await self.kubernetes.start()
        await self.admin.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.kubernetes is not None:
            # Before the gRPC grace period, so another replica takes over the leader's duties during it.
            await self.kubernetes.stop()
        await self.grpc.stop(self._grace)
        if self.mesh is not None:
            await self.mesh.stop()
        if self.cache is not None:
            await self.cache.close()
        await self.admin.stop()

    def ready(self) -> bool | str:
        """Report readiness of the CA and gRPC serving: started, and the serving certificate valid."""
        if not self._started:
            return "the gRPC server is not started"
        if self._clock() >= self.credentials.material.not_after:
            return "the serving certificate expired and renewal keeps failing"
        return True


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("server.task.failed", task=task.get_name(), error=repr(task.exception()))


def kubernetes_mode_for(options: ServeOptions, *, clock: Clock) -> KubernetesMode | None:
    """Return the Kubernetes-mode parts for `--source kubernetes`, not started, or None for other sources."""
    if options.source != "kubernetes":
        return None
    # Imported here so that other sources start without loading the Kubernetes client.
    from controlplane.server.kubernetes_mode import KubernetesMode

    return KubernetesMode.from_options(options, clock=clock)


def build_control_plane(
    options: ServeOptions,
    ca: CertificateAuthority,
    *,
    clock: Clock,
    kubernetes: KubernetesMode | None = None,
) -> ControlPlane:
    """Wire the parts of the control plane together without starting anything.

    With `--source kubernetes`, pass the `KubernetesMode` that loaded the CA from its Secret,
    or None to have one made here (a CA from `--ca-dir`).
    """
    if kubernetes is None:
        kubernetes = kubernetes_mode_for(options, clock=clock)
    ca_files = options.ca_dir if options.ca_dir is not None else kubernetes.ca_directory if kubernetes else None
    if ca_files is None:
        raise ConfigError(f"the CA Secret {options.ca_secret!r} is not loaded; call KubernetesMode.load_ca first",
                          ca_secret=options.ca_secret)
    issue = serving_material_issuer(ca, root_namespace=options.root_namespace)
    credentials = ServingCredentials(issue(clock()))
    grpc_server = GrpcServer(
        credentials,
        mtls_address=options.grpc_address,
        bootstrap_address=options.bootstrap_address,
    )
    admin_host, admin_port = split_address(options.admin_address)
    admin = AdminServer(host=admin_host, port=admin_port)

    join_tokens = JoinTokenIssuer(load_join_token_key(ca_files), trust_domain=ca.trust_domain)
    attestors: list[Attestor] = [JoinTokenAttestor(join_tokens), PeerSvidAttestor(ca.trust_domain)]
    if kubernetes is None:
        attestor = FirstCredentialAttestor(attestors)
    else:
        # ServiceAccount tokens are JWTs, and this attestor leaves other bearer tokens to the next.
        attestor = FirstCredentialAttestor([kubernetes.token_attestor(ca.trust_domain), *attestors],
                                           missing_message=MISSING_SERVICE_ACCOUNT_TOKEN)
    grpc_server.add_service(
        ca_pb2_grpc.add_CertificateServiceServicer_to_server,
        CertificateServicer(ca, attestor, clock=clock),
    )
    mesh, cache, ads = _build_mesh(options, ca, grpc_server, admin, kubernetes=kubernetes)
    if kubernetes is not None:
        kubernetes.attach(options, ca=ca, mesh=mesh)

    control_plane = ControlPlane(
        ca=ca,
        grpc=grpc_server,
        admin=admin,
        credentials=credentials,
        issue_serving_material=issue,
        clock=clock,
        shutdown_grace_seconds=options.shutdown_grace_seconds,
        mesh=mesh,
        cache=cache,
        ads=ads,
        kubernetes=kubernetes,
    )
    admin.add_readiness_check("ca", control_plane.ready)
    return control_plane


def _build_mesh(
    options: ServeOptions,
    ca: CertificateAuthority,
    grpc_server: GrpcServer,
    admin: AdminServer,
    *,
    kubernetes: KubernetesMode | None = None,
) -> tuple[MeshRuntime, SnapshotCache, AggregatedDiscoveryServer]:
    """Wire source -> model -> translator -> snapshot cache -> ADS, and their admin routes."""
    source = SourceSpec.parse(options.source)
    local_addresses = load_local_addresses(options.local_addresses) if options.local_addresses else None
    kubernetes_configuration = kubernetes.configuration if kubernetes is not None else None

    def trust_bundle_pem() -> bytes:
        return ca.trust_bundle().to_pem().encode()

    cache = SnapshotCache(
        translate,
        trust_bundle=trust_bundle_pem,
        debounce=DebounceSettings(quiet=options.push_debounce_seconds, max_delay=options.push_max_delay_seconds),
    )
    ads = AggregatedDiscoveryServer(cache, metrics=shared_xds_metrics())
    grpc_server.add_service(ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server, ads)
    base_config = MeshConfig(trust_domain=ca.trust_domain, root_namespace=options.root_namespace)

    def publish(state: MeshState) -> None:
        cache.update(state)
        if kubernetes is not None:
            kubernetes.state_published(state)

    mesh = MeshRuntime(
        source,
        base_config=base_config,
        publish=publish,
        local_addresses=local_addresses,
        kubernetes_configuration=kubernetes_configuration,
    )
    admin.add_readiness_check("source", mesh.ready)
    register_debug_routes(admin, mesh=mesh, cache=cache, ads=ads, ca=ca)
    return mesh, cache, ads


async def run(
    options: ServeOptions, ca: CertificateAuthority | None, *, clock: Clock, announce: Callable[[str], None]
) -> None:
    """Run the control plane until SIGTERM or SIGINT, then shut down gracefully.

    `ca` is the CA from `--ca-dir`, or None with `--ca-secret`: then the CA is loaded from the
    Secret once this replica takes part in the leader election. `announce` receives a line
    when a CA is created in the Secret, and one line with the bound ports once everything listens.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    kubernetes = kubernetes_mode_for(options, clock=clock)
    control_plane: ControlPlane | None = None
    try:
        if ca is None:
            ca = await _load_ca_from_secret(options, kubernetes, stop=stop, announce=announce)
        if ca is None:
            return
        control_plane = build_control_plane(options, ca, clock=clock, kubernetes=kubernetes)
        await control_plane.start()
        line = (
            f"serving: grpc-mtls port {control_plane.grpc.mtls_port}, "
            f"grpc-bootstrap port {control_plane.grpc.bootstrap_port}, admin port {control_plane.admin.port}"
        )
        if kubernetes is not None and kubernetes.webhook is not None:
            line += f", webhook port {kubernetes.webhook.port}"
        announce(line)
        await stop.wait()
        log.info("server.shutdown.started")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if control_plane is not None:
            await control_plane.stop()
        elif kubernetes is not None:
            await kubernetes.stop()
    log.info("server.shutdown.complete")


async def _load_ca_from_secret(
    options: ServeOptions, kubernetes: KubernetesMode | None, *, stop: asyncio.Event, announce: Callable[[str], None]
) -> CertificateAuthority | None:
    """Load the CA from `--ca-secret`, or return None if `stop` is set first.

    A replica waits here until the leader has created the Secret.
    """
    if kubernetes is None or options.ca_secret is None:
        raise ConfigError("--ca-secret needs --source kubernetes", source=options.source)
    loading = asyncio.create_task(kubernetes.load_ca(secret_name=options.ca_secret, trust_domain=options.trust_domain))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not loading.done():
            loading.cancel()
        await asyncio.gather(loading, stopping, return_exceptions=True)
    if loading.cancelled():
        return None
    ca = loading.result()
    if kubernetes.created_ca:
        secret = f"{options.root_namespace}/{options.ca_secret}"
        announce(f"created a new CA for trust domain {ca.trust_domain} in Secret {secret}")
    return ca
