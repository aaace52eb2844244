"""Errors raised by the mesh-agent."""

from __future__ import annotations

from controlplane.errors import MeshError


class AgentError(MeshError):
    """Base for mesh-agent failures."""


class CAClientError(AgentError):
    """A certificate request that failed; `target` is the CA address, `code` the gRPC status name.

    `retryable` is True for failures that may pass on their own (server unavailable, deadline
    exceeded) and False for refusals that need an operator (bad token, wrong identity).
    """


class EnvoyError(AgentError):
    """Envoy could not be started or kept running."""
