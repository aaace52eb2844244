"""Child processes of a local mesh: started with logs in files, stopped as a group.

Each child runs in its own session so that Ctrl-C in the terminal reaches only `meshctl`, which
then stops the children in reverse start order: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from controlplane.errors import MeshError
from controlplane.log import get_logger

log = get_logger("local.processes")

STOP_TIMEOUT_SECONDS = 10.0


class ProcessError(MeshError):
    """A child process of the local mesh failed to start or exited early."""


@dataclass
class Child:
    name: str
    argv: tuple[str, ...]
    log_path: Path
    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ProcessGroup:
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    async def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Child:
        """Start `argv` with stdout and stderr in `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name.replace('/', '_')}.log"
        with open(log_path, "ab") as log_file:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, **(env or {})},
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {name}: {exc}", child=name) from exc
        child = Child(name=name, argv=tuple(argv), log_path=log_path, process=process)
        self.children.append(child)
        log.debug("local.process.started", child=name, pid=process.pid)
        return child

    async def restart(self, name: str, *, kill: bool = False) -> Child:
        """Stop the child called `name` (SIGKILL with `kill`, else gracefully) and start it again."""
        child = next((c for c in self.children if c.name == name), None)
        if child is None:
            raise ProcessError(f"no child process named {name!r}", child=name)
        if kill and child.running():
            os.killpg(child.pid, signal.SIGKILL)
            await child.process.wait()
        else:
            await _stop_child(child)
        self.children.remove(child)
        return await self.start(name, child.argv)

    def exited(self) -> list[Child]:
        """Children that have stopped on their own."""
        return [child for child in self.children if not child.running()]

    async def stop(self) -> None:
        """Stop every child, newest first."""
        for child in reversed(self.children):
            await _stop_child(child)
        self.children.clear()


async def _stop_child(child: Child) -> None:
    if not child.running():
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        await asyncio.wait_for(child.process.wait(), timeout=STOP_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("local.process.killed", child=child.name, pid=child.pid, after_seconds=STOP_TIMEOUT_SECONDS)
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        await child.process.wait()
