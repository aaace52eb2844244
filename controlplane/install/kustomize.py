"""Read a kustomization that only lists resources, as `kubectl kustomize` would render it.

`meshctl install` must work where no kustomize binary is installed, so it reads
manifests/base itself. Only the `resources` field is understood: files of YAML documents, and
directories that hold their own kustomization. Any other field raises `InstallError` rather
than being ignored, because ignoring a transformer would install something other than what the
file says. Overlays with patches are for `kubectl apply -k`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controlplane.install.errors import InstallError

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = ("apiVersion", "kind", "resources")


def find_kustomization(directory: Path) -> Path:
    """Return the kustomization file in `directory`, or raise `InstallError`."""
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise InstallError(
        f"{directory} has no kustomization: expected one of {', '.join(KUSTOMIZATION_FILES)}",
        path=str(directory),
    )


def load_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Return the objects of the kustomization in `directory`, in the order its resources list them."""
    path = find_kustomization(directory)
    document = _read_yaml(path)
    if len(document) != 1 or not isinstance(document[0], dict):
        raise InstallError(f"{path} must hold one YAML mapping", path=str(path))
    kustomization = document[0]
    unsupported = sorted(set(kustomization) - set(SUPPORTED_FIELDS))
    if unsupported:
        raise InstallError(
            f"{path} uses {', '.join(unsupported)}, which meshctl cannot render; it reads only "
            f"{', '.join(SUPPORTED_FIELDS)}. Put transformers and patches in an overlay and apply it with kubectl apply -k",
            path=str(path),
        )
    resources = kustomization.get("resources", [])
    if not isinstance(resources, list) or not all(isinstance(entry, str) for entry in resources):
        raise InstallError(f"{path}: resources must be a list of relative paths", path=str(path))

    objects: list[dict[str, Any]] = []
    for entry in resources:
        if "://" in entry:
            raise InstallError(f"{path}: resource {entry!r} is remote; meshctl reads local files only", path=str(path))
        target = directory / entry
        if target.is_dir():
            objects.extend(load_kustomization(target))
        elif target.is_file():
            objects.extend(_objects_in(target))
        else:
            raise InstallError(f"{path}: resource {entry!r} does not exist ({target})", path=str(path))
    return objects


def _objects_in(path: Path) -> list[dict[str, Any]]:
    objects = []
    for index, document in enumerate(_read_yaml(path)):
        if document is None:
            continue
        if not isinstance(document, dict) or "kind" not in document:
            raise InstallError(f"{path}: document {index + 1} is not a Kubernetes object", path=str(path))
        objects.append(document)
    return objects


def _read_yaml(path: Path) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    except yaml.YAMLError as exc:
        raise InstallError(f"{path} is not valid YAML: {exc}", path=str(path)) from exc
