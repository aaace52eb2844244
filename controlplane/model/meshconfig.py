"""Mesh-wide settings from the ConfigMap `idmesh`, key `mesh`, in the root namespace.

The key contains a YAML document:

    trustDomain: example.org          # SPIFFE trust domain of every workload
    trustDomainAliases: [old.example] # other trust domains whose peers are accepted
    rootNamespace: idmesh-system      # must be the ConfigMap's own namespace
    defaultCertificateTTL: 24h        # Go-style durations: 90m, 1h30m, 500ms
    maxCertificateTTL: 168h
    defaultMtlsMode: PERMISSIVE       # STRICT, PERMISSIVE or DISABLE
    clusterDomain: cluster.local
    pushDebounce: 100ms
    pushMaxDelay: 1s

Every key is optional. A key with a bad value is reported and keeps its previous value, so one
typo does not discard the rest of the settings.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import yaml

from controlplane.errors import SpiffeIdError, ValidationError
from controlplane.identity.spiffe_id import validate_trust_domain
from controlplane.model import names
from controlplane.model.fields import ObjectErrors, as_list, as_mapping, check_fields, child, item, show
from controlplane.model.metadata import read_metadata
from controlplane.model.types import MeshConfig

CONFIGMAP_NAME = "idmesh"
CONFIGMAP_KEY = "mesh"
MESH_MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parse a Go duration string such as `1h30m` or `100ms` into seconds."""
    if not isinstance(text, str) or not text:
        raise ValueError(text)
    position, total = 0, 0.0
    while position < len(text):
        part = _DURATION_PART.match(text, position)
        if part is None:
            raise ValueError(text)
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    return total


def format_duration(seconds: float) -> str:
    """Format seconds the way they are written in the settings: `48h`, `1h30m`, `500ms`."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts = []
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    for amount, unit in ((hours, "h"), (minutes, "m"), (rest, "s")):
        if amount:
            parts.append(f"{amount:g}{unit}")
    return "".join(parts)


def _duration(value: Any) -> tuple[float | None, str]:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return None, f'{show(value)} is not a duration; write one such as "24h", "90m" or "100ms"'
    return seconds, ""


def _trust_domain(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{show(value)} is not a trust domain; write a name such as example.org"
    if value.startswith("spiffe://"):
        return f"{show(value)} is a SPIFFE ID; write the trust domain alone, such as {value.removeprefix('spiffe://')}"
    try:
        validate_trust_domain(value)
    except SpiffeIdError as exc:
        return f"{show(value)} is not a trust domain: {exc.message.split(': ', 1)[-1]}"
    return None


def _read_ttl(value: Any) -> tuple[int | None, str]:
    seconds, problem = _duration(value)
    if seconds is None:
        return None, problem
    if seconds < 60 or seconds != int(seconds):
        return None, f"{show(value)} must be whole seconds and at least 1m"
    return int(seconds), ""


def _read_delay(value: Any) -> tuple[float | None, str]:
    seconds, problem = _duration(value)
    if seconds is None:
        return None, problem
    return seconds, ""


def _read_mode(value: Any) -> tuple[str | None, str]:
    if value in MESH_MTLS_MODES:
        return value, ""
    return None, f"{show(value)} is not an mTLS mode; use one of {', '.join(MESH_MTLS_MODES)}"


def _read_cluster_domain(value: Any) -> tuple[str | None, str]:
    if isinstance(value, str) and not names.dns1123_subdomain(value):
        return value, ""
    return None, f"{show(value)} is not a DNS domain such as cluster.local"


def _read_trust_domain(value: Any) -> tuple[str | None, str]:
    problem = _trust_domain(value)
    return (None, problem) if problem else (value, "")


# API key -> (MeshConfig field, reader returning (value or None, problem)).
READERS: Mapping[str, tuple[str, Callable[[Any], tuple[Any, str]]]] = {
    "trustDomain": ("trust_domain", _read_trust_domain),
    "defaultCertificateTTL": ("default_cert_ttl_seconds", _read_ttl),
    "maxCertificateTTL": ("max_cert_ttl_seconds", _read_ttl),
    "defaultMtlsMode": ("default_mtls_mode", _read_mode),
    "clusterDomain": ("cluster_domain", _read_cluster_domain),
    "pushDebounce": ("push_debounce_seconds", _read_delay),
    "pushMaxDelay": ("push_max_delay_seconds", _read_delay),
}
KEYS = (
    "trustDomain",
    "trustDomainAliases",
    "rootNamespace",
    "defaultCertificateTTL",
    "maxCertificateTTL",
    "defaultMtlsMode",
    "clusterDomain",
    "pushDebounce",
    "pushMaxDelay",
)


def parse_mesh_config(obj: Mapping[str, Any], *, base: MeshConfig) -> tuple[MeshConfig, list[ValidationError]]:
    """Apply the settings of one `idmesh` ConfigMap on top of `base`.

    The result's root namespace is the ConfigMap's namespace: a `rootNamespace` naming another
    namespace is an error.
    """
    errors = ObjectErrors("ConfigMap")
    meta = read_metadata(obj, errors)
    if meta is None:
        return base, errors.errors
    document = _read_document(obj, errors)
    if document is None:
        return base, errors.errors
    path = f"data.{CONFIGMAP_KEY}"
    check_fields(document, KEYS, path, errors)

    changes: dict[str, Any] = {"root_namespace": meta.namespace}
    for key, (field, read) in READERS.items():
        if key in document:
            value, problem = read(document[key])
            if value is None:
                errors.add(child(path, key), problem, document[key])
            else:
                changes[field] = value
    if "trustDomainAliases" in document:
        aliases = _read_aliases(document["trustDomainAliases"], child(path, "trustDomainAliases"), errors)
        if aliases is not None:
            changes["trust_domain_aliases"] = aliases
    root = document.get("rootNamespace", meta.namespace)
    if root != meta.namespace:
        errors.add(
            child(path, "rootNamespace"),
            f"{show(root)} is not the namespace of this ConfigMap ({meta.namespace}); "
            "the ConfigMap idmesh must be in the root namespace",
            root,
        )
    config = dataclasses.replace(base, **changes)
    return _check_limits(config, base, path, errors), errors.errors


def _read_document(obj: Mapping[str, Any], errors: ObjectErrors) -> dict[str, Any] | None:
    data = as_mapping(obj.get("data", {}), "data", errors)
    if data is None:
        return None
    path = f"data.{CONFIGMAP_KEY}"
    text = data.get(CONFIGMAP_KEY)
    if not isinstance(text, str):
        errors.add(path, "is missing; it holds the mesh settings as a YAML document", text)
        return None
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        errors.add(path, f"invalid YAML{where}: {problem}", None)
        return None
    if document is None:
        return {}
    return as_mapping(document, path, errors)


def _read_aliases(value: Any, path: str, errors: ObjectErrors) -> tuple[str, ...] | None:
    aliases = as_list(value, path, errors)
    if aliases is None:
        return None
    ok = True
    for index, alias in enumerate(aliases):
        if problem := _trust_domain(alias):
            errors.add(item(path, index), problem, alias)
            ok = False
    return tuple(aliases) if ok else None


def _check_limits(config: MeshConfig, base: MeshConfig, path: str, errors: ObjectErrors) -> MeshConfig:
    if config.default_cert_ttl_seconds > config.max_cert_ttl_seconds:
        errors.add(
            child(path, "defaultCertificateTTL"),
            f"{format_duration(config.default_cert_ttl_seconds)} is longer than maxCertificateTTL "
            f"({format_duration(config.max_cert_ttl_seconds)})",
            config.default_cert_ttl_seconds,
        )
        config = dataclasses.replace(
            config, default_cert_ttl_seconds=min(base.default_cert_ttl_seconds, config.max_cert_ttl_seconds)
        )
    if config.push_debounce_seconds > config.push_max_delay_seconds:
        errors.add(
            child(path, "pushDebounce"),
            f"{format_duration(config.push_debounce_seconds)} is longer than pushMaxDelay "
            f"({format_duration(config.push_max_delay_seconds)})",
            config.push_debounce_seconds,
        )
        config = dataclasses.replace(
            config,
            push_debounce_seconds=base.push_debounce_seconds,
            push_max_delay_seconds=max(base.push_max_delay_seconds, base.push_debounce_seconds),
        )
    return config


def mesh_config_from_objects(
    configmaps: Iterable[Mapping[str, Any]], *, base: MeshConfig
) -> tuple[MeshConfig, list[ValidationError]]:
    """Find the `idmesh` ConfigMap among `configmaps` and apply it on top of `base`.

    The ConfigMap in `base.root_namespace` is used. Without one, a ConfigMap `idmesh` whose
    `rootNamespace` names its own namespace is used, so that a folder of YAML can move the root
    namespace. Other ConfigMaps are ignored.
    """
    candidates = [cm for cm in configmaps if _name(cm) == CONFIGMAP_NAME]
    in_root = [cm for cm in candidates if _namespace(cm) == base.root_namespace]
    if in_root:
        config, errors = parse_mesh_config(in_root[0], base=base)
        for _duplicate in in_root[1:]:
            errors.append(
                ValidationError(
                    "is defined more than once; the first definition is used",
                    kind="ConfigMap",
                    namespace=base.root_namespace,
                    name=CONFIGMAP_NAME,
                )
            )
        return config, errors
    declared = [cm for cm in candidates if _declared_root(cm) == _namespace(cm)]
    if len(declared) == 1:
        return parse_mesh_config(declared[0], base=base)
    errors = []
    for cm in declared:
        namespaces = ", ".join(sorted(_namespace(other) for other in declared))
        errors.append(
            ValidationError(
                f"several ConfigMaps idmesh name their own namespace as root ({namespaces}); all are ignored",
                kind="ConfigMap",
                namespace=_namespace(cm),
                name=CONFIGMAP_NAME,
                path=f"data.{CONFIGMAP_KEY}.rootNamespace",
                value=_namespace(cm),
            )
        )
    return base, errors


def _name(obj: Mapping[str, Any]) -> Any:
    meta = obj.get("metadata")
    return meta.get("name") if isinstance(meta, dict) else None


def _namespace(obj: Mapping[str, Any]) -> Any:
    meta = obj.get("metadata")
    return meta.get("namespace", "default") if isinstance(meta, dict) else None


def _declared_root(obj: Mapping[str, Any]) -> Any:
    data = obj.get("data")
    text = data.get(CONFIGMAP_KEY) if isinstance(data, dict) else None
    try:
        document = yaml.safe_load(text) if isinstance(text, str) else None
    except (yaml.YAMLError, ValueError):
        return None
    return document.get("rootNamespace") if isinstance(document, dict) else None
