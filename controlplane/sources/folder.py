"""A configuration source that follows a folder of Kubernetes YAML.

The folder is read once at start and again after every change under it, as reported by
`watchfiles` (inotify on Linux). Each reload hands the whole set of objects to the consumer:
the folder is small, and a full reload cannot miss a rename or a partly written file the way an
event-by-event update can. Files that fail to parse are reported and skipped; a bad file never
stops the others from being served.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol, Sequence

import watchfiles

from controlplane.errors import SourceError
from controlplane.log import get_logger

log = get_logger("sources.folder")

YAML_SUFFIXES = (".yaml", ".yml", ".json")


class LoadResult(Protocol):
    objects: Sequence[dict]
    errors: Sequence[Exception]


@dataclass(frozen=True, slots=True)
class FolderSnapshot:
    """One consistent reading of the folder."""

    objects: tuple[dict, ...]
    errors: tuple[Exception, ...]
    generation: int


Loader = Callable[[Path], LoadResult]
Consumer = Callable[[FolderSnapshot], Awaitable[None] | None]


def _default_loader(path: Path) -> LoadResult:
    from controlplane.sources.files import load_folder

    return load_folder(path)


def _is_config_file(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(YAML_SUFFIXES) and not Path(path).name.startswith(".")


class FolderSource:
    """Reads `path` and calls `consumer` with a fresh snapshot after every change."""

    def __init__(self, path: Path, *, loader: Loader | None = None, debounce_ms: int = 50) -> None:
        if not path.is_dir():
            raise SourceError(f"configuration folder {str(path)!r} does not exist or is not a folder", path=str(path))
        self.path = path
        self._loader = loader or _default_loader
        self._debounce_ms = debounce_ms
        self._generation = 0
        self.ready = asyncio.Event()

    def load(self) -> FolderSnapshot:
        """Read the folder now."""
        result = self._loader(self.path)
        self._generation += 1
        for error in result.errors:
            log.warning("source.folder.file_skipped", path=str(self.path), error=str(error))
        return FolderSnapshot(tuple(result.objects), tuple(result.errors), self._generation)

    async def run(self, consumer: Consumer, *, stop: asyncio.Event | None = None) -> None:
        """Deliver the first snapshot, then one per batch of changes until `stop` is set."""
        stop = stop or asyncio.Event()
        await self._deliver(consumer)
        self.ready.set()
        async for changes in watchfiles.awatch(
            self.path,
            watch_filter=_is_config_file,
            stop_event=stop,
            debounce=self._debounce_ms,
            recursive=True,
        ):
            log.debug("source.folder.changed", files=sorted(path for _, path in changes))
            await self._deliver(consumer)

    async def _deliver(self, consumer: Consumer) -> None:
        snapshot = await asyncio.to_thread(self.load)
        log.info(
            "source.folder.loaded",
            path=str(self.path),
            generation=snapshot.generation,
            objects=len(snapshot.objects),
            errors=len(snapshot.errors),
        )
        outcome = consumer(snapshot)
        if asyncio.iscoroutine(outcome):
            await outcome
