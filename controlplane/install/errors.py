"""Errors of rendering and applying the install objects."""

from __future__ import annotations

from controlplane.errors import MeshError


class InstallError(MeshError):
    """The install objects cannot be read, rendered or applied.

    `object` names the object involved, as `kind/name`, when there is one.
    """


class RolloutTimeoutError(InstallError):
    """The control plane Deployment did not become ready in time; `ready` and `desired` are its replica counts."""
