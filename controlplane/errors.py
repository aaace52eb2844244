"""The error hierarchy shared by every part of idmesh.

Every error the mesh raises on purpose derives from `MeshError`. Subclasses carry the facts a
caller needs to act (the object, the field path, the node ID) as attributes, and the message
repeats them in words, so that logs and CLI output need no extra formatting.
"""

from __future__ import annotations

from typing import Any


class MeshError(Exception):
    """Root of all idmesh errors.

    Keyword fields become attributes and are listed by `fields()` for structured logs.
    """

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self._fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def fields(self) -> dict[str, Any]:
        """Return the structured fields given at construction."""
        return dict(self._fields)

    def __str__(self) -> str:
        return self.message


class ConfigError(MeshError):
    """Invalid command-line options, settings files or mesh settings."""


class IdentityError(MeshError):
    """Base for SPIFFE ID, SVID and trust bundle errors."""


class SpiffeIdError(IdentityError, ValueError):
    """A string that is not a valid SPIFFE ID; `rule` names the rule it breaks."""


class SvidError(IdentityError, ValueError):
    """A certificate that breaks the X.509-SVID profile."""


class UnsupportedKeyError(IdentityError, ValueError):
    """A public key the mesh does not accept; `key_type` describes it and `reason` names the rule."""


class BundleError(IdentityError, ValueError):
    """A trust bundle that cannot be built or parsed."""


class CAError(IdentityError):
    """The certificate authority cannot be created, loaded or used."""


class CSRRejected(IdentityError):
    """A certificate signing request that the CA refuses to sign; `reason` says why."""


class AttestationError(IdentityError):
    """A credential (join token, ServiceAccount token) that does not prove the claimed identity."""


class ValidationError(MeshError, ValueError):
    """An invalid Kubernetes object or field.

    `kind`, `namespace`, `name` identify the object; `path` is the field path such as
    `spec.rules[0].to[0].operation.methods[1]`; `value` is the offending value.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        namespace: str = "",
        name: str = "",
        path: str = "",
        value: Any = None,
        **fields: Any,
    ) -> None:
        prefix = ""
        if kind or name:
            ref = f"{namespace}/{name}" if namespace else name
            prefix = f"{kind} {ref}: " if kind else f"{ref}: "
        location = f"{path}: " if path else ""
        super().__init__(
            f"{prefix}{location}{message}",
            kind=kind,
            namespace=namespace,
            name=name,
            path=path,
            value=value,
            detail=message,
            **fields,
        )


class TranslationError(MeshError):
    """Mesh state that cannot become valid Envoy configuration; names the object at fault."""


class XdsError(MeshError):
    """A protocol violation or refused request on an xDS stream."""


class SourceError(MeshError):
    """A configuration source (files, Kubernetes API) that cannot be read."""


class KubernetesApiError(SourceError):
    """A Kubernetes API request that failed.

    `resource` is the collection path, `status` the HTTP status (0 when no response came) and
    `reason` the API's reason word such as `Expired` or `NotFound`.
    """


class KubernetesConfigError(SourceError):
    """No usable connection settings: neither in-cluster nor a valid kubeconfig."""
