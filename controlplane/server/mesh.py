"""The path from a configuration source to the sidecars: objects -> MeshState -> xDS cache.

A source (a folder of YAML or the Kubernetes API) reports that its objects changed. The runtime
then parses the whole set into a fresh `MeshState` and hands it to the snapshot cache, which
debounces and pushes only what changed. Parsing the whole set is simple and cannot drift from the source;
change bursts are coalesced so a flood of watch events costs one parse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from controlplane.errors import ConfigError, SourceError
from controlplane.log import get_logger
from controlplane.model.endpoints import endpoints_from_selectors
from controlplane.model.parse import parse_objects
from controlplane.model.types import MeshConfig, MeshState

log = get_logger("server.mesh")

# Quiet period before re-parsing after a change notification, in seconds. The xDS cache adds
# its own debounce before translating, so this only needs to absorb a burst of watch events.
PARSE_COALESCE_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Configuration source: `files:DIR`, `kubernetes`, or `none`."""

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        if text == "none":
            return cls("none")
        if text == "kubernetes":
            return cls("kubernetes")
        if text.startswith("files:") and len(text) > len("files:"):
            return cls("files", Path(text[len("files:"):]))
        raise ConfigError(
            f"invalid source {text!r}; use files:DIR, kubernetes or none",
            value=text,
        )


def load_local_addresses(path: Path) -> dict[str, str]:
    """Read a `namespace/name -> address` JSON map written by `meshctl up`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read local addresses from {path}: {exc}", path=str(path)) from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: expected a JSON object mapping namespace/name to an IP address", path=str(path))
    return data


def with_local_addresses(state: MeshState, addresses: Mapping[str, str]) -> MeshState:
    """Give workloads their local-mode addresses and derive endpoints from service selectors."""
    workloads = tuple(
        dataclasses.replace(w, ip=addresses.get(f"{w.namespace}/{w.name}", w.ip)) for w in state.workloads
    )
    placed = dataclasses.replace(state, workloads=workloads)
    return dataclasses.replace(placed, endpoints=endpoints_from_selectors(placed))


class MeshRuntime:
    """Keeps `state` current from a source and feeds every new state to `publish`."""

    def __init__(
        self,
        source: SourceSpec,
        *,
        base_config: MeshConfig,
        publish: Callable[[MeshState], None],
        local_addresses: Mapping[str, str] | None = None,
        kubernetes_configuration: Any = None,
    ) -> None:
        self.source = source
        self._base_config = base_config
        self._publish = publish
        self._local_addresses = dict(local_addresses or {})
        self._kubernetes_configuration = kubernetes_configuration
        self.state = MeshState(config=base_config)
        self.source_errors: tuple[Exception, ...] = ()
        self._ready = asyncio.Event()
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._kubernetes_source: Any = None

    # ----- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self.source.kind == "none":
            self._apply([], [])
            self._ready.set()
        elif self.source.kind == "files":
            from controlplane.sources.folder import FolderSource

            folder = FolderSource(self.source.path)
            self._tasks.append(asyncio.create_task(folder.run(self._on_folder, stop=self._stop), name="source-files"))
        elif self.source.kind == "kubernetes":
            from controlplane.sources.kubernetes import KubernetesSource

            self._kubernetes_source = KubernetesSource(
                self._kubernetes_configuration,
                root_namespace=self._base_config.root_namespace,
                on_change=lambda _change: self._dirty.set(),
            )
            await self._kubernetes_source.start()
            self._tasks.append(asyncio.create_task(self._follow_kubernetes(), name="source-kubernetes"))
        for task in self._tasks:
            task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._kubernetes_source is not None:
            await self._kubernetes_source.stop()

    @property
    def kubernetes_source(self) -> Any:
        """The running `KubernetesSource` with source `kubernetes` after `start()`, else None."""
        return self._kubernetes_source

    def ready(self) -> bool | str:
        """Ready once the source has delivered its first complete reading."""
        return True if self._ready.is_set() else f"waiting for the first reading of source {self.source.kind}"

    # ----- sources ------------------------------------------------------------------------

    def _on_folder(self, snapshot: Any) -> None:
        self._apply(snapshot.objects, snapshot.errors)
        self._ready.set()

    async def _follow_kubernetes(self) -> None:
        source = self._kubernetes_source
        await source.ready.wait()
        self._apply(source.objects(), [])
        self._ready.set()
        while not self._stop.is_set():
            await self._dirty.wait()
            await asyncio.sleep(PARSE_COALESCE_SECONDS)
            self._dirty.clear()
            self._apply(source.objects(), [])

    def _apply(self, objects: Sequence[dict], source_errors: Sequence[Exception]) -> None:
        state = parse_objects(objects, config=self._base_config)
        if state.config.trust_domain != self._base_config.trust_domain:
            log.error(
                "mesh.config.trust_domain_ignored",
                configured=state.config.trust_domain,
                ca_trust_domain=self._base_config.trust_domain,
                reason="the CA issues identities in its own trust domain; change it with a new CA",
            )
            state = dataclasses.replace(
                state, config=dataclasses.replace(state.config, trust_domain=self._base_config.trust_domain)
            )
        if self.source.kind == "files":
            state = with_local_addresses(state, self._local_addresses)
        for error in state.errors:
            log.warning("mesh.object.invalid", error=str(error))
        self.state = state
        self.source_errors = tuple(source_errors)
        log.info(
            "mesh.state.updated",
            workloads=len(state.workloads),
            services=len(state.services),
            policies=len(state.authorization_policies),
            errors=len(state.errors) + len(source_errors),
        )
        self._publish(state)

    # ----- admin --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Counts and problems of the current state, for the admin API."""
        state = self.state
        return {
            "source": self.source.kind if self.source.path is None else f"{self.source.kind}:{self.source.path}",
            "trust_domain": state.config.trust_domain,
            "root_namespace": state.config.root_namespace,
            "workloads": len(state.workloads),
            "services": len(state.services),
            "authorization_policies": len(state.authorization_policies),
            "peer_authentications": len(state.peer_authentications),
            "errors": [str(error) for error in (*self.source_errors, *state.errors)],
        }


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("mesh.source.failed", task=task.get_name(), error=repr(error))
        if isinstance(error, SourceError):
            log.error("mesh.source.stopped", reason=str(error))
