"""Authorization decisions computed from the Envoy RBAC configuration a proxy receives."""

from controlplane.authz.errors import AuthzError, InvalidRbacError, InvalidRequestError, UnsupportedRbacError
from controlplane.authz.evaluate import NO_ALLOW_MATCHED, Decision, EngineResult, evaluate
from controlplane.authz.request import Request

__all__ = [
    "AuthzError",
    "Decision",
    "EngineResult",
    "InvalidRbacError",
    "InvalidRequestError",
    "NO_ALLOW_MATCHED",
    "Request",
    "UnsupportedRbacError",
    "evaluate",
]
