"""Single requests through the official client's generated API methods, returned as raw JSON.

Responses are read with `_preload_content=False` and parsed here, so callers get the object as
the API server sent it rather than a typed model. Every failure leaves this module as
`KubernetesApiError` with the client or urllib3 error chained: `status` is the HTTP status, or
0 when no response came, and `reason` is the Status reason such as `Conflict` or `NotFound`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from controlplane.errors import KubernetesApiError

# (connect, read) timeouts in seconds, as urllib3 takes them.
Timeout = tuple[float, float]
DEFAULT_TIMEOUT: Timeout = (5.0, 15.0)

MERGE_PATCH = "application/merge-patch+json"


def _status(body: Any) -> dict[str, Any]:
    try:
        document = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def api_error(what: str, exc: Exception) -> KubernetesApiError:
    """Translate a client or connection error of request `what` into `KubernetesApiError`."""
    if isinstance(exc, ApiException):
        status = _status(exc.body)
        reason = status.get("reason") or exc.reason or ""
        detail = status.get("message") or ""
        message = f"{what} failed with HTTP {exc.status} {reason}".rstrip()
        return KubernetesApiError(
            f"{message}: {detail}" if detail else message,
            resource=what,
            status=exc.status or 0,
            reason=reason,
        )
    return KubernetesApiError(
        f"{what} failed: the API server is unreachable ({type(exc).__name__})",
        resource=what,
        status=0,
        reason="Unreachable",
    )


def call_json(
    call: Callable[..., Any],
    *args: Any,
    what: str,
    timeout: Timeout = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call a generated API method such as `CoreV1Api.read_namespaced_pod` and return its JSON body.

    `what` names the request in errors, for example `GET pods payments/ledger-0`.
    """
    try:
        response = call(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
        body = response.data
    except ApiException as exc:
        raise api_error(what, exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise api_error(what, exc) from exc
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise KubernetesApiError(f"{what} returned a body that is not JSON", resource=what, status=200, reason="BadBody") from exc
    if not isinstance(document, dict):
        raise KubernetesApiError(f"{what} returned JSON that is not an object", resource=what, status=200, reason="BadBody")
    return document
