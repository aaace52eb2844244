"""The mesh-agent: get an SVID, serve it over SDS, keep it fresh, and run Envoy next to it.

Start-up order matters to Envoy: the SDS socket is served and holds the first SVID before the
bootstrap is written and Envoy starts, so Envoy's first secret requests are answered at once.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal, Mapping

from controlplane.agent.bootstrap import BootstrapParams, bootstrap_json, build_bootstrap, node_id
from controlplane.agent.ca_client import CAClient, RetryPolicy, split_host_port
from controlplane.agent.credentials import Svid
from controlplane.agent.envoy_process import EnvoyOptions, EnvoySupervisor
from controlplane.agent.errors import AgentError, CAClientError
from controlplane.agent.health import HealthServer, envoy_is_live, svid_status
from controlplane.agent.rotation import backoff_delay, next_renewal, renewal_delay
from controlplane.agent.sds_server import SdsServer
from controlplane.agent.sds_state import SecretSet
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.log import get_logger

log = get_logger("agent")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs; `cli.parse_config` builds it from flags and environment."""

    control_plane: str
    control_plane_bootstrap: str
    control_plane_id: SpiffeId
    control_plane_name: str
    ca_root: Path
    token_file: Path | None
    token_env: str | None
    namespace: str
    service_account: str
    workload: str
    trust_domain: str
    instance_ip: str
    mode: Literal["local", "kubernetes"]
    app_address: str
    labels: Mapping[str, str]
    sds_socket: Path
    bootstrap_out: Path
    envoy_admin_address: str
    health_address: str
    ttl_seconds: int
    ads_type: Literal["grpc", "delta"]
    envoy_log_level: str
    run_envoy: bool = True
    renewal_jitter: float = 0.1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    envoy_binary: str = ""

    @property
    def spiffe_id(self) -> SpiffeId:
        return SpiffeId.for_workload(self.trust_domain, self.namespace, self.service_account)

    def read_token(self) -> str | None:
        """Read the bearer token now: Kubernetes rewrites projected tokens before they expire."""
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError as exc:
                log.warning("agent.token.unreadable", path=str(self.token_file), error=str(exc))
                return None
        if self.token_env:
            return os.environ.get(self.token_env, "").strip() or None
        return None


def _read_root(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentError(f"cannot read the CA root file {str(path)!r}: {exc.strerror}", path=str(path)) from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise AgentError(f"the CA root file {str(path)!r} contains no PEM certificate", path=str(path))
    return data


class Agent:
    """Runs the SDS server, the renewal loop, the health endpoint and (optionally) Envoy."""

    def __init__(self, config: AgentConfig, *, clock: Clock = utc_now, rng: random.Random | None = None) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self.sds = SdsServer(config.sds_socket)
        root_pem = _read_root(config.ca_root)
        self.ca = CAClient(
            address=config.control_plane_bootstrap,
            root_pem=root_pem,
            server_id=config.control_plane_id,
            server_name=config.control_plane_name,
            token_source=config.read_token,
            ttl_seconds=config.ttl_seconds,
            retry=config.retry,
            rng=self._rng,
        )
        self.renewal_ca = CAClient(
            address=config.control_plane,
            root_pem=root_pem,
            server_id=config.control_plane_id,
            server_name=config.control_plane_name,
            token_source=lambda: None,
            ttl_seconds=config.ttl_seconds,
            retry=config.retry,
            rng=self._rng,
        )
        self.health = HealthServer(config.health_address, self.status)
        self.envoy: EnvoySupervisor | None = None
        self.svid: Svid | None = None
        # When the current SVID arrived. The CA backdates NotBefore for clock skew, so counting
        # the lifetime from NotBefore would make short-lived certificates due at once.
        self.received_at: datetime | None = None
        self.renewals = 0
        self._version = 0
        # Wakes the rotation loop: to renew when `_force_renewal` is set, else to reschedule.
        self._wake = asyncio.Event()
        self._force_renewal = False
        self._rotation_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve SDS, fetch the first SVID, write the bootstrap, start Envoy and health."""
        await self.sds.start()
        await self.health.start()
        self._install(await self._first_svid())
        self.write_bootstrap()
        if self.config.run_envoy:
            self.envoy = EnvoySupervisor(
                EnvoyOptions(bootstrap_path=self.config.bootstrap_out, log_level=self.config.envoy_log_level,
                             binary=self.config.envoy_binary),
                rng=self._rng,
            )
            self.envoy.start()
        self._rotation_task = asyncio.create_task(self._rotate_forever(), name="svid-rotation")

    async def stop(self) -> None:
        """Stop Envoy first (it must not lose its SDS server mid-drain), then the agent's servers."""
        if self._rotation_task is not None:
            self._rotation_task.cancel()
            await asyncio.gather(self._rotation_task, return_exceptions=True)
        if self.envoy is not None:
            await self.envoy.stop()
        await self.health.stop()
        await self.sds.stop()
        log.info("agent.stopped")

    async def _first_svid(self) -> Svid:
        attempt = 0
        while True:
            try:
                return await self.ca.issue(self.config.spiffe_id)
            except CAClientError as exc:
                if not exc.retryable:
                    raise
                delay = backoff_delay(attempt, base=self.config.retry.base, cap=self.config.retry.cap, rng=self._rng)
                attempt += 1
                log.error("agent.svid.unavailable", target=exc.target, error=str(exc), retry_in_seconds=round(delay, 3))
                await asyncio.sleep(delay)

    def _install(self, svid: Svid) -> None:
        previous = self.svid
        self.svid = svid
        self.received_at = self._clock()
        self._version += 1
        bundle = svid.bundle_pem()
        self.ca.trust_bundle(bundle)
        self.renewal_ca.trust_bundle(bundle)
        if previous is not None and previous.bundle_pem() != bundle:
            log.info("agent.trust_bundle.changed", roots=len(svid.trust_bundle))
        self.sds.update(SecretSet.from_svid(svid, version=str(self._version)))
        event = "agent.svid.renewed" if previous is not None else "agent.svid.issued"
        log.info(event, principal=str(svid.spiffe_id), serial=svid.serial, not_after=svid.not_after.isoformat())

    async def renew_now(self) -> Svid:
        """Renew at once and return the new SVID (also pushed to Envoy)."""
        svid = await self._renew()
        self._install(svid)
        self.renewals += 1
        self._wake.set()
        return svid

    async def _renew(self) -> Svid:
        current = self.svid
        if current is not None and current.not_after > self._clock():
            try:
                return await self.renewal_ca.issue(self.config.spiffe_id, current)
            except CAClientError as exc:
                if self.config.read_token() is None:
                    raise
                log.warning("agent.svid.renewal_fallback", error=str(exc), reason="renewal with the SVID failed")
        return await self.ca.issue(self.config.spiffe_id)

    async def _rotate_forever(self) -> None:
        attempt = 0
        while True:
            assert self.svid is not None
            if attempt == 0:
                start = max(self.svid.not_before, self.received_at or self.svid.not_before)
                renew_at = next_renewal(start, self.svid.not_after,
                                        jitter=self.config.renewal_jitter, rng=self._rng)
                delay = renewal_delay(renew_at, self._clock())
            else:
                delay = backoff_delay(attempt - 1, base=self.config.retry.base, cap=self.config.retry.cap, rng=self._rng)
            log.debug("agent.svid.renewal_scheduled", in_seconds=round(delay, 3))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                self._force_renewal = True
            if not self._force_renewal:
                attempt = 0  # someone else renewed: schedule from the new SVID
                continue
            self._force_renewal = False
            try:
                await self.renew_now()
                attempt = 0
            except CAClientError as exc:
                attempt += 1
                log.error("agent.svid.renewal_failed", error=str(exc), attempt=attempt,
                          not_after=self.svid.not_after.isoformat())

    def request_renewal(self) -> None:
        """Make the rotation loop renew now instead of at the scheduled time."""
        self._force_renewal = True
        self._wake.set()

    def bootstrap_params(self) -> BootstrapParams:
        cfg = self.config
        host, port = split_host_port(cfg.control_plane)
        return BootstrapParams(
            node_id=node_id(instance_ip=cfg.instance_ip, workload=cfg.workload, namespace=cfg.namespace),
            namespace=cfg.namespace, service_account=cfg.service_account, workload=cfg.workload,
            instance_ip=cfg.instance_ip, mode=cfg.mode, app_address=cfg.app_address,
            control_plane_host=host, control_plane_port=port, control_plane_id=str(cfg.control_plane_id),
            control_plane_sni=cfg.control_plane_name, sds_socket=str(cfg.sds_socket.resolve()),
            admin_host=split_host_port(cfg.envoy_admin_address)[0],
            admin_port=split_host_port(cfg.envoy_admin_address)[1],
            labels=dict(cfg.labels), ads_type=cfg.ads_type,
        )

    def write_bootstrap(self) -> None:
        path = self.config.bootstrap_out
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(bootstrap_json(build_bootstrap(self.bootstrap_params())))
        tmp.replace(path)
        log.info("agent.bootstrap.written", path=str(path))

    async def status(self) -> dict:
        """Return the health document: readiness, the SVID's public facts and Envoy's state."""
        svid = svid_status(self.svid, now=self._clock())
        envoy: dict = {"managed": self.envoy is not None}
        envoy_ok = True
        if self.config.run_envoy:
            envoy_ok = await envoy_is_live(self.config.envoy_admin_address)
            envoy["live"] = envoy_ok
            if self.envoy is not None:
                envoy.update(pid=self.envoy.pid, restarts=self.envoy.restarts)
        return {
            "ready": bool(svid.get("held")) and envoy_ok,
            "svid": svid,
            "envoy": envoy,
            "renewals": self.renewals,
            "sds_streams": self.sds.servicer.stream_count,
        }
