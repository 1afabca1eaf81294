"""Shared fixtures: real podman and dockerd 20.10 sockets, started once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.enginekit import dockerd, podman_service


@pytest.fixture(scope="session", autouse=True)
def _watchdog_units_stay_in_tmp() -> Iterator[None]:
    """Installs set up a watchdog timer; a test's never lands in the host's systemd."""
    from appliance.site.watchdog_units import UNIT_DIR_ENV
    old = os.environ.get(UNIT_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="appliance-units-") as d:
        os.environ[UNIT_DIR_ENV] = d
        yield
    if old is None:
        os.environ.pop(UNIT_DIR_ENV, None)
    else:
        os.environ[UNIT_DIR_ENV] = old


@pytest.fixture(scope="session")
def podman_url() -> Iterator[str]:
    with podman_service() as url:
        yield url


@pytest.fixture(scope="session")
def dockerd_url() -> Iterator[str]:
    with dockerd() as url:
        yield url


@pytest.fixture(params=["podman", "docker-20.10"])
def engine_url(request: pytest.FixtureRequest) -> str:
    """Each engine test runs against podman's Docker-compatible socket and dockerd 20.10."""
    name = "podman_url" if request.param == "podman" else "dockerd_url"
    return str(request.getfixturevalue(name))
