"""Checks for output Envoy would reject, run before a proxy's configuration is returned.

Envoy rejects a whole xDS response when one resource in it is invalid, so a single bad service
or policy would otherwise stop every update to every proxy that receives it. These checks find
such faults and leave out (or fail closed) only the object at fault, with a `TranslationError`
that names it.

Regular expressions are checked with RE2 itself when the `google-re2` package is installed,
including Envoy's default limit on the compiled program size. Without it, a conservative check
rejects what Python's `re` cannot compile and the Perl constructs RE2 lacks (lookaround,
backreferences, atomic groups, possessive quantifiers); it cannot see the program size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from envoy.config.route.v3 import route_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from controlplane.errors import TranslationError

try:
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

RE2_AVAILABLE = _re2 is not None
# Envoy rejects a regex whose RE2 program is larger than the runtime value
# `re2.max_program_size.error_level`, 100 unless an operator raises it (checked against
# Envoy 1.40 by tests/integration/test_envoy_validate.py).
ENVOY_MAX_PROGRAM_SIZE = 100

_REGEX_MATCHER = "envoy.type.matcher.v3.RegexMatcher"
_ANY = "google.protobuf.Any"
_UNSUPPORTED_BY_RE2 = re.compile(r"\(\?(?:[=!>]|<[=!])|\\[1-9]|\(\?P=|[*+?}][+]|\\[GZ]")


@dataclass(frozen=True, slots=True)
class Built:
    """One generated resource and the mesh object it was made for, for error messages."""

    name: str
    message: Message
    origin: str


def regex_error(pattern: str) -> str | None:
    """Return why Envoy's RE2 would reject `pattern`, or None if it is accepted."""
    if _re2 is not None:
        options = _re2.Options()
        options.log_errors = False
        try:
            compiled = _re2.compile(pattern, options)
        except _re2.error as exc:
            detail = exc.args[0] if exc.args else exc
            return detail.decode() if isinstance(detail, bytes) else str(detail)
        if compiled.programsize > ENVOY_MAX_PROGRAM_SIZE:
            return f"program size {compiled.programsize} exceeds Envoy's limit of {ENVOY_MAX_PROGRAM_SIZE}"
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    unsupported = _UNSUPPORTED_BY_RE2.search(pattern)
    if unsupported:
        return f"{unsupported.group()!r} is a construct RE2 does not support"
    return None


@lru_cache(maxsize=None)
def _may_hold_regex(descriptor: Descriptor) -> bool:
    """Return whether a message of this type can contain a RegexMatcher, directly or inside an Any."""
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in (_REGEX_MATCHER, _ANY):
            return True
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        pending.extend(
            field.message_type for field in current.fields if field.type == FieldDescriptor.TYPE_MESSAGE
        )
    return False


def _unpack_any(packed: Message) -> Message | None:
    type_name = packed.type_url.rpartition("/")[2]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        return None
    inner = message_factory.GetMessageClass(descriptor)()
    try:
        inner.ParseFromString(packed.value)
    except DecodeError:
        return None
    return inner


def _walk(message: Message, path: str) -> Iterator[tuple[str, Message]]:
    """Yield every RegexMatcher inside `message` with its field path."""
    name = message.DESCRIPTOR.full_name
    if name == _REGEX_MATCHER:
        yield path, message
        return
    if name == _ANY:
        inner = _unpack_any(message)
        if inner is not None:
            yield from _walk(inner, path)
        return
    if not _may_hold_regex(message.DESCRIPTOR):
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        field_path = f"{path}.{field.name}" if path else field.name
        if field.message_type.GetOptions().map_entry:
            for key in sorted(value):
                item = value[key]
                if isinstance(item, Message):
                    yield from _walk(item, f"{field_path}[{key!r}]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from _walk(item, f"{field_path}[{index}]")
        else:
            yield from _walk(value, field_path)


def regex_problems(message: Message) -> list[tuple[str, str, str]]:
    """List `(field path, pattern, reason)` for each regex in `message` that RE2 rejects."""
    problems = []
    for path, matcher in _walk(message, ""):
        reason = regex_error(matcher.regex)
        if reason is not None:
            problems.append((path, matcher.regex, reason))
    return problems


def unique_by_name(items: Iterable[Built], *, kind: str) -> tuple[dict[str, Built], list[TranslationError]]:
    """Keep the first resource of each name and report every later one as left out."""
    kept: dict[str, Built] = {}
    problems: list[TranslationError] = []
    for item in items:
        first = kept.get(item.name)
        if first is None:
            kept[item.name] = item
            continue
        problems.append(
            TranslationError(
                f"{item.origin}: {kind} {item.name!r} is also generated for {first.origin}; "
                f"the second one is left out",
                object=item.origin,
                resource=item.name,
            )
        )
    return kept, problems


def drop_conflicting_domains(
    config: route_pb2.RouteConfiguration, origins: dict[str, str]
) -> list[TranslationError]:
    """Remove every virtual host that claims a domain an earlier one already has.

    `origins` maps virtual host names to the object that produced them. Envoy rejects a route
    configuration in which two virtual hosts share a domain, so the later one is left out.
    """
    owner_of: dict[str, str] = {}
    kept = []
    problems: list[TranslationError] = []
    for virtual_host in config.virtual_hosts:
        clash = next((domain for domain in virtual_host.domains if domain.lower() in owner_of), None)
        origin = origins.get(virtual_host.name, virtual_host.name)
        if clash is not None:
            problems.append(
                TranslationError(
                    f"{origin}: domain {clash!r} in route configuration {config.name!r} is already "
                    f"claimed by {origins.get(owner_of[clash.lower()], owner_of[clash.lower()])}; "
                    f"virtual host {virtual_host.name!r} is left out",
                    object=origin,
                    resource=config.name,
                    domain=clash,
                )
            )
            continue
        for domain in virtual_host.domains:
            owner_of[domain.lower()] = virtual_host.name
        kept.append(virtual_host)
    if problems:
        del config.virtual_hosts[:]
        config.virtual_hosts.extend(kept)
    return problems


def drop_routes_to_unknown_clusters(
    config: route_pb2.RouteConfiguration, clusters: set[str], origins: dict[str, str]
) -> list[TranslationError]:
    """Remove routes whose cluster is not among `clusters`, and virtual hosts left empty."""
    problems: list[TranslationError] = []
    kept_hosts = []
    for virtual_host in config.virtual_hosts:
        kept_routes = []
        for route in virtual_host.routes:
            cluster = route.route.cluster if route.HasField("route") else ""
            if route.HasField("route") and route.route.HasField("cluster") and cluster not in clusters:
                origin = origins.get(virtual_host.name, virtual_host.name)
                problems.append(
                    TranslationError(
                        f"{origin}: route in virtual host {virtual_host.name!r} of route configuration "
                        f"{config.name!r} names cluster {cluster!r}, which is not generated; "
                        "the route is left out",
                        object=origin,
                        resource=config.name,
                        cluster=cluster,
                    )
                )
                continue
            kept_routes.append(route)
        if len(kept_routes) != len(virtual_host.routes):
            del virtual_host.routes[:]
            virtual_host.routes.extend(kept_routes)
        if virtual_host.routes:
            kept_hosts.append(virtual_host)
    if len(kept_hosts) != len(config.virtual_hosts):
        del config.virtual_hosts[:]
        config.virtual_hosts.extend(kept_hosts)
    return problems
