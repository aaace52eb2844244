"""Errors of the RBAC evaluator."""

from __future__ import annotations

from controlplane.errors import MeshError


class AuthzError(MeshError):
    """Base for errors of the authorization evaluator."""


class UnsupportedRbacError(AuthzError):
    """RBAC configuration the evaluator cannot evaluate exactly as Envoy would.

    `path` locates the field in the filter configuration, e.g.
    `filter[1].rules.policies["p"].permissions[0].metadata`.
    """


class InvalidRbacError(AuthzError):
    """RBAC configuration that Envoy would reject, such as a CIDR range with a bad address."""


class InvalidRequestError(AuthzError, ValueError):
    """A request description with a malformed field, such as a source IP that is not an address."""
