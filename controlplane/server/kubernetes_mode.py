"""The parts `controlplane serve --source kubernetes` adds around the control plane.

Every replica:

- attests workloads with their projected ServiceAccount tokens (`token_attestor`), checked by a
  TokenReview, before join tokens and SVIDs;
- with `--ca-secret`, loads the CA from a Secret in the root namespace (`load_ca`). The leader
  creates the Secret when it is missing, and the other replicas wait for it;
- with `--webhook-address`, serves the sidecar injection webhook (`WebhookServer`) with a
  certificate from the mesh CA, and reads namespace labels from the configuration source.

The replica that holds the Lease `idmesh-controlplane` also runs the singleton duties: the
ConfigMap `idmesh-root-cert` in every namespace, the `Accepted` condition of every policy,
evaluated again after each rebuild of the mesh state, and with `--webhook-address` the
`caBundle` of the MutatingWebhookConfiguration `idmesh-sidecar-injector`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes.client

from controlplane.errors import ConfigError, KubernetesApiError, MeshError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.k8s_attestor import KubernetesTokenAttestor
from controlplane.identity.k8s_store import LoadedCA, SecretCAStore, obtain_ca
from controlplane.identity.pemfiles import write_secret_file
from controlplane.identity.svid import format_serial
from controlplane.injector.settings import InjectionSettings
from controlplane.injector.webhook import InjectorWebhook, server_ssl_context
from controlplane.injector.webhook_config import WEBHOOK_CONFIGURATION_NAME
from controlplane.kube.leader import ElectionSettings, LeaderElector, holder_identity, run_while_leading
from controlplane.kube.policy_status import PolicyKey, PolicyStatusWriter, is_policy, policy_key
from controlplane.kube.root_configmap import NAMESPACES, RootCertPublisher
from controlplane.kube.webhook_ca_bundle import WebhookCABundleUpdater
from controlplane.log import get_logger
from controlplane.model.policy import parse_authorization_policy
from controlplane.model.types import MeshConfig, MeshState
from controlplane.server.addresses import split_address
from controlplane.server.tls import RENEWAL_RETRY, control_plane_dns_names, control_plane_spiffe_id
from controlplane.sources.kubernetes import WatchSettings, load_client_configuration
from controlplane.translate import rbac
from controlplane.translate.validate import regex_problems

if TYPE_CHECKING:
    from controlplane.server.mesh import MeshRuntime
    from controlplane.server.serve import ServeOptions

log = get_logger("server.kubernetes")

# The webhook certificate is renewed half-way through this lifetime, in memory.
WEBHOOK_CERTIFICATE_TTL = timedelta(hours=12)
# How often the leader compares the CA's trust bundle with the one it publishes, in seconds.
BUNDLE_CHECK_SECONDS = 30.0
# Any port number works: an AuthorizationPolicy translates the same way on every HTTP port.
_POLICY_CHECK_PORT = 80


def pod_name() -> str:
    """Return this replica's pod name: `POD_NAME` (set from the downward API), else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def webhook_dns_names(root_namespace: str) -> tuple[str, ...]:
    """Return the DNS names of the webhook certificate: the control plane Service's names.

    The API server calls a webhook Service at `<service>.<namespace>.svc`. The longer name
    assumes the cluster domain `cluster.local`.
    """
    service = control_plane_dns_names(root_namespace)[0]
    return (service, f"{service}.cluster.local")


def namespace_labels(source: Any, namespace: str) -> Mapping[str, str] | None:
    """Return the labels of `namespace` from a `KubernetesSource` store, or None if it is not known."""
    if source is None:
        return None
    obj = source.get((NAMESPACES.type_name, "", namespace))
    if obj is None:
        return None
    return dict((obj.get("metadata") or {}).get("labels") or {})


def policy_translation_errors(objects: Iterable[Mapping[str, Any]], *, config: MeshConfig) -> dict[PolicyKey, str]:
    """Return why each valid AuthorizationPolicy in `objects` cannot become Envoy RBAC, by policy key.

    A policy is translated on its own, so the result does not depend on which workloads it
    selects. Invalid policies are left out, because the status writer reports their validation
    errors itself. NOTE: PeerAuthentication gets only its validation errors checked.
    """
    errors: dict[PolicyKey, str] = {}
    for obj in objects:
        if not is_policy(obj) or obj.get("kind") != "AuthorizationPolicy":
            continue
        policy, _ = parse_authorization_policy(obj, root_namespace=config.root_namespace)
        if policy is None or policy.error:
            continue
        result = rbac.translate_http_rbac((policy,), port=_POLICY_CHECK_PORT, config=config)
        problems = [str(problem) for problem in result.problems]
        for item in result.filters:
            for path, pattern, reason in regex_problems(item):
                problems.append(
                    f"{policy.ref}: regular expression {pattern!r} at {path} is rejected by RE2 ({reason}); "
                    "HTTP ports of the workloads it selects deny every request until it is fixed"
                )
        if problems:
            errors[policy_key(obj)] = "; ".join(problems)
    return errors


class WebhookServer:
    """The injection webhook, serving a certificate that the mesh CA issues and renews in memory."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        root_namespace: str,
        settings: InjectionSettings,
        labels_of: Callable[[str], Mapping[str, str] | None],
        address: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._ca = ca
        self._identity = control_plane_spiffe_id(ca.trust_domain, root_namespace)
        self._dns_names = webhook_dns_names(root_namespace)
        self._settings = settings
        self._labels_of = labels_of
        self._host, self._port = split_address(address)
        self._clock = clock
        self._webhook: InjectorWebhook | None = None
        self._renewal: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Issue the serving certificate, start serving, and return the bound port."""
        context, renew_at = self._load_certificate(None)
        webhook = InjectorWebhook(settings=self._settings, namespace_labels=self._labels_of,
                                  ssl_context=context, host=self._host, port=self._port)
        try:
            self.port = await webhook.start()
        except OSError as exc:
            await webhook.stop()
            address = f"{self._host}:{self._port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"cannot listen on {address} for the webhook: {reason}", address=address) from exc
        self._webhook = webhook
        self._renewal = asyncio.create_task(self._renew_forever(context, renew_at), name="webhook-certificate-renewal")
        return self.port

    async def stop(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
            self._renewal = None
        if self._webhook is not None:
            await self._webhook.stop()
            self._webhook = None

    def _load_certificate(self, context: ssl.SSLContext | None) -> tuple[ssl.SSLContext, datetime]:
        """Issue a certificate and load it into `context` (a new one if None); return it and its renewal time."""
        now = self._clock()
        issued, key_pem = self._ca.issue(self._identity, ttl=WEBHOOK_CERTIFICATE_TTL, now=now,
                                         dns_names=self._dns_names)
        # ssl loads keys only from files, so the key exists on disk (mode 0600, in a private
        # directory) only until it is loaded, and the context keeps it in memory.
        with tempfile.TemporaryDirectory(prefix="idmesh-webhook-") as directory:
            cert_file, key_file = Path(directory) / "tls.crt", Path(directory) / "tls.key"
            write_secret_file(key_file, key_pem)
            write_secret_file(cert_file, "".join(issued.cert_chain_pem).encode())
            if context is None:
                context = server_ssl_context(cert_file, key_file)
            else:
                # Replaces the certificate for new connections; open ones keep the old one.
                context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
        log.info("injector.certificate.loaded", serial=format_serial(issued.serial),
                 not_after=issued.not_after.isoformat())
        return context, issued.not_before + (issued.not_after - issued.not_before) / 2

    async def _renew_forever(self, context: ssl.SSLContext, renew_at: datetime) -> None:
        while True:
            await asyncio.sleep(max((renew_at - self._clock()).total_seconds(), 0.0))
            try:
                _, renew_at = self._load_certificate(context)
            except MeshError as exc:
                # The current certificate keeps serving until it expires, so retry meanwhile.
                log.error("injector.certificate.renewal_failed", error=str(exc))
                renew_at = self._clock() + RENEWAL_RETRY


class KubernetesMode:
    """Leader election, the CA Secret, the leader's duties and the webhook of one replica."""

    def __init__(
        self,
        *,
        configuration: kubernetes.client.Configuration,
        root_namespace: str,
        clock: Callable[[], datetime],
        identity: str | None = None,
        election: ElectionSettings | None = None,
        watch_settings: WatchSettings | None = None,
        bundle_check_seconds: float = BUNDLE_CHECK_SECONDS,
    ) -> None:
        self.configuration = configuration
        self.root_namespace = root_namespace
        self.api_client = kubernetes.client.ApiClient(configuration)
        self.elector = LeaderElector(self.api_client, namespace=root_namespace,
                                     identity=identity or holder_identity(pod_name()), settings=election, clock=clock)
        self.webhook: WebhookServer | None = None
        self._clock = clock
        self._watch_settings = watch_settings
        self._bundle_check_seconds = bundle_check_seconds
        self._loaded_ca: LoadedCA | None = None
        self._ca: CertificateAuthority | None = None
        self._mesh: MeshRuntime | None = None
        self._election: asyncio.Task[None] | None = None
        self._duties: asyncio.Task[None] | None = None
        self._rebuilt = asyncio.Event()
        self._stopped = False

    @classmethod
    def from_options(cls, options: ServeOptions, *, clock: Callable[[], datetime]) -> KubernetesMode:
        """Connect with the kubeconfig, context or in-cluster settings that `options` give."""
        # The client splits the kubeconfig argument on ':' like $KUBECONFIG, so it must be a str.
        kubeconfig = str(options.kubeconfig) if options.kubeconfig is not None else None
        configuration = load_client_configuration(kubeconfig=kubeconfig, context=options.kube_context)
        return cls(configuration=configuration, root_namespace=options.root_namespace, clock=clock)

    @property
    def ca_directory(self) -> Path | None:
        """The private directory with the files of the CA loaded from the Secret, or None."""
        return self._loaded_ca.directory if self._loaded_ca is not None else None

    @property
    def created_ca(self) -> bool:
        """Whether `load_ca` created the CA Secret, rather than loading one that existed."""
        return self._loaded_ca is not None and self._loaded_ca.created

    def token_attestor(self, trust_domain: str) -> KubernetesTokenAttestor:
        return KubernetesTokenAttestor(self.api_client, trust_domain=trust_domain)

    async def start_election(self) -> None:
        """Take part in the leader election from now on; calling it again does nothing."""
        if self._election is None:
            self._election = asyncio.create_task(self.elector.run(), name="leader-election")
            self._election.add_done_callback(_log_task_failure)

    async def load_ca(self, *, secret_name: str, trust_domain: str) -> CertificateAuthority:
        """Load the CA from Secret `secret_name`; the leader creates it, and other replicas wait for it."""
        await self.start_election()
        store = SecretCAStore(self.api_client, namespace=self.root_namespace, name=secret_name)

        async def poll_or_lead(seconds: float) -> None:
            # A replica waiting for the Secret looks again at once when it becomes the leader,
            # because then it is the one to create it.
            try:
                await asyncio.wait_for(self.elector.leading.wait(), seconds)
            except TimeoutError:
                pass

        self._loaded_ca = await obtain_ca(store, trust_domain=trust_domain, clock=self._clock,
                                          is_leader=lambda: self.elector.is_leader, sleep=poll_or_lead)
        return self._loaded_ca.ca

    def attach(self, options: ServeOptions, *, ca: CertificateAuthority, mesh: MeshRuntime) -> None:
        """Give the duties the CA whose bundle they publish and the MeshRuntime they follow; set up the webhook."""
        self._ca = ca
        self._mesh = mesh
        if options.webhook_address is not None:
            self.webhook = WebhookServer(
                ca=ca,
                root_namespace=options.root_namespace,
                settings=options.injection_settings(ca.trust_domain),
                labels_of=lambda namespace: namespace_labels(mesh.kubernetes_source, namespace),
                address=options.webhook_address,
                clock=self._clock,
            )

    def state_published(self, _state: MeshState) -> None:
        """Note that the MeshRuntime rebuilt its state, so the leader evaluates the policies again."""
        self._rebuilt.set()

    async def start(self) -> None:
        """Start the election if it is not running, the duties that follow it, and the webhook."""
        await self.start_election()
        self._duties = asyncio.create_task(run_while_leading(self.elector, self._lead), name="leader-duties")
        self._duties.add_done_callback(_log_task_failure)
        if self.webhook is not None:
            await self.webhook.start()

    async def stop(self) -> None:
        """Stop the duties, the webhook and the election, and release the Lease if this replica holds it.

        Calling it again does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        tasks = [task for task in (self._duties, self._election) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._duties = self._election = None
        if self.webhook is not None:
            await self.webhook.stop()
        try:
            await self.elector.release()
        except KubernetesApiError as exc:
            log.warning("leader.release.failed", lease=self.elector.name, error=exc.message)
        self.api_client.close()
        if self._loaded_ca is not None:
            self._loaded_ca.close()

    # ----- the leader's duties ------------------------------------------------------------

    async def _lead(self) -> None:
        if self._ca is None or self._mesh is None:
            raise RuntimeError("KubernetesMode.attach() must be called before start()")
        publisher = RootCertPublisher(self.configuration, bundle_pem=self._ca.trust_bundle().to_pem(),
                                      settings=self._watch_settings)
        # A new leader evaluates every policy once, even before the next rebuild.
        self._rebuilt.set()
        async with asyncio.TaskGroup() as duties:
            duties.create_task(publisher.run(), name="root-cert-publisher")
            duties.create_task(self._follow_bundle(publisher), name="root-cert-bundle")
            if self.webhook is not None:
                ca = self._ca
                updater = WebhookCABundleUpdater(self.configuration, name=WEBHOOK_CONFIGURATION_NAME,
                                                 bundle_pem=lambda: ca.trust_bundle().to_pem(),
                                                 bundle_check_seconds=self._bundle_check_seconds)
                duties.create_task(updater.run(), name="webhook-ca-bundle")
            duties.create_task(self._write_policy_status(), name="policy-status")

    async def _follow_bundle(self, publisher: RootCertPublisher) -> None:
        assert self._ca is not None
        while True:
            await asyncio.sleep(self._bundle_check_seconds)
            publisher.set_bundle(self._ca.trust_bundle().to_pem())

    async def _write_policy_status(self) -> None:
        assert self._mesh is not None
        writer = PolicyStatusWriter(self.api_client, root_namespace=self.root_namespace,
                                    is_leader=lambda: self.elector.is_leader, clock=self._clock)
        while True:
            await self._rebuilt.wait()
            self._rebuilt.clear()
            source = self._mesh.kubernetes_source
            if source is None or not source.ready.is_set():
                continue
            # NOTE: objects() copies the whole store, which costs the leader one more copy per rebuild.
            policies = [obj for obj in source.objects() if is_policy(obj)]
            config = self._mesh.state.config
            errors = await asyncio.to_thread(policy_translation_errors, policies, config=config)
            await asyncio.to_thread(writer.sync, policies, translation_errors=errors)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("kubernetes_mode.task.failed", task=task.get_name(), error=repr(task.exception()))
