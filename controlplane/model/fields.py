"""Reading untyped Kubernetes objects field by field while collecting every error.

Parsers hand an `ObjectErrors` through their helpers. A helper that finds a problem records a
`ValidationError` with the field path and returns None (or skips the bad item), so that one
pass reports every problem of an object instead of stopping at the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from controlplane.errors import ValidationError


def show(value: Any) -> str:
    """Render a value as it appears in YAML/JSON, with strings in double quotes."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def type_name(value: Any) -> str:
    """Name the YAML type of `value` with its article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def not_a_string(value: Any) -> str:
    """Message for a value that should be a string; numbers and booleans only need quotes."""
    message = f"must be a string, not {type_name(value)} ({show(value)})"
    if isinstance(value, (int, float)):
        message += "; quote it in YAML"
    return message


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def map_key(path: str, key: Any) -> str:
    return f"{path}[{show(key)}]"


@dataclass
class ObjectErrors:
    """Every problem found in one Kubernetes object.

    Errors with `unsupported=True` name features that are well-formed but not enforced. They make
    a policy fail closed like any other error does.
    """

    kind: str
    namespace: str = ""
    name: str = ""
    errors: list[ValidationError] = field(default_factory=list)

    def add(self, path: str, message: str, value: Any = None, *, unsupported: bool = False) -> None:
        """Record one error; `unsupported` marks a well-formed feature that is not enforced."""
        self.errors.append(
            ValidationError(
                message,
                kind=self.kind,
                namespace=self.namespace,
                name=self.name,
                path=path,
                value=value,
                unsupported=unsupported,
            )
        )

    def __bool__(self) -> bool:
        return bool(self.errors)

    def summary(self) -> str:
        """Join every error as `path: message`, for a policy's `error` field."""
        return "; ".join(
            f"{error.path}: {error.detail}" if error.path else error.detail for error in self.errors
        )


def as_mapping(value: Any, path: str, errors: ObjectErrors) -> Mapping[str, Any] | None:
    if isinstance(value, dict):
        return value
    errors.add(path, f"must be an object, not {type_name(value)}", value)
    return None


def as_list(value: Any, path: str, errors: ObjectErrors) -> list[Any] | None:
    if isinstance(value, list):
        return value
    errors.add(path, f"must be a list, not {type_name(value)}", value)
    return None


def as_str(value: Any, path: str, errors: ObjectErrors) -> str | None:
    if isinstance(value, str):
        return value
    errors.add(path, not_a_string(value), value)
    return None


def as_bool(value: Any, path: str, errors: ObjectErrors) -> bool | None:
    if isinstance(value, bool):
        return value
    errors.add(path, f"must be true or false, not {type_name(value)} ({show(value)})", value)
    return None


def as_port_number(value: Any, path: str, errors: ObjectErrors) -> int | None:
    """Read an integer port 1-65535 (YAML `8080`, not the string `"8080"`)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    errors.add(path, f"{show(value)} is not a port number; use an integer from 1 to 65535", value)
    return None


def check_fields(
    mapping: Mapping[str, Any], accepted: Iterable[str], path: str, errors: ObjectErrors
) -> None:
    """Record an error for every key of `mapping` that is not in `accepted`."""
    accepted = tuple(accepted)
    for key in mapping:
        if key not in accepted:
            errors.add(
                child(path, str(key)),
                f"unknown field {show(key)}; accepted fields are {', '.join(accepted)}",
                key,
            )


def string_map(value: Any, path: str, errors: ObjectErrors) -> dict[str, str] | None:
    """Read a mapping of strings to strings such as labels; None when any entry is not."""
    mapping = as_mapping(value, path, errors)
    if mapping is None:
        return None
    result: dict[str, str] = {}
    ok = True
    for key, entry in mapping.items():
        if not isinstance(key, str):
            errors.add(map_key(path, key), f"the key {show(key)} must be a string", key)
            ok = False
        elif not isinstance(entry, str):
            errors.add(map_key(path, key), not_a_string(entry), entry)
            ok = False
        else:
            result[key] = entry
    return result if ok else None
