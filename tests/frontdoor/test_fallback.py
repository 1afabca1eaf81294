"""A declared fallback service answers, marked, while the main release is down."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from appliance.frontdoor import config
from tests.enginekit import wait_for
from tests.frontdoor.kit import SERVICE, Proxy, Site, door
from tests.frontdoor.test_switch import CONNECTIONS, after, steady_load
from tests.runtime.conftest import Server, start_server

KILL_WINDOW_S = 0.5  # requests in flight at the kill are answered or failed by then


def _fallback_responses(site: Site) -> int:
    """What HAProxy's Prometheus exporter counts for the fallback server."""
    url = f"http://127.0.0.1:{site.settings.stats_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("haproxy_server_http_responses_total{")
               and f'proxy="{config.backend_name(SERVICE)}"' in line
               and 'server="fallback"' in line)


def test_kill_main_every_request_answered_by_fallback_then_main_takes_back(
        site: Site, runtimes: list[Server], mlp_models: Path, tmp_path: Path,
        proxy_for: Callable[[list[config.ServiceDoor]], Proxy]) -> None:
    main, fallback = runtimes
    proxy = proxy_for([door(site, main, fallback)])
    be = config.backend_name(SERVICE)
    wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "the main runtime up")
    load = steady_load(site)
    main_again = None
    try:
        after(load, 200, "on the main release")
        assert load.served("fallback") == 0
        killed_at = time.monotonic()
        main.proc.send_signal(signal.SIGKILL)
        main.proc.wait(10)
        wait_for(lambda: load.served("fallback") >= 300, 60, "300 answers from the fallback")
        assert not proxy.api.servers(be)["a"].up
        main_again = start_server(mlp_models, tmp_path / "data-main-again", port=main.port)
        wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "the main runtime up again")
        fallback_total = load.served("fallback")
        after(load, 300, "on the main release again")
        report = load.stop()
    finally:
        load.stop()
        if main_again is not None:
            main_again.stop()
    # Every request is answered, except one that was inside the main runtime at the
    # instant it was killed: HAProxy 2.6 does not resend a request whose server
    # connection was reset while it waited for the answer (docs/frontdoor.md).
    late = [f for f in report.failures if float(f.split()[0]) > killed_at + KILL_WINDOW_S]
    assert late == [], report.summary()
    # At most one per client connection: the request it had inside the runtime.
    assert len(report.failures) <= CONNECTIONS, report.summary()
    # The main release took the traffic back: the fallback answered nothing more
    # once the main runtime passed its checks again (give a request in flight slack).
    assert report.served_by["fallback"] <= fallback_total + 16, report.summary()
    assert report.served_by["main"] >= 500, report.summary()
    assert _fallback_responses(site) >= 300
