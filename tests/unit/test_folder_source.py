"""A folder source delivers a snapshot at start and a fresh one after each change."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import watchfiles
import yaml

from controlplane.errors import SourceError
from controlplane.sources.folder import FolderSnapshot, FolderSource, _is_config_file


@dataclass
class Loaded:
    objects: list = field(default_factory=list)
    errors: list = field(default_factory=list)


def yaml_loader(path: Path) -> Loaded:
    loaded = Loaded()
    for file in sorted(path.glob("*.yaml")):
        try:
            loaded.objects += [doc for doc in yaml.safe_load_all(file.read_text()) if doc]
        except yaml.YAMLError as exc:
            loaded.errors.append(exc)
    return loaded


async def next_snapshot(queue: asyncio.Queue) -> FolderSnapshot:
    return await asyncio.wait_for(queue.get(), timeout=10)


async def test_edit_in_folder_delivers_new_snapshot(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: Namespace\nmetadata: {name: one}\n")
    queue: asyncio.Queue[FolderSnapshot] = asyncio.Queue()
    stop = asyncio.Event()
    source = FolderSource(tmp_path, loader=yaml_loader, debounce_ms=10)
    task = asyncio.create_task(source.run(queue.put, stop=stop))
    try:
        first = await next_snapshot(queue)
        assert [o["metadata"]["name"] for o in first.objects] == ["one"]
        await asyncio.wait_for(source.ready.wait(), timeout=5)

        (tmp_path / "b.yaml").write_text("kind: Namespace\nmetadata: {name: two}\n")
        second = await next_snapshot(queue)
        while len(second.objects) < 2:
            second = await next_snapshot(queue)
        assert sorted(o["metadata"]["name"] for o in second.objects) == ["one", "two"]
        assert second.generation > first.generation

        (tmp_path / "b.yaml").write_text("kind: [unclosed\n")
        third = await next_snapshot(queue)
        assert [o["metadata"]["name"] for o in third.objects] == ["one"]
        assert len(third.errors) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


@pytest.mark.parametrize(
    ("path", "watched"),
    [("/d/a.yaml", True), ("/d/a.yml", True), ("/d/a.json", True), ("/d/notes.txt", False), ("/d/.a.yaml", False)],
)
def test_only_visible_config_files_trigger_reload(path: str, watched: bool) -> None:
    assert _is_config_file(watchfiles.Change.modified, path) is watched


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "missing")
