"""Load Kubernetes objects from a folder of YAML and JSON files (local mode, `meshctl analyze`).

Every `*.yaml`, `*.yml` and `*.json` file under the folder is read, in sorted path order, with
multi-document YAML and `kind: List` expanded. A file that cannot be read or parsed is reported
with its name, document number and line, and skipped as a whole, because applying half of a
file could apply half of a change. Loading does not raise for bad content
(unreadable files, invalid YAML or JSON, documents that are not objects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.errors import SourceError

SUFFIXES = (".yaml", ".yml", ".json")
# Files that sit next to manifests but hold no Kubernetes objects: scenario call lists and
# kustomize configuration.
IGNORED_NAMES = frozenset({"scenario.yaml", "scenario.yml", "kustomization.yaml", "kustomization.yml"})


@dataclass
class LoadResult:
    objects: list[dict[str, Any]] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    # `origins[i]` names where `objects[i]` came from, as "FILE#DOCUMENT" (documents count from 1).
    origins: list[str] = field(default_factory=list)


def load_folder(path: str | Path) -> LoadResult:
    """Read every manifest under `path` (recursively; names starting with '.' are skipped)."""
    root = Path(path)
    result = LoadResult()
    if not root.is_dir():
        result.errors.append(
            SourceError(f"{root}: not a folder", file=str(root), document=None, line=None, problem="not a folder")
        )
        return result
    for file in sorted(_manifest_files(root)):
        display_name = str(file.relative_to(root))
        documents, error = _read_file(file, display_name)
        if error is not None:
            result.errors.append(error)
            continue
        for index, document in documents:
            result.objects.append(document)
            result.origins.append(f"{display_name}#{index}")
    return result


def _manifest_files(root: Path) -> list[Path]:
    files = []
    for file in root.rglob("*"):
        relative = file.relative_to(root).parts
        if any(part.startswith(".") for part in relative):
            continue
        if file.is_file() and file.suffix in SUFFIXES and file.name not in IGNORED_NAMES:
            files.append(file)
    return files


def _read_file(file: Path, display_name: str) -> tuple[list[tuple[int, dict[str, Any]]], SourceError | None]:
    """Return `(document number, object)` pairs, or the first problem of the file."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], _error(display_name, None, None, f"cannot be read: {exc}", exc)
    if file.suffix == ".json":
        try:
            raw_documents = [json.loads(text)]
        except json.JSONDecodeError as exc:
            return [], _error(display_name, 1, exc.lineno, f"invalid JSON: {exc.msg}", exc)
    else:
        raw_documents = []
        try:
            for document in yaml.safe_load_all(text):
                raw_documents.append(document)
        except (yaml.YAMLError, ValueError) as exc:
            # PyYAML raises ValueError for values its resolver accepts but Python does not,
            # such as the date 2024-02-30.
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            return [], _error(display_name, len(raw_documents) + 1, line, f"invalid YAML: {problem}", exc)

    documents: list[tuple[int, dict[str, Any]]] = []
    for index, document in enumerate(raw_documents, start=1):
        if document is None:
            continue
        objects, problem = _objects_of(document)
        if problem:
            return [], _error(display_name, index, None, problem, None)
        documents.extend((index, obj) for obj in objects)
    return documents, None


def _objects_of(document: Any) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(document, dict):
        return [], f"is a {type(document).__name__}, not a Kubernetes object with apiVersion and kind"
    if not isinstance(document.get("apiVersion"), str) or not isinstance(document.get("kind"), str):
        return [], "has no apiVersion or kind; every object needs both"
    if document["kind"] != "List":
        return [document], ""
    items = document.get("items")
    if not isinstance(items, list) or not all(isinstance(entry, dict) for entry in items):
        return [], "is a List whose items are not a list of objects"
    return items, ""


def _error(display_name: str, document: int | None, line: int | None, problem: str, cause: Exception | None) -> SourceError:
    where = display_name
    if document is not None:
        where += f" document {document}"
    if line is not None:
        where += f" line {line}"
    error = SourceError(f"{where}: {problem}", file=display_name, document=document, line=line, problem=problem)
    error.__cause__ = cause
    return error
