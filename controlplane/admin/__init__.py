"""Admin HTTP server: health, readiness, Prometheus metrics and the debug JSON API."""

from controlplane.admin.server import AdminServer, CheckResult

__all__ = ["AdminServer", "CheckResult"]
