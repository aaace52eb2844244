"""Envoy matchers for the values of AuthorizationPolicy fields, with Istio's match syntax.

A value is an exact string, `prefix*`, `*suffix` or `*` alone (present, any value). Envoy's
StringMatcher rejects an empty prefix or suffix, so `*` becomes the regular expression `.+`,
as Istio generates it. Every regular expression here is built from escaped literals, so it is
valid RE2 whatever the policy contains.
"""

from __future__ import annotations

import ipaddress
import re

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from controlplane.identity.spiffe_id import SCHEME_PREFIX
from controlplane.model.types import DEFAULT_TRUST_DOMAIN, MeshConfig

METHOD_HEADER = ":method"
AUTHORITY_HEADER = ":authority"
# Regular expression for "any non-empty value", used for `*` where Envoy has no presence match.
ANY_VALUE = ".+"


class MatcherValueError(ValueError):
    """A policy value that cannot become an Envoy matcher; the message says what is accepted."""


def regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def string_matcher(value: str, *, prefix: str = "", ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Match `value` in Istio's syntax, with `prefix` prepended to what the pattern names.

    `prefix` is `spiffe://` for principals: `ns/a/*` then means `spiffe://ns/a/` as a prefix,
    and `*/sa/b` means any string that starts with `spiffe://` and ends with `/sa/b`.
    """
    if value == "*":
        return regex(ANY_VALUE)
    if value.startswith("*"):
        if prefix:
            return regex(re.escape(prefix) + ".*" + re.escape(value[1:]))
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def header_matcher(name: str, value: str, *, ignore_case: bool = False) -> route_components_pb2.HeaderMatcher:
    """Match header `name` against `value`; `*` requires the header to be present."""
    if value == "*":
        return route_components_pb2.HeaderMatcher(name=name, present_match=True)
    return route_components_pb2.HeaderMatcher(
        name=name, string_match=string_matcher(value, ignore_case=ignore_case)
    )


def path_matcher(value: str) -> path_pb2.PathMatcher:
    """Match the request path without its query string, which is how Envoy's `url_path` works."""
    if "{" in value or "}" in value:
        raise MatcherValueError(
            f"path {value!r} uses a path template, which idmesh does not support; "
            'use an exact path, "prefix*", "*suffix" or "*"'
        )
    return path_pb2.PathMatcher(path=string_matcher(value))


def cidr_range(value: str) -> address_pb2.CidrRange:
    """Parse `1.2.3.4`, `10.0.0.0/8` or an IPv6 form; a bare address is a single-host range."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise MatcherValueError(
            f"{value!r} is not an IP address or CIDR range; use a form such as 10.1.0.0/16 or 10.1.2.3"
        ) from exc
    address = value.split("/", 1)[0]
    return address_pb2.CidrRange(
        address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen)
    )


def port_number(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 65535:
        raise MatcherValueError(f"{value!r} is not a port number; use an integer from 1 to 65535")
    return int(value)


def authenticated(matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher)
    )


def namespace_principal(namespace: str) -> rbac_pb2.Principal:
    """Match peers whose SPIFFE ID has `/ns/<namespace>/` in its path (`*` for any characters)."""
    pattern = ".*".join(re.escape(part) for part in namespace.split("*"))
    return authenticated(regex(f".*/ns/{pattern}/.*"))


def expand_trust_domains(principal: str, config: MeshConfig) -> tuple[str, ...]:
    """Rewrite `<td>/ns/...` for the mesh trust domain and each of its aliases.

    A principal whose trust domain is the mesh's, one of its aliases, or `cluster.local` (which
    stands for the mesh's own trust domain) matches a peer from any of them, because aliases
    name the same mesh under another name. A principal that starts with `*`, or names another
    trust domain, is kept as written.
    """
    if principal.startswith("*") or "/" not in principal:
        return (principal,)
    trust_domain, _, rest = principal.partition("/")
    if trust_domain not in config.trust_domains and trust_domain != DEFAULT_TRUST_DOMAIN:
        return (principal,)
    expanded: list[str] = []
    for domain in config.trust_domains:
        candidate = f"{domain}/{rest}"
        if candidate not in expanded:
            expanded.append(candidate)
    return tuple(expanded)


def principal_matchers(principal: str, config: MeshConfig) -> list[rbac_pb2.Principal]:
    """Match the peer's URI SAN against `principal` in each trust domain it stands for."""
    return [
        authenticated(string_matcher(value, prefix=SCHEME_PREFIX))
        for value in expand_trust_domains(principal, config)
    ]
