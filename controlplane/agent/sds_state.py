"""SDS secrets and the per-stream xDS state machines, with no I/O.

A stream object takes a request (or a new `SecretSet`) and returns the responses to send plus
the protocol events seen, so the gRPC servicer in `sds_server` only moves messages and logs.

State of the world (StreamSecrets): a request whose `response_nonce` is not the last nonce sent
on the stream is stale and ignored. A request carrying the last nonce ACKs (no `error_detail`)
or NACKs (with `error_detail`) that response. The stream sends a response whenever the secrets
for the subscribed names differ from what it last sent, so a NACKed version is never resent
as is. Only existing secrets are sent, and none at all while no requested name exists, because
Envoy treats a response without its secret as a rejected update.

Incremental (DeltaSecrets): the stream tracks, per subscribed name, the version it last sent
(starting from `initial_resource_versions`), sends resources whose version differs and lists
names that disappeared in `removed_resources`.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.agent.credentials import Svid
from controlplane.errors import XdsError
from controlplane.translate.resources import ROOTCA_SECRET, SECRET, WORKLOAD_SECRET


def workload_secret(svid: Svid) -> secret_pb2.Secret:
    """Return the `default` secret: the SVID chain (leaf first) and its private key."""
    return secret_pb2.Secret(
        name=WORKLOAD_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=svid.chain_pem()),
            private_key=base_pb2.DataSource(inline_bytes=svid.key_pem()),
        ),
    )


def rootca_secret(bundle_pem: bytes) -> secret_pb2.Secret:
    """Return the `ROOTCA` secret: a validation context trusting the bundle's roots."""
    return secret_pb2.Secret(
        name=ROOTCA_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle_pem),
        ),
    )


@dataclass(frozen=True, slots=True)
class SecretSet:
    """The secrets the agent serves, by name, under one version string."""

    version: str = ""
    secrets: Mapping[str, secret_pb2.Secret] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_svid(cls, svid: Svid, *, version: str) -> SecretSet:
        secrets = {WORKLOAD_SECRET: workload_secret(svid), ROOTCA_SECRET: rootca_secret(svid.bundle_pem())}
        return cls(version=version, secrets=MappingProxyType(secrets))


@dataclass(frozen=True, slots=True)
class Ack:
    version: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Nack:
    nonce: str
    # The version the client still runs, which is the last one it accepted.
    accepted_version: str
    message: str


@dataclass(frozen=True, slots=True)
class UnknownNames:
    names: frozenset[str]


Event = Ack | Nack | UnknownNames


def _check_type_url(type_url: str) -> None:
    # Envoy always sets type_url on SDS requests; an empty one is tolerated on later requests.
    if type_url not in ("", SECRET):
        raise XdsError(
            f"type_url {type_url!r} is not served on the SDS stream; only {SECRET!r} is",
            type_url=type_url,
        )


def _unknown(names: frozenset[str], secrets: SecretSet) -> list[Event]:
    missing = frozenset(n for n in names if n not in secrets.secrets)
    return [UnknownNames(missing)] if missing else []


class SotwStream:
    """One StreamSecrets stream: the names Envoy subscribed to and what was last sent."""

    def __init__(self) -> None:
        self._nonces = itertools.count(1)
        self.names: frozenset[str] = frozenset()
        self.last_nonce = ""
        self.last_sent: dict[str, bytes] | None = None

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest, secrets: SecretSet
    ) -> tuple[list[discovery_pb2.DiscoveryResponse], list[Event]]:
        """Apply one request; return the responses to send and the events it carried."""
        _check_type_url(request.type_url)
        events: list[Event] = []
        if request.response_nonce:
            if request.response_nonce != self.last_nonce:
                return [], []
            if request.HasField("error_detail"):
                events.append(Nack(request.response_nonce, request.version_info, request.error_detail.message))
            else:
                events.append(Ack(request.version_info, request.response_nonce))
        names = frozenset(request.resource_names)
        if names != self.names:
            events.extend(_unknown(names, secrets))
        self.names = names
        return self._respond_if_changed(secrets), events

    def on_secrets(self, secrets: SecretSet) -> list[discovery_pb2.DiscoveryResponse]:
        """Return the push for a new secret set, or nothing when this stream's secrets are unchanged."""
        return self._respond_if_changed(secrets)

    def _respond_if_changed(self, secrets: SecretSet) -> list[discovery_pb2.DiscoveryResponse]:
        content = {
            name: secrets.secrets[name].SerializeToString(deterministic=True)
            for name in sorted(self.names)
            if name in secrets.secrets
        }
        if not content or content == self.last_sent:
            return []
        self.last_sent = content
        self.last_nonce = str(next(self._nonces))
        response = discovery_pb2.DiscoveryResponse(
            version_info=secrets.version, type_url=SECRET, nonce=self.last_nonce
        )
        for name in content:
            response.resources.add().Pack(secrets.secrets[name])
        return [response]


def resource_version(secret: secret_pb2.Secret) -> str:
    """Return a content version for one secret: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(secret.SerializeToString(deterministic=True)).hexdigest()[:16]


class DeltaStream:
    """One DeltaSecrets stream: subscribed names and the version of each as the client has it."""

    def __init__(self) -> None:
        self._nonces = itertools.count(1)
        self.names: set[str] = set()
        self.client_versions: dict[str, str] = {}
        self.sent_nonces: set[str] = set()

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest, secrets: SecretSet
    ) -> tuple[list[discovery_pb2.DeltaDiscoveryResponse], list[Event]]:
        """Apply one request; return the responses to send and the events it carried."""
        _check_type_url(request.type_url)
        events: list[Event] = []
        if request.response_nonce:
            if request.response_nonce not in self.sent_nonces:
                return [], []
            self.sent_nonces.discard(request.response_nonce)
            if request.HasField("error_detail"):
                events.append(Nack(request.response_nonce, "", request.error_detail.message))
            else:
                events.append(Ack(secrets.version, request.response_nonce))
        if not self.names and not self.client_versions:
            self.client_versions.update(request.initial_resource_versions)
        added = frozenset(request.resource_names_subscribe) - self.names
        self.names |= added
        for name in request.resource_names_unsubscribe:
            self.names.discard(name)
            self.client_versions.pop(name, None)
        events.extend(_unknown(added, secrets))
        return self._respond_if_changed(secrets), events

    def on_secrets(self, secrets: SecretSet) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Return the push for a new secret set, or nothing when this stream's secrets are unchanged."""
        return self._respond_if_changed(secrets)

    def _respond_if_changed(self, secrets: SecretSet) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        changed: list[discovery_pb2.Resource] = []
        removed: list[str] = []
        for name in sorted(self.names):
            secret = secrets.secrets.get(name)
            if secret is None:
                if name in self.client_versions:
                    removed.append(name)
                    del self.client_versions[name]
                continue
            version = resource_version(secret)
            if self.client_versions.get(name) != version:
                resource = discovery_pb2.Resource(name=name, version=version)
                resource.resource.Pack(secret)
                changed.append(resource)
                self.client_versions[name] = version
        if not changed and not removed:
            return []
        nonce = str(next(self._nonces))
        self.sent_nonces.add(nonce)
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=secrets.version,
            type_url=SECRET,
            nonce=nonce,
            resources=changed,
            removed_resources=removed,
        )
        return [response]
