"""Switching a service between releases under steady load fails no request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.frontdoor import config, switch
from tests.enginekit import wait_for
from tests.frontdoor.kit import INFER, SERVICE, Proxy, Site, door
from tests.frontdoor.load import SteadyLoad
from tests.runtime.conftest import Server, start_server

RATE = 300  # requests/s over CONNECTIONS keep-alive HTTPS connections
CONNECTIONS = 16
PHASE_REQUESTS = 300  # about a second of load between moves


def steady_load(site: Site) -> SteadyLoad:
    """RATE requests/s over CONNECTIONS keep-alive HTTPS connections with the site token."""
    return SteadyLoad("127.0.0.1", site.port, INFER, rate=RATE, connections=CONNECTIONS,
                      headers=site.auth, ssl_context=site.ssl_context()).start()


def after(load: SteadyLoad, n: int, what: str) -> None:
    """Wait until `n` more requests were sent."""
    start = load.sent()
    wait_for(lambda: load.sent() >= start + n, 60, f"{n} requests {what}")


def test_switch_and_switch_back_under_load_fail_no_request(
        site: Site, runtimes: list[Server], mlp_models: Path, tmp_path: Path,
        proxy_for: Callable[[list[config.ServiceDoor]], Proxy]) -> None:
    a, b = runtimes
    proxy = proxy_for([door(site, a)])
    be = config.backend_name(SERVICE)
    wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "slot a up")
    a_again = None
    load = steady_load(site)
    try:
        after(load, PHASE_REQUESTS, "on release A")
        assert switch.switch(proxy.api, SERVICE, "127.0.0.1", b.port) == "b"
        # The switch returns once the old release is drained: nothing of it is in flight.
        assert proxy.api.servers(be)["a"].status == "MAINT"
        assert a.stop() == 0
        after(load, PHASE_REQUESTS, "on release B")
        assert proxy.api.servers(be)["b"].requests > 0
        # Rollback: the same switch backwards, to release A started again.
        a_again = start_server(mlp_models, tmp_path / "data-a-again")
        assert switch.switch(proxy.api, SERVICE, "127.0.0.1", a_again.port) == "a"
        assert b.stop() == 0
        after(load, PHASE_REQUESTS, "on release A again")
        report = load.stop()
        assert proxy.api.servers(be)["a"].requests > 0
    finally:
        load.stop()
        if a_again is not None:
            a_again.stop()
    assert report.failures == [], report.summary()
    assert report.sent >= 3 * PHASE_REQUESTS, report.summary()
    # Keep-alive connections survived both switches: no client connection was closed.
    assert report.reconnects == 0, report.summary()

