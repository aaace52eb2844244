"""Envoy RBAC permission and principal matchers, compiled into Python predicates.

Compilation checks the whole configuration first, as Envoy does when it loads it, so an
unsupported matcher raises `UnsupportedRbacError` whatever request is evaluated later, even in
a branch that a short-circuit would skip. The semantics follow Envoy's `matchers.cc` and
`header_utility.cc` (Envoy 1.40): `and_*` of nothing is true, `or_*` of nothing is false,
`any` is true whatever its value, headers are looked up by lower-case name with repeated values
joined by ",", and a missing header fails every header matcher except an inverted
`present_match: true` or a `present_match: false`.

Not supported, and rejected: metadata, sourced_metadata, filter_state, custom and extension
matchers, URI templates, CEL conditions, and StringMatcher `custom`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import path_pb2, string_pb2

from controlplane.authz.errors import InvalidRbacError, UnsupportedRbacError
from controlplane.authz.request import Request


@dataclass(frozen=True, slots=True)
class Context:
    """One evaluation: the request plus the header map the filter type exposes."""

    request: Request
    # Empty for network filters, which Envoy evaluates against an empty header map.
    headers: Mapping[str, str]


Predicate = Callable[[Context], bool]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Syntax that Python's `re` and RE2 read differently, or that RE2 rejects. The evaluator refuses
# these rather than guess: lookaround, backreferences, possessive and atomic groups, \Z and \z,
# Unicode classes, \Q..\E, \C, POSIX classes, {,n}, \s (RE2 leaves out \v) and flags other than
# i, m and s.
_RE2_INCOMPATIBLE = re.compile(r"\(\?[=!<>#]|\(\?P=|\\[1-9]|[*+?}]\+|\\[ZzpPQECsS]|\[\[:|\{,")
_FLAG_GROUP = re.compile(r"\(\?([A-Za-z-]*)[:)]")


def _lower(value: str) -> str:
    """ASCII lower case, as absl's case-insensitive comparisons use."""
    return value.translate(_ASCII_LOWER)


@lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern from the subset that Python's `re` reads the same way."""
    flags_ok = all(set(flags) <= set("ims") for flags in _FLAG_GROUP.findall(pattern))
    if _RE2_INCOMPATIBLE.search(pattern) or not flags_ok:
        raise UnsupportedRbacError(
            f"regular expression {pattern!r} uses syntax the evaluator does not support "
            "(lookaround, backreferences, possessive or atomic groups, \\Z, \\z, \\p, \\Q, \\C, \\s, "
            "POSIX classes, {,n} or flags other than i, m and s)",
            value=pattern,
        )
    try:
        return re.compile(pattern, re.ASCII)
    except re.error as exc:
        raise UnsupportedRbacError(
            f"regular expression {pattern!r} is invalid or unsupported: {exc}", value=pattern
        ) from exc


def _regex_matches(compiled: re.Pattern[str], value: str) -> bool:
    if compiled.flags & re.IGNORECASE and not value.isascii():
        # RE2 folds Unicode case while Python's ASCII mode folds only ASCII letters.
        raise UnsupportedRbacError(
            f"case-insensitive regular expression {compiled.pattern!r} on non-ASCII input {value!r}",
            value=value,
        )
    return compiled.fullmatch(value) is not None


def compile_string(matcher: string_pb2.StringMatcher, where: str) -> Callable[[str], bool]:
    """Envoy's StringMatcher: `ignore_case` applies to exact, prefix, suffix and contains."""
    kind = matcher.WhichOneof("match_pattern")
    fold = _lower if matcher.ignore_case else (lambda v: v)
    if kind == "exact":
        expected = fold(matcher.exact)
        return lambda value: fold(value) == expected
    if kind == "prefix":
        expected = fold(matcher.prefix)
        return lambda value: fold(value).startswith(expected)
    if kind == "suffix":
        expected = fold(matcher.suffix)
        return lambda value: fold(value).endswith(expected)
    if kind == "contains":
        expected = fold(matcher.contains)
        return lambda value: expected in fold(value)
    if kind == "safe_regex":
        compiled = _compile_regex_at(matcher.safe_regex.regex, where)
        return lambda value: _regex_matches(compiled, value)
    raise UnsupportedRbacError(f"{where}: StringMatcher {kind or 'with no pattern'} is not supported", path=where)


def _compile_regex_at(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return compile_regex(pattern)
    except UnsupportedRbacError as exc:
        raise UnsupportedRbacError(f"{where}: {exc}", path=where, value=pattern) from exc


_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")
_INT64 = (-(2**63), 2**63 - 1)


def _simple_atoi(value: str) -> int | None:
    """absl::SimpleAtoi for int64: optional ASCII whitespace around an optionally signed integer."""
    found = _SIMPLE_ATOI.fullmatch(value)
    if not found:
        return None
    number = int(found.group(1))
    return number if _INT64[0] <= number <= _INT64[1] else None


def _header_value_predicate(header: route_components_pb2.HeaderMatcher, where: str) -> Callable[[str], bool]:
    kind = header.WhichOneof("header_match_specifier")
    if kind is None:
        # Envoy treats a matcher with no specifier as `present_match: true`.
        return lambda value: True
    if kind == "present_match":
        present = header.present_match
        return lambda value: present
    if kind == "exact_match":
        # The deprecated exact_match with an empty value matches any value.
        expected = header.exact_match
        return lambda value: not expected or value == expected
    if kind == "safe_regex_match":
        compiled = _compile_regex_at(header.safe_regex_match.regex, where)
        return lambda value: _regex_matches(compiled, value)
    if kind == "range_match":
        start, end = header.range_match.start, header.range_match.end
        return lambda value: (number := _simple_atoi(value)) is not None and start <= number < end
    if kind == "prefix_match":
        return lambda value: value.startswith(header.prefix_match)
    if kind == "suffix_match":
        return lambda value: value.endswith(header.suffix_match)
    if kind == "contains_match":
        return lambda value: header.contains_match in value
    return compile_string(header.string_match, f"{where}.string_match")


def compile_header(header: route_components_pb2.HeaderMatcher, where: str) -> Predicate:
    name = header.name.lower()
    matches_value = _header_value_predicate(header, where)
    kind = header.WhichOneof("header_match_specifier")
    present_kind = kind == "present_match" or kind is None
    present_value = header.present_match if kind == "present_match" else True
    invert = header.invert_match
    missing_as_empty = header.treat_missing_header_as_empty

    def predicate(context: Context) -> bool:
        value = context.headers.get(name)
        if value is None and not missing_as_empty:
            if invert:
                return present_kind and present_value
            return present_kind and not present_value
        return matches_value(value if value is not None else "") != invert

    return predicate


def compile_path(matcher: path_pb2.PathMatcher, where: str) -> Predicate:
    """`url_path`: the `:path` header without query and fragment; no `:path` never matches."""
    if matcher.WhichOneof("rule") != "path":
        raise UnsupportedRbacError(f"{where}: PathMatcher without a path is not supported", path=where)
    matches = compile_string(matcher.path, f"{where}.path")

    def predicate(context: Context) -> bool:
        path = context.headers.get(":path")
        if path is None:
            return False
        cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=len(path))
        return matches(path[:cut])

    return predicate


def compile_cidr(cidr: address_pb2.CidrRange, where: str) -> Callable[[str], bool]:
    try:
        base = ipaddress.ip_address(cidr.address_prefix)
    except ValueError as exc:
        raise InvalidRbacError(
            f"{where}: address_prefix {cidr.address_prefix!r} is not an IP address", path=where
        ) from exc
    length = cidr.prefix_len.value if cidr.HasField("prefix_len") else 0
    if length > base.max_prefixlen:
        raise UnsupportedRbacError(
            f"{where}: prefix_len {length} is longer than an IPv{base.version} address", path=where
        )
    network = ipaddress.ip_network((base, length), strict=False)

    def contains(address: str) -> bool:
        # Envoy compares only addresses of the same IP version; ::ffff:a.b.c.d is IPv6.
        ip = ipaddress.ip_address(address)
        return ip.version == network.version and ip in network

    return contains


def _all(predicates: list[Predicate]) -> Predicate:
    return lambda context: all(p(context) for p in predicates)


def _any(predicates: list[Predicate]) -> Predicate:
    return lambda context: any(p(context) for p in predicates)


def compile_permission(permission: rbac_pb2.Permission, where: str) -> Predicate:
    kind = permission.WhichOneof("rule")
    at = f"{where}.{kind}"
    if kind == "and_rules":
        return _all([compile_permission(p, f"{at}.rules[{i}]") for i, p in enumerate(permission.and_rules.rules)])
    if kind == "or_rules":
        return _any([compile_permission(p, f"{at}.rules[{i}]") for i, p in enumerate(permission.or_rules.rules)])
    if kind == "not_rule":
        inner = compile_permission(permission.not_rule, at)
        return lambda context: not inner(context)
    if kind == "any":
        return lambda context: True
    if kind == "header":
        return compile_header(permission.header, at)
    if kind == "url_path":
        return compile_path(permission.url_path, at)
    if kind == "destination_ip":
        contains = compile_cidr(permission.destination_ip, at)
        return lambda context: contains(context.request.destination_ip)
    if kind == "destination_port":
        port = permission.destination_port
        return lambda context: context.request.destination_port == port
    if kind == "destination_port_range":
        start, end = permission.destination_port_range.start, permission.destination_port_range.end
        if not 0 <= start < end <= 65536:
            raise InvalidRbacError(f"{at}: range [{start}, {end}) is not a valid port range", path=at)
        return lambda context: start <= context.request.destination_port < end
    if kind == "requested_server_name":
        matches = compile_string(permission.requested_server_name, at)
        return lambda context: matches(context.request.sni)
    raise UnsupportedRbacError(f"{where}: permission {kind or 'with no rule'} is not supported", path=where)


def _authenticated(principal: rbac_pb2.Principal.Authenticated, where: str) -> Predicate:
    if not principal.HasField("principal_name"):
        return lambda context: context.request.has_tls
    matches = compile_string(principal.principal_name, f"{where}.principal_name")

    def predicate(context: Context) -> bool:
        request = context.request
        if not request.has_tls:
            return False
        # Envoy tries every URI SAN, then every DNS SAN, then the subject.
        names = (*request.peer_uri_sans, *request.peer_dns_sans, request.peer_subject)
        return any(matches(name) for name in names)

    return predicate


def compile_principal(principal: rbac_pb2.Principal, where: str) -> Predicate:
    kind = principal.WhichOneof("identifier")
    at = f"{where}.{kind}"
    if kind == "and_ids":
        return _all([compile_principal(p, f"{at}.ids[{i}]") for i, p in enumerate(principal.and_ids.ids)])
    if kind == "or_ids":
        return _any([compile_principal(p, f"{at}.ids[{i}]") for i, p in enumerate(principal.or_ids.ids)])
    if kind == "not_id":
        inner = compile_principal(principal.not_id, at)
        return lambda context: not inner(context)
    if kind == "any":
        return lambda context: True
    if kind == "authenticated":
        return _authenticated(principal.authenticated, at)
    if kind in ("source_ip", "direct_remote_ip"):
        # source_ip is the connection's remote address, which is the direct remote address.
        contains = compile_cidr(getattr(principal, kind), at)
        return lambda context: contains(context.request.source_ip)
    if kind == "remote_ip":
        contains = compile_cidr(principal.remote_ip, at)
        return lambda context: contains(context.request.effective_remote_ip)
    if kind == "header":
        return compile_header(principal.header, at)
    if kind == "url_path":
        return compile_path(principal.url_path, at)
    raise UnsupportedRbacError(f"{where}: principal {kind or 'with no identifier'} is not supported", path=where)


def compile_policy(policy: rbac_pb2.Policy, where: str) -> Predicate:
    """Compile a policy, which matches when any permission and any principal match."""
    for condition in ("condition", "checked_condition", "cel_config"):
        if policy.HasField(condition):
            raise UnsupportedRbacError(f"{where}.{condition}: CEL conditions are not supported", path=where)
    permissions = _any([compile_permission(p, f"{where}.permissions[{i}]") for i, p in enumerate(policy.permissions)])
    principals = _any([compile_principal(p, f"{where}.principals[{i}]") for i, p in enumerate(policy.principals)])
    return lambda context: permissions(context) and principals(context)
