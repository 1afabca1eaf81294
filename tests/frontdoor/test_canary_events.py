"""A canary through real HAProxy reports its figures as progress events while it runs,
then its verdict with the figures (what the screens and `--json` progress show)."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.engines.process import ProcessEngine
from appliance.frontdoor import canary, config, tls
from appliance.frontdoor import site as files_of
from appliance.frontdoor.canary import CanaryEvent
from appliance.progress import Progress
from appliance.site.door import FrontDoor
from appliance.site.layout import Site
from tests.enginekit import wait_for
from tests.frontdoor.kit import INFER, SERVICE, Proxy, door, start_proxy
from tests.frontdoor.kit import Site as DoorSite
from tests.frontdoor.load import SteadyLoad
from tests.runtime.conftest import Server, free_port

WINDOW = "5s"


@pytest.fixture
def door_site() -> Iterator[tuple[Site, DoorSite]]:
    """A site root whose front door files are made by the installer's own `prepare`, with
    HAProxy's socket where the installer looks for it (a short path: sockaddr_un)."""
    root = Path(tempfile.mkdtemp(prefix="cy", dir="/tmp"))
    files = files_of.prepare(root, ["localhost", "127.0.0.1"], dt.datetime.now(dt.UTC))
    settings = replace(files_of.settings(files, in_container=False, stats_port=free_port()),
                       bind="127.0.0.1", maxconn=4000)
    cert = tls.SiteCertificate(files.ca_file, files.conf_dir / tls.SITE_PEM,
                               files.fingerprint, files.not_after)
    yield Site(root), DoorSite(root, cert, files.token, files.conf_dir / files_of.TOKEN_MAP,
                               settings, free_port())
    shutil.rmtree(root, ignore_errors=True)


def _run_canary(site: Site, ds: DoorSite, a: Server, b: Server, bounds: str
                ) -> tuple[list[CanaryEvent], canary.CanaryVerdict, Proxy]:
    proxy = start_proxy(ds, [door(ds, a)])
    try:
        return _canary_through(proxy, site, ds, b, bounds)
    except BaseException:
        proxy.stop()  # the test stops it only when it gets it back
        raise


def _canary_through(proxy: Proxy, site: Site, ds: DoorSite, b: Server, bounds: str
                    ) -> tuple[list[CanaryEvent], canary.CanaryVerdict, Proxy]:
    events: list[CanaryEvent] = []

    def seen(ev: Progress) -> None:
        if isinstance(ev, CanaryEvent):
            events.append(ev)

    be = config.backend_name(SERVICE)
    wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "slot a up")
    manifest = SimpleNamespace(services=[SimpleNamespace(name=SERVICE, port=ds.port,
                                                         fallback=None)])
    load = SteadyLoad("127.0.0.1", ds.port, INFER, rate=120, connections=4, headers=ds.auth,
                      ssl_context=ds.ssl_context()).start()
    try:
        verdict = FrontDoor(site, ProcessEngine(site, unit_dir=site.root / "units"),
                            dt.datetime.now(dt.UTC), progress=seen).canary(
            manifest, 2, {SERVICE: f"http://{b.hostport}"},  # type: ignore[arg-type]
            canary.parse_canary(f"25%:{WINDOW}"), canary.parse_bounds(bounds))
        report = load.stop()
    finally:
        load.stop()
    assert report.failures == [], report.summary()
    return events, verdict, proxy


def test_canary_reports_live_figures_then_promotes_naming_them(
        door_site: tuple[Site, DoorSite], runtimes: list[Server]) -> None:
    site, ds = door_site
    a, b = runtimes
    events, verdict, proxy = _run_canary(site, ds, a, b, "p99=x100,slack=1000ms")
    try:
        live = [e for e in events if not e.verdict]
        assert len(live) >= 2, events  # every TICK_S of a 5 s window
        assert all(e.service == SERVICE and e.window_s == 5 and e.share == 0.25 for e in live)
        assert [e.elapsed_s for e in live] == sorted(e.elapsed_s for e in live)
        # the figures grow as the traffic comes, on both sides, with p99s from the runtimes
        assert live[-1].new.requests > live[0].new.requests > 0
        assert live[-1].old.requests > live[-1].new.requests
        assert live[-1].new.p99_ms > 0 and live[-1].old.p99_ms > 0
        end = events[-1]
        assert verdict.action == "promote" and end.verdict == "promote"
        assert end.reason == verdict.reason and f"new 0/{end.new.requests} errors" in end.reason
        assert end.message.startswith(f"canary {SERVICE}: promoted: canary within bounds")
        assert proxy.api.servers(config.backend_name(SERVICE))["a"].status == "MAINT"
    finally:
        proxy.stop()


def test_rolled_back_canary_reports_why_with_the_figures(
        door_site: tuple[Site, DoorSite], runtimes: list[Server]) -> None:
    site, ds = door_site
    a, b = runtimes
    events, verdict, proxy = _run_canary(site, ds, a, b, "min=100000")
    try:
        end = events[-1]
        assert verdict.action == "rollback" and end.verdict == "rollback"
        assert "too little traffic" in end.reason and f"new 0/{end.new.requests}" in end.reason
        assert "rolled back" in end.message
        assert proxy.api.servers(config.backend_name(SERVICE))["b"].status == "MAINT"
    finally:
        proxy.stop()


def test_cli_progress_prints_the_canary_figures_as_lines_and_json() -> None:
    import io
    import json

    from appliance.cli.progress import ProgressPrinter
    ev = CanaryEvent("switch", service=SERVICE, share=0.1, elapsed_s=12.4, window_s=300,
                     new=canary.WindowFigures(40, 1, 12.0), old=canary.WindowFigures(360, 0, 9.5))
    text, js = io.StringIO(), io.StringIO()
    ProgressPrinter(text, bar=False)(ev)
    ProgressPrinter(js, as_json=True)(ev)
    assert text.getvalue() == ("    canary mlp: 12/300 s, new 40 req, 1 err (2.50%), p99 12.0 ms; "
                               "old 360 req, 0 err (0.00%), p99 9.5 ms\n")
    doc = json.loads(js.getvalue())
    assert doc["kind"] == "CanaryEvent" and doc["canary"]["new"] == {
        "requests": 40, "errors": 1, "error_rate": 0.025, "p99_ms": 12.0}
    assert doc["canary"]["old"]["requests"] == 360 and doc["canary"]["verdict"] == ""


def test_cli_prints_a_running_canary_every_ten_seconds_and_always_its_verdict() -> None:
    import io

    from appliance.cli.progress import ProgressPrinter
    out = io.StringIO()
    printer = ProgressPrinter(out, bar=False)
    figs = canary.WindowFigures(40, 0, 9.0)
    for t in (2.0, 4.0, 6.0, 12.0, 14.0):
        printer(CanaryEvent("switch", service=SERVICE, share=0.1, elapsed_s=t, window_s=15,
                            new=figs, old=figs))
    printer(CanaryEvent("switch", service=SERVICE, share=0.1, elapsed_s=15.0, window_s=15,
                        new=figs, old=figs, verdict="promote", reason="canary within bounds"))
    lines = out.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "    canary mlp: 2/15 s", "    canary mlp: 12/15 s",
        "    canary mlp: promoted: canary within bounds"]
