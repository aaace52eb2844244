"""Settings of the translator that do not come from the mesh state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    """Knobs for one translation; the defaults suit a sidecar in a pod."""

    # Where inbound access logs go. `/dev/stdout` puts them in the sidecar's container log.
    access_log_path: str = "/dev/stdout"
    # TCP connect timeout of every cluster, in seconds (Istio's default is 10 s).
    connect_timeout_seconds: float = 10.0


DEFAULT_OPTIONS = TranslateOptions()
