"""structlog set-up shared by the control plane, the agent and meshctl.

Events are key-value pairs with dotted names (`ca.csr.signed`). A last line of defence drops
values of keys that name secrets, so that a careless `log.info(..., token=t)` never reaches
the output; code must still not pass secrets to a logger in the first place.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

# Keys whose values are replaced before rendering. Matching is on the whole key, lower case.
SECRET_KEYS = frozenset(
    {"private_key", "key_pem", "token", "join_token", "password", "secret", "csr_pem"}
)
REDACTED = "[redacted]"


def redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the values of keys listed in `SECRET_KEYS`."""
    for key in event.keys() & SECRET_KEYS:
        event[key] = REDACTED
    return event


def configure(*, level: str = "info", json: bool = False, stream: TextIO | None = None) -> None:
    """Configure structlog for a process: level name, JSON or console lines, output stream."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not one of debug, info, warning, error")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """Return a bound logger tagged with the component `name`."""
    return structlog.get_logger(component=name)
