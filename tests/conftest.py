"""Shared fixtures: real podman and dockerd 20.10 sockets, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.enginekit import dockerd, podman_service


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
