"""SPIFFE IDs as defined by the SPIFFE ID specification (SPIFFE-ID.md, sections 2 and 3).

A SPIFFE ID is `spiffe://<trust domain><path>`. The trust domain is lower-case letters, digits,
`.`, `-` and `_`. The path is zero or more `/segment` parts whose characters are letters, digits,
`.`, `-` and `_`; a segment is never empty, `.` or `..`, and the path has no trailing slash.
Percent-encoding, query, fragment, port and userinfo are not allowed, and the whole ID is at most
2048 bytes. Workloads in idmesh use the path `/ns/<namespace>/sa/<service account>`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from controlplane.errors import SpiffeIdError

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
PATH_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


def _reject(value: str, rule: str, message: str) -> SpiffeIdError:
    shown = value if len(value) <= 120 else value[:117] + "..."
    return SpiffeIdError(f"invalid SPIFFE ID {shown!r}: {message}", value=value, rule=rule)


def validate_trust_domain(name: str, *, original: str | None = None) -> None:
    """Raise `SpiffeIdError` unless `name` is a valid trust domain name."""
    shown = original if original is not None else name
    if not name:
        raise _reject(shown, "trust-domain-empty", "the trust domain is empty")
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise _reject(shown, "trust-domain-too-long", f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if "@" in name:
        raise _reject(shown, "userinfo", "userinfo (user@) is not allowed in a SPIFFE ID")
    if ":" in name:
        raise _reject(shown, "port", "a port is not allowed in a SPIFFE ID")
    bad = sorted(set(name) - TRUST_DOMAIN_CHARS)
    if bad:
        raise _reject(
            shown,
            "trust-domain-chars",
            f"the trust domain contains {bad[0]!r}; use lower-case letters, digits, '.', '-' and '_'",
        )


def _validate_path(path: str, original: str) -> tuple[str, ...]:
    if not path:
        return ()
    if path.endswith("/"):
        raise _reject(original, "trailing-slash", "the path ends with '/'")
    segments = tuple(path[1:].split("/"))
    for segment in segments:
        if segment == "":
            raise _reject(original, "empty-segment", "the path has an empty segment ('//')")
        if segment in (".", ".."):
            raise _reject(original, "dot-segment", f"the path has a {segment!r} segment")
        if "%" in segment:
            raise _reject(original, "percent-encoding", "percent-encoding is not allowed in a SPIFFE ID")
        bad = sorted(set(segment) - PATH_SEGMENT_CHARS)
        if bad:
            raise _reject(
                original,
                "path-chars",
                f"path segment {segment!r} contains {bad[0]!r}; use letters, digits, '.', '-' and '_'",
            )
    return segments


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A parsed, valid SPIFFE ID. Create with `SpiffeId.parse` or `SpiffeId.for_workload`."""

    trust_domain: str
    path: str = ""

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        """Parse and validate `value`; raise `SpiffeIdError` naming the rule it breaks."""
        if not isinstance(value, str):
            raise TypeError(f"a SPIFFE ID must be a str, not {type(value).__name__}")
        if len(value.encode()) > MAX_ID_BYTES:
            raise _reject(value, "too-long", f"the ID is longer than {MAX_ID_BYTES} bytes")
        if not value:
            raise _reject(value, "empty", "the ID is empty")
        if not value.startswith(SCHEME_PREFIX):
            scheme = value.split(":", 1)[0] if ":" in value else ""
            if scheme.lower() == "spiffe":
                raise _reject(value, "scheme", "the scheme must be lower-case 'spiffe://'")
            raise _reject(value, "scheme", "the ID must start with 'spiffe://'")
        rest = value[len(SCHEME_PREFIX):]
        if "?" in rest:
            raise _reject(value, "query", "a query ('?') is not allowed in a SPIFFE ID")
        if "#" in rest:
            raise _reject(value, "fragment", "a fragment ('#') is not allowed in a SPIFFE ID")
        trust_domain, slash, path = rest.partition("/")
        if "%" in trust_domain:
            raise _reject(value, "percent-encoding", "percent-encoding is not allowed in a SPIFFE ID")
        validate_trust_domain(trust_domain, original=value)
        _validate_path(slash + path, value)
        return cls(trust_domain=trust_domain, path=slash + path)

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """Build `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`, validated."""
        for label, part in (("namespace", namespace), ("service account", service_account)):
            if not part or "/" in part:
                raise SpiffeIdError(
                    f"invalid {label} {part!r} for a workload SPIFFE ID: it must be one non-empty path segment",
                    value=part,
                    rule="workload-segment",
                )
        return cls.parse(f"{SCHEME_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}")

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The namespace of a `/ns/<ns>/sa/<sa>` ID, else None."""
        parts = self.segments
        return parts[1] if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa" else None

    @property
    def service_account(self) -> str | None:
        """The service account of a `/ns/<ns>/sa/<sa>` ID, else None."""
        parts = self.segments
        return parts[3] if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa" else None

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"
