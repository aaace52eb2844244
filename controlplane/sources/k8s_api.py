"""Blocking list, watch and discovery requests through the official client's `ApiClient`.

Responses are read as raw JSON rather than the client's typed models, so the store keeps each
object exactly as the API server sent it, and custom resources need no separate code path.
Every failure leaves this module as `KubernetesApiError` with the client or urllib3 error chained.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from controlplane.errors import KubernetesApiError
from controlplane.sources.k8s_resources import ResourceKind

# Request timeouts: (connect, read) in seconds, as urllib3 takes them.
Timeout = tuple[float, float]


def _api_error(path: str, exc: Exception) -> KubernetesApiError:
    if isinstance(exc, ApiException):
        reason = _status_reason(exc.body) or (exc.reason or "")
        return KubernetesApiError(
            f"GET {path} failed with HTTP {exc.status} {reason}".rstrip(),
            resource=path,
            status=exc.status or 0,
            reason=reason,
        )
    return KubernetesApiError(
        f"GET {path} failed: the API server is unreachable ({type(exc).__name__})",
        resource=path,
        status=0,
        reason="Unreachable",
    )


def _status_reason(body: Any) -> str:
    """Return the `reason` of a Status body, or "" if the body is not one."""
    try:
        status = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return ""
    return status.get("reason", "") if isinstance(status, dict) else ""


def _get(api_client: ApiClient, path: str, query: list[tuple[str, Any]], timeout: Timeout) -> urllib3.BaseHTTPResponse:
    """Send a GET and return the unread urllib3 response, or raise `KubernetesApiError`."""
    request = api_client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    try:
        response = api_client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=response.data.decode("utf-8", "replace"), data=None)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _api_error(path, exc) from exc
    return response.response


def _read_json(response: urllib3.BaseHTTPResponse, path: str) -> dict[str, Any]:
    try:
        document = json.loads(response.data)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _api_error(path, exc) from exc
    except ValueError as exc:
        raise KubernetesApiError(f"GET {path} returned a body that is not JSON", resource=path, status=200, reason="BadBody") from exc
    if not isinstance(document, dict):
        raise KubernetesApiError(f"GET {path} returned JSON that is not an object", resource=path, status=200, reason="BadBody")
    return document


def is_served(api_client: ApiClient, kind: ResourceKind, timeout: Timeout) -> bool:
    """Return whether the API server serves `kind`, from the discovery document of its group version.

    A 404 for the group version means the CRD is not installed. Other failures raise.
    """
    path = kind.group_version_path
    try:
        document = _read_json(_get(api_client, path, [], timeout), path)
    except KubernetesApiError as exc:
        if exc.status == 404:
            return False
        raise
    return any(resource.get("name") == kind.plural for resource in document.get("resources", []))


def list_objects(api_client: ApiClient, kind: ResourceKind, timeout: Timeout) -> tuple[list[dict[str, Any]], str]:
    """List the collection and return its items (apiVersion and kind set) and resourceVersion."""
    query: list[tuple[str, Any]] = []
    if kind.field_selector:
        query.append(("fieldSelector", kind.field_selector))
    document = _read_json(_get(api_client, kind.path, query, timeout), kind.path)
    items = [kind.complete(item) for item in document.get("items") or [] if isinstance(item, dict)]
    resource_version = (document.get("metadata") or {}).get("resourceVersion", "")
    return items, resource_version


def open_watch(
    api_client: ApiClient,
    kind: ResourceKind,
    *,
    resource_version: str,
    timeout_seconds: int,
    timeout: Timeout,
) -> urllib3.BaseHTTPResponse:
    """Start a watch from `resource_version`, which the server ends after `timeout_seconds`."""
    query: list[tuple[str, Any]] = [
        ("watch", True),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", True),
        ("timeoutSeconds", timeout_seconds),
    ]
    if kind.field_selector:
        query.append(("fieldSelector", kind.field_selector))
    return _get(api_client, kind.path, query, timeout)


def iter_events(response: urllib3.BaseHTTPResponse, kind: ResourceKind) -> Iterator[dict[str, Any]]:
    """Yield the watch events of a response, one JSON object per line, until the stream ends."""
    try:
        for line in iter_resp_lines(response):
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise KubernetesApiError(
                    f"watch of {kind.path} sent a line that is not JSON", resource=kind.path, status=200, reason="BadEvent"
                ) from exc
            if isinstance(event, dict):
                yield event
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _api_error(kind.path, exc) from exc
