"""Fixtures: a site with certificate and token, HAProxy from the host's package, two runtimes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.frontdoor import config
from bundler.samples import make_mlp_onnx
from tests.frontdoor.kit import Proxy, Site, make_site, start_proxy
from tests.runtime.conftest import Server, start_server


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@pytest.fixture
def proxy_for(site: Site) -> Iterator[Callable[[list[config.ServiceDoor]], Proxy]]:
    """A factory fixture: `proxy_for(services)` starts HAProxy; all are stopped afterwards."""
    started: list[Proxy] = []

    def make(services: list[config.ServiceDoor]) -> Proxy:
        p = start_proxy(site, services)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def mlp_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fd-models")
    make_mlp_onnx(root / "mlp" / "1")
    return root


@pytest.fixture
def runtimes(mlp_models: Path, tmp_path: Path) -> Iterator[list[Server]]:
    """Two real runtimes (release A and release B) on 127.0.0.1."""
    servers: list[Server] = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(mlp_models, tmp_path / f"data-{name}"))
        yield servers
    finally:
        for s in servers:
            s.stop()
