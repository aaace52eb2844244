"""`metadata` of any Kubernetes object: name, namespace, labels, annotations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from controlplane.model import names
from controlplane.model.fields import ObjectErrors, as_str, map_key, show, string_map

# kubectl puts namespaced objects without `metadata.namespace` into this namespace.
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Metadata:
    name: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""


def read_metadata(
    obj: Mapping[str, Any],
    errors: ObjectErrors,
    *,
    namespaced: bool = True,
    name_rule: Callable[[str], str | None] = names.dns1123_subdomain,
) -> Metadata | None:
    """Read `metadata`; return None when the object cannot be identified (no usable name or
    namespace). An invalid but readable name is recorded as an error and still returned."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        errors.add("metadata", "is missing; every object needs metadata.name", meta)
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.add("metadata.name", "is missing; every object needs a name", name)
        return None
    errors.name = name

    namespace = ""
    if namespaced:
        raw = meta.get("namespace", DEFAULT_NAMESPACE)
        if not isinstance(raw, str) or (problem := names.dns1123_label(raw or "-")):
            reason = problem if isinstance(raw, str) else "must be a string"
            errors.add("metadata.namespace", f"{show(raw)} is not a namespace name: it {reason}", raw)
            return None
        namespace = raw
        errors.namespace = namespace

    if problem := name_rule(name):
        errors.add("metadata.name", f"{show(name)} is not a valid name: it {problem}", name)

    labels = _read_labels(meta.get("labels"), errors)
    annotations = _read_annotations(meta.get("annotations"), errors)
    uid = meta.get("uid") if isinstance(meta.get("uid"), str) else ""
    return Metadata(name=name, namespace=namespace, labels=labels, annotations=annotations, uid=uid)


def _read_labels(value: Any, errors: ObjectErrors, path: str = "metadata.labels") -> dict[str, str]:
    return read_labels(value, errors, path) if value is not None else {}


def read_labels(value: Any, errors: ObjectErrors, path: str) -> dict[str, str]:
    """Read a label map, recording every invalid key or value and leaving those entries out."""
    labels = string_map(value, path, errors)
    if labels is None:
        return {}
    valid: dict[str, str] = {}
    for key, entry in labels.items():
        if problem := names.label_key(key):
            errors.add(map_key(path, key), f"{show(key)} is not a label key: it {problem}", key)
        elif problem := names.label_value(entry):
            errors.add(map_key(path, key), f"{show(entry)} is not a label value: it {problem}", entry)
        else:
            valid[key] = entry
    return valid


def _read_annotations(value: Any, errors: ObjectErrors) -> dict[str, str]:
    if value is None:
        return {}
    annotations = string_map(value, "metadata.annotations", errors)
    return annotations or {}


def object_kind(obj: Mapping[str, Any]) -> tuple[str, str]:
    """Return `(group, kind)` of an object; the group is "" for the core API."""
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return "", ""
    group = api_version.rpartition("/")[0]
    return group, kind


def read_name_only(obj: Mapping[str, Any]) -> tuple[str, str]:
    """Return `(namespace, name)` as written, for messages about objects that fail to parse."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return "", ""
    name = meta.get("name")
    namespace = meta.get("namespace")
    return (namespace if isinstance(namespace, str) else ""), (name if isinstance(name, str) else "")


def require_str(value: Any, path: str, errors: ObjectErrors) -> str | None:
    """Read a string that must be present."""
    if value is None:
        errors.add(path, "is missing", value)
        return None
    return as_str(value, path, errors)
