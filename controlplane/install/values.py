"""The choices an admin makes at install time, checked where they are parsed.

Each `parse_*` function takes the text of a command-line flag and raises `InstallError` with
the value and the accepted form. A field left None keeps the value the manifests give it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.errors import SpiffeIdError
from controlplane.identity.spiffe_id import validate_trust_domain
from controlplane.install.errors import InstallError
from controlplane.model import names
from controlplane.model.meshconfig import READERS, format_duration, parse_duration
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE

# The Secret that contains a CA generated at install time.
GENERATED_CA_SECRET = "idmesh-ca"
WEBHOOK_FAILURE_POLICIES = ("Fail", "Ignore")
# A container image reference: no whitespace, and not starting with a dash or a slash.
_IMAGE = re.compile(r"[A-Za-z0-9][^\s]*")


@dataclass(frozen=True, slots=True)
class CaSource:
    """Where the control plane's CA comes from: always a Secret in the root namespace.

    `generated` means meshctl creates the CA and the Secret `idmesh-ca` when it does not exist
    yet. Otherwise the admin has created `secret_name` from a CA directory beforehand.
    """

    secret_name: str
    generated: bool

    def __str__(self) -> str:
        return "generated" if self.generated else f"secret:{self.secret_name}"


GENERATED = CaSource(GENERATED_CA_SECRET, generated=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallValues:
    namespace: str = DEFAULT_ROOT_NAMESPACE
    trust_domain: str | None = None
    # A Go-style duration such as `24h`, written into the mesh ConfigMap as given.
    cert_ttl: str | None = None
    image: str | None = None
    # The image of the sidecar and init containers that the webhook injects.
    proxy_image: str | None = None
    replicas: int | None = None
    ca_source: CaSource = GENERATED
    webhook_failure_policy: str | None = None
    # The base64 PEM roots that verify the webhook's serving certificate; None leaves it unset.
    ca_bundle: str | None = None


def parse_ca_source(text: str) -> CaSource:
    """Parse `generated` or `secret:NAME`."""
    if text == "generated":
        return GENERATED
    kind, colon, name = text.partition(":")
    if kind != "secret" or not colon:
        raise InstallError(f"invalid CA source {text!r}: use generated or secret:NAME", value=text)
    if problem := names.dns1123_subdomain(name):
        raise InstallError(f"invalid CA source {text!r}: the Secret name {name!r} {problem}", value=text)
    return CaSource(name, generated=False)


def parse_namespace(text: str) -> str:
    if problem := names.dns1123_label(text):
        raise InstallError(f"invalid namespace {text!r}: it {problem}", value=text)
    return text


# Reasons of `validate_trust_domain` that are worded for a whole SPIFFE ID, reworded for a trust domain.
_TRUST_DOMAIN_REASONS = {
    "port": "a trust domain has no port; remove ':' and what follows",
    "userinfo": "a trust domain has no userinfo; remove '@' and what precedes it",
}


def parse_trust_domain(text: str) -> str:
    if text.startswith("spiffe://"):
        raise InstallError(
            f"invalid trust domain {text!r}: it is a SPIFFE ID; write the trust domain alone, "
            f"such as {text.removeprefix('spiffe://')}",
            value=text,
        )
    try:
        validate_trust_domain(text)
    except SpiffeIdError as exc:
        # The identity module's message starts "invalid SPIFFE ID '...': "; keep only its reason.
        reason = _TRUST_DOMAIN_REASONS.get(exc.rule, exc.message.split(": ", 1)[-1])
        raise InstallError(f"invalid trust domain {text!r}: {reason}", value=text) from exc
    return text


def parse_go_duration(text: str) -> float:
    """Parse a duration such as `90s`, `5m` or `1h30m` into seconds greater than zero."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InstallError(
            f"invalid duration {text!r}: write a number and a unit (h, m, s, ms), such as 90s, 5m or 24h", value=text
        ) from exc
    if seconds <= 0:
        raise InstallError(f"invalid duration {text!r}: it must be longer than zero", value=text)
    return seconds


def parse_cert_ttl(text: str) -> float:
    """Parse a workload certificate lifetime, checked by the rule the mesh settings apply to it."""
    seconds = parse_go_duration(text)
    _field, read_ttl = READERS["defaultCertificateTTL"]
    _value, problem = read_ttl(format_duration(seconds))
    if problem:
        raise InstallError(f"invalid certificate TTL: {problem}", value=text)
    return seconds


def parse_replicas(text: str) -> int:
    try:
        replicas = int(text)
    except ValueError as exc:
        raise InstallError(f"invalid replica count {text!r}: write a whole number of at least 1", value=text) from exc
    if replicas < 1:
        raise InstallError(f"invalid replica count {replicas}: the control plane needs at least 1 replica", value=replicas)
    return replicas


def parse_image(text: str) -> str:
    if not _IMAGE.fullmatch(text):
        raise InstallError(
            f"invalid image {text!r}: write a reference such as ghcr.io/idmesh/controlplane:0.1.0, without spaces",
            value=text,
        )
    return text
