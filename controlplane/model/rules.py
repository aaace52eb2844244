"""AuthorizationPolicy rules: `from.source`, `to.operation` and `when`, with Istio's syntax.

String fields use Istio's match syntax: an exact value, `prefix*`, `*suffix`, or `*` alone.
An empty list written out (`principals: []`) is rejected rather than read as "any", because
protobuf treats it as an absent field and so it would match every request, which is rarely
what the author meant.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

from controlplane.model.fields import (
    ObjectErrors,
    as_list,
    as_mapping,
    as_str,
    check_fields,
    child,
    item,
    not_a_string,
    show,
)
from controlplane.model.types import Condition, Operation, Rule, Source

FAILS_CLOSED = "the policy fails closed for the workloads it selects"
JWT_UNSUPPORTED = f"is not supported, because idmesh does not validate JWTs yet; {FAILS_CLOSED}"

# RFC 9110 token characters; HTTP methods are tokens and Envoy compares them case-sensitively.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_KEY = re.compile(r"request\.headers\[(.*)\]", re.DOTALL)

Check = Callable[[str], "str | None"]


def match_syntax(value: str) -> str | None:
    """Check Istio's string match forms: exact, `prefix*`, `*suffix` or `*`."""
    if value == "*":
        return None
    if len(value) > 1 and value.startswith("*") and value.endswith("*"):
        return 'has "*" at both ends; use an exact value, "prefix*", "*suffix" or "*"'
    if "*" in value.strip("*") or value.count("*") > 1:
        return 'has "*" in the middle; use an exact value, "prefix*", "*suffix" or "*"'
    return None


def check_method(value: str) -> str | None:
    if problem := match_syntax(value):
        return problem
    core = value.strip("*")
    if value == "*" or not core:
        return None
    if not _TOKEN.fullmatch(core):
        return "is not an HTTP method; methods are tokens such as GET or POST"
    if core != core.upper():
        return "is not an HTTP method; use upper case"
    return None


def check_path(value: str) -> str | None:
    if not value.startswith(("/", "*")):
        return 'does not start with "/" or "*"'
    if "?" in value or "#" in value:
        return "contains a query or fragment; paths are matched without them"
    if any(ch.isspace() for ch in value):
        return "contains whitespace"
    return match_syntax(value)


def check_port(value: str) -> str | None:
    if value.isascii() and value.isdigit() and 1 <= int(value) <= 65535:
        return None
    return "is not a port; use a number from 1 to 65535 as a string"


def check_ip_block(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return 'is not an IP address or CIDR block such as "10.0.0.0/8"'
    return None


def check_principal(value: str) -> str | None:
    if any(ch.isspace() for ch in value):
        return "contains whitespace"
    return match_syntax(value.removeprefix("spiffe://"))


SOURCE_CHECKS: dict[str, Check] = {
    "principals": check_principal,
    "notPrincipals": check_principal,
    "namespaces": match_syntax,
    "notNamespaces": match_syntax,
    "ipBlocks": check_ip_block,
    "notIpBlocks": check_ip_block,
    "remoteIpBlocks": check_ip_block,
    "notRemoteIpBlocks": check_ip_block,
}
SOURCE_UNSUPPORTED = {
    "requestPrincipals": JWT_UNSUPPORTED,
    "notRequestPrincipals": JWT_UNSUPPORTED,
    "serviceAccounts": f"is not supported yet; write principals instead, and until then {FAILS_CLOSED}",
    "notServiceAccounts": f"is not supported yet; write notPrincipals instead, and until then {FAILS_CLOSED}",
}
OPERATION_CHECKS: dict[str, Check] = {
    "hosts": match_syntax,
    "notHosts": match_syntax,
    "ports": check_port,
    "notPorts": check_port,
    "methods": check_method,
    "notMethods": check_method,
    "paths": check_path,
    "notPaths": check_path,
}
CONDITION_CHECKS: dict[str, Check] = {
    "source.ip": check_ip_block,
    "remote.ip": check_ip_block,
    "source.namespace": match_syntax,
    "source.principal": check_principal,
    "destination.ip": check_ip_block,
    "destination.port": check_port,
    "connection.sni": match_syntax,
}
CONDITION_KEYS_TEXT = ", ".join([*CONDITION_CHECKS, "request.headers[NAME]"])

# Fields of `Source` and `Operation` in the model, by their API names.
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def snake_case(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


def read_values(value: Any, path: str, errors: ObjectErrors, check: Check) -> tuple[str, ...]:
    """Read a non-empty list of non-empty strings, each accepted by `check`."""
    values = as_list(value, path, errors)
    if values is None:
        return ()
    if not values:
        errors.add(
            path,
            "is an empty list, which is read as an absent field and matches anything; "
            "remove the field or list values",
            values,
        )
        return ()
    accepted: list[str] = []
    for index, entry in enumerate(values):
        entry_path = item(path, index)
        if not isinstance(entry, str):
            errors.add(entry_path, not_a_string(entry), entry)
        elif entry == "":
            errors.add(entry_path, "is an empty string; remove it or write a value", entry)
        elif problem := check(entry):
            errors.add(entry_path, f"{show(entry)} {problem}", entry)
        else:
            accepted.append(entry)
    return tuple(accepted)


def read_rule(value: Any, path: str, errors: ObjectErrors) -> Rule:
    rule = as_mapping(value, path, errors)
    if rule is None:
        return Rule()
    check_fields(rule, ("from", "to", "when"), path, errors)
    sources = _read_entries(rule, "from", "source", path, errors, _read_source)
    operations = _read_entries(rule, "to", "operation", path, errors, _read_operation)
    conditions: list[Condition] = []
    if "when" in rule:
        when_path = child(path, "when")
        entries = as_list(rule["when"], when_path, errors)
        if entries == []:
            errors.add(when_path, "is an empty list; remove it to add no conditions", entries)
        for index, entry in enumerate(entries or ()):
            condition = _read_condition(entry, item(when_path, index), errors)
            if condition is not None:
                conditions.append(condition)
    return Rule(sources=tuple(sources), operations=tuple(operations), conditions=tuple(conditions))


def _read_entries(
    rule: Mapping[str, Any],
    field: str,
    inner: str,
    path: str,
    errors: ObjectErrors,
    read: Callable[[Mapping[str, Any], str, ObjectErrors], Any],
) -> list[Any]:
    """Read `from` (entries of `source`) or `to` (entries of `operation`)."""
    if field not in rule:
        return []
    list_path = child(path, field)
    entries = as_list(rule[field], list_path, errors)
    if entries is None:
        return []
    if not entries:
        errors.add(list_path, f"is an empty list, which matches nothing; remove {show(field)} to match any request", entries)
        return []
    result = []
    for index, entry in enumerate(entries):
        entry_path = item(list_path, index)
        mapping = as_mapping(entry, entry_path, errors)
        if mapping is None:
            continue
        check_fields(mapping, (inner,), entry_path, errors)
        inner_path = child(entry_path, inner)
        body = mapping.get(inner)
        if body is None:
            errors.add(inner_path, f"is missing; each {show(field)} entry needs {show(inner)}", body)
            continue
        body = as_mapping(body, inner_path, errors)
        if body is None:
            continue
        if not body:
            errors.add(inner_path, f"is empty; list at least one field, or remove {show(field)} to match any request", body)
            continue
        result.append(read(body, inner_path, errors))
    return result


def _read_source(source: Mapping[str, Any], path: str, errors: ObjectErrors) -> Source:
    check_fields(source, (*SOURCE_CHECKS, *SOURCE_UNSUPPORTED), path, errors)
    values: dict[str, tuple[str, ...]] = {}
    # Fields are read in the order written, so errors follow the document.
    for name, value in source.items():
        if name in SOURCE_UNSUPPORTED:
            errors.add(child(path, name), SOURCE_UNSUPPORTED[name], value, unsupported=True)
        elif name in SOURCE_CHECKS:
            values[snake_case(name)] = read_values(value, child(path, name), errors, SOURCE_CHECKS[name])
    return Source(**values)


def _read_operation(operation: Mapping[str, Any], path: str, errors: ObjectErrors) -> Operation:
    check_fields(operation, OPERATION_CHECKS, path, errors)
    values: dict[str, tuple[str, ...]] = {}
    for name, value in operation.items():
        if name in OPERATION_CHECKS:
            values[snake_case(name)] = read_values(value, child(path, name), errors, OPERATION_CHECKS[name])
    return Operation(**values)


def _read_condition(value: Any, path: str, errors: ObjectErrors) -> Condition | None:
    condition = as_mapping(value, path, errors)
    if condition is None:
        return None
    check_fields(condition, ("key", "values", "notValues"), path, errors)
    key_path = child(path, "key")
    if "key" not in condition:
        errors.add(key_path, f"is missing; use one of {CONDITION_KEYS_TEXT}", None)
        return None
    key = as_str(condition["key"], key_path, errors)
    if key is None:
        return None
    check = _condition_check(key, key_path, errors)
    if check is None:
        return None
    if "values" not in condition and "notValues" not in condition:
        errors.add(path, "has neither values nor notValues; a condition needs at least one", condition)
        return None
    values = read_values(condition["values"], child(path, "values"), errors, check) if "values" in condition else ()
    not_values = (
        read_values(condition["notValues"], child(path, "notValues"), errors, check)
        if "notValues" in condition
        else ()
    )
    return Condition(key=key, values=values, not_values=not_values)


def _condition_check(key: str, path: str, errors: ObjectErrors) -> Check | None:
    if key in CONDITION_CHECKS:
        return CONDITION_CHECKS[key]
    if key.startswith("request.auth."):
        errors.add(path, f"{show(key)} {JWT_UNSUPPORTED}", key, unsupported=True)
        return None
    header = _HEADER_KEY.fullmatch(key)
    if header:
        name = header.group(1)
        if not _TOKEN.fullmatch(name):
            errors.add(path, f"{show(key)} does not name a header; write request.headers[NAME] with a header name", key)
            return None
        return match_syntax
    errors.add(path, f"{show(key)} is not a supported condition key; use one of {CONDITION_KEYS_TEXT}", key)
    return None
