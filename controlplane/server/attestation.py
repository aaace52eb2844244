"""Attestors: decide which SPIFFE ID a caller of the CA has proven, from its call credentials.

An attestor looks at the call metadata and the verified TLS peer. It returns None when the call
carries no credential of its kind, returns the proven SPIFFE ID, or raises `AttestationError`
when the credential is present but does not prove anything. `FirstCredentialAttestor` calls a
list of attestors in order and uses the first that finds its credential, so a rejected token
never falls through to a weaker check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from controlplane.errors import AttestationError
from controlplane.identity.join_token import JoinTokenIssuer
from controlplane.identity.spiffe_id import SpiffeId

AUTHORIZATION = "authorization"
BEARER_PREFIX = "bearer "


class Attestor(Protocol):
    def attest(self, metadata: Mapping[str, str], peer: SpiffeId | None, now: datetime) -> SpiffeId | None:
        """Return the identity the credential proves, None without a credential, or raise."""


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """Return the token of an `authorization: Bearer <token>` entry, or None without one.

    Raise `AttestationError` for an authorization entry with another scheme or no token.
    """
    value = metadata.get(AUTHORIZATION)
    if value is None:
        return None
    if not value.lower().startswith(BEARER_PREFIX):
        scheme = value.split(" ", 1)[0]
        raise AttestationError(
            f"unsupported authorization scheme {scheme!r}; send 'authorization: Bearer <token>'",
            reason="unsupported-authorization-scheme",
        )
    token = value[len(BEARER_PREFIX):].strip()
    if not token:
        raise AttestationError("the authorization bearer token is empty", reason="empty-token")
    return token


class JoinTokenAttestor:
    """Prove an identity with a single-use join token minted by `controlplane token create`."""

    def __init__(self, issuer: JoinTokenIssuer) -> None:
        self._issuer = issuer

    def attest(self, metadata: Mapping[str, str], peer: SpiffeId | None, now: datetime) -> SpiffeId | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        # A Kubernetes ServiceAccount token is a bearer token too. Chains that accept both put
        # `KubernetesTokenAttestor` first: it takes JWTs and leaves join tokens, which are not JWTs, here.
        return self._issuer.redeem(token, now=now)


class PeerSvidAttestor:
    """Prove an identity with the client X.509-SVID that TLS verified against the trust bundle.

    This is how a workload renews: the new certificate is for the identity it already holds.
    """

    def __init__(self, trust_domain: str) -> None:
        self._trust_domain = trust_domain

    def attest(self, metadata: Mapping[str, str], peer: SpiffeId | None, now: datetime) -> SpiffeId | None:
        if peer is None:
            return None
        if not peer.member_of(self._trust_domain):
            raise AttestationError(
                f"client SVID {peer} is not in trust domain {self._trust_domain!r}",
                reason="other-trust-domain",
            )
        return peer


# What a caller without a credential is told to send, by the chain that rejects it.
MISSING_JOIN_TOKEN = (
    "no credential: send 'authorization: Bearer <join token>' metadata, or present "
    "your current SVID as the TLS client certificate on the mutual TLS port"
)
MISSING_SERVICE_ACCOUNT_TOKEN = (
    "no credential: send 'authorization: Bearer <token>' metadata with the pod's projected "
    "ServiceAccount token (audience idmesh) or a join token, or present your current SVID "
    "as the TLS client certificate on the mutual TLS port"
)


class FirstCredentialAttestor:
    """Call each attestor in order; the first one that finds its credential decides.

    `missing_message` is the error for a call that carries no credential any attestor takes,
    so it names the credentials this chain accepts.
    """

    def __init__(self, attestors: Sequence[Attestor], *, missing_message: str = MISSING_JOIN_TOKEN) -> None:
        self._attestors = tuple(attestors)
        self._missing_message = missing_message

    def attest(self, metadata: Mapping[str, str], peer: SpiffeId | None, now: datetime) -> SpiffeId:
        for attestor in self._attestors:
            identity = attestor.attest(metadata, peer, now)
            if identity is not None:
                return identity
        raise AttestationError(self._missing_message, reason="missing-credential")
