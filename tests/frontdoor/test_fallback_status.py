"""While a service's main runtime is down and its fallback answers (real HAProxy), the
watchdog and `appliance status` record when it started and stopped, with the counts, and
status shows them (text and --json)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from appliance.frontdoor import config, tls
from appliance.frontdoor import site as files_of
from appliance.fsutil import atomic_write
from appliance.site import audit
from appliance.site.door import DOOR_FILE, DoorRecord
from appliance.site.fallbacks import read_fallbacks
from appliance.site.watchdog import Watchdog
from tests.enginekit import wait_for
from tests.frontdoor.kit import INFER, SERVICE, Proxy, door, https, start_proxy
from tests.frontdoor.kit import Site as DoorSite
from tests.frontdoor.load import infer_body
from tests.runtime.conftest import Server, free_port, start_server
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import ProcessSite, process_site
from tests.site.releasekit import free_port_pair

FALLBACK_SERVICE = "mlp-cpu"


@pytest.fixture
def served() -> Iterator[ProcessSite]:
    """A site serving release 1 (process engine), under a short path (sockaddr_un)."""
    tmp = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    ps = process_site(tmp, vendor(tmp))
    try:
        ps.install(make_bundle(tmp, ps.vendor, 1, port=free_port_pair()))
        yield ps
    finally:
        ps.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _front_door(ps: ProcessSite, main: Server, fallback: Server) -> tuple[DoorSite, Proxy]:
    """The site's front door files and record, and HAProxy from the host's package in front
    of `main` with `fallback` as its backup, its socket where the installer keeps it."""
    files = files_of.prepare(ps.site.root, ["localhost", "127.0.0.1"], dt.datetime.now(dt.UTC))
    settings = replace(files_of.settings(files, in_container=False, stats_port=free_port()),
                       bind="127.0.0.1", maxconn=4000)
    cert = tls.SiteCertificate(files.ca_file, files.conf_dir / tls.SITE_PEM, files.fingerprint,
                               files.not_after)
    ds = DoorSite(ps.site.root, cert, files.token, files.conf_dir / files_of.TOKEN_MAP,
                  settings, free_port())
    record = DoorRecord("127.0.0.1", {SERVICE: ds.port}, 1, files.fingerprint,
                        str(files.ca_file), str(ps.site.root / "token"),
                        files.not_after.isoformat(), {SERVICE: FALLBACK_SERVICE})
    atomic_write(files.conf_dir / DOOR_FILE, json.dumps(asdict(record)).encode())
    return ds, start_proxy(ds, [door(ds, main, fallback)])


def _ask(ds: DoorSite, n: int, by: str) -> None:
    for _ in range(n):
        status, headers, _body = https(ds, "POST", INFER, infer_body(), ds.auth)
        assert status == 200
        assert headers.get(config.SERVED_BY.lower(), "main") == by


def _events(ps: ProcessSite) -> list[audit.AuditEntry]:
    return [e for e in audit.verify(ps.site.root) if e.event.startswith("fallback_")]


def _status(ps: ProcessSite, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    from appliance.cli import main
    main(["status", *flags, *ps.cli_args()])
    return capsys.readouterr().out


def test_fallback_answering_is_counted_shown_and_audited_from_start_to_end(
        served: ProcessSite, runtimes: list[Server], mlp_models: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ps = served
    main, fallback = runtimes
    ds, proxy = _front_door(ps, main, fallback)
    be = config.backend_name(SERVICE)
    main_again = None
    try:
        wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "the main runtime up")
        _ask(ds, 4, "main")
        doc = json.loads(_status(ps, capsys, "--json"))
        assert doc["fallbacks"] == [{"service": SERVICE, "fallback": FALLBACK_SERVICE,
                                     "answering": False, "answered": 0, "main": "a UP, b MAINT"}]
        assert _events(ps) == []

        main.proc.send_signal(signal.SIGKILL)
        main.proc.wait(10)
        wait_for(lambda: not proxy.api.servers(be)["a"].up, 20, "the main runtime down")
        _ask(ds, 5, "fallback")
        Watchdog(ps.site, ps.engine).check()  # the watchdog notices first
        started = _events(ps)
        assert [e.event for e in started] == ["fallback_started"]
        assert started[0].fields["service"] == SERVICE
        assert started[0].fields["fallback"] == FALLBACK_SERVICE
        assert started[0].fields["answered"] == 5 and started[0].fields["main"].startswith("a DOWN")
        _ask(ds, 3, "fallback")
        text = _status(ps, capsys)
        assert (f"{SERVICE}: answered by its fallback {FALLBACK_SERVICE} NOW (main: a DOWN"
                in text and "; 8 request(s) answered by the fallback" in text)
        Watchdog(ps.site, ps.engine).check()
        assert len(_events(ps)) == 1  # still the same episode: no second record

        main_again = start_server(mlp_models, ps.tmp / "data-main-again", port=main.port)
        wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "the main runtime up again")
        _ask(ds, 2, "main")
        doc = json.loads(_status(ps, capsys, "--json"))  # status notices the end
        assert doc["fallback_answers"] == {SERVICE: 8}
        assert doc["fallbacks"][0]["answering"] is False
        ended = _events(ps)
        assert [e.event for e in ended] == ["fallback_started", "fallback_stopped"]
        assert ended[1].fields["answered"] == 8 and ended[1].fields["answered_total"] == 8
        assert ended[1].fields["for_s"] >= 0
        assert [f.answered for f in read_fallbacks(ps.site)] == [8]
    finally:
        proxy.stop()
        if main_again is not None:
            main_again.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


@pytest.mark.anyio
async def test_status_screen_shows_the_fallback_answering_then_the_main_back(
        served: ProcessSite, runtimes: list[Server], mlp_models: Path) -> None:
    from appliance.site.gpu import GpuReport, RecordedProbe
    from installer_tui.app import make_app
    from installer_tui.config import InstallerConfig
    from installer_tui.screens.status import StatusScreen
    from installer_tui.widgets import FallbackPanel
    from tests.tui.kit import text_of
    from tests.tui.kit import wait_for as wait_on_screen

    ps = served
    main, fallback = runtimes
    ds, proxy = _front_door(ps, main, fallback)
    be = config.backend_name(SERVICE)
    main_again = None
    app = make_app(InstallerConfig(site=ps.site, engine=lambda _s: ps.engine,
                                   gpu_probe=RecordedProbe(GpuReport(unavailable="no GPU")),
                                   start_on_status=True, poll_interval_s=0.3))
    try:
        wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "the main runtime up")
        main.proc.send_signal(signal.SIGKILL)
        main.proc.wait(10)
        wait_for(lambda: not proxy.api.servers(be)["a"].up, 20, "the main runtime down")
        _ask(ds, 6, "fallback")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_on_screen(pilot, lambda: isinstance(app.screen, StatusScreen)
                                 and app.screen.query_one(FallbackPanel).display,
                                 what="the fallback panel")
            panel = app.screen.query_one(FallbackPanel)
            shown = text_of(panel)
            assert f"{SERVICE}: answered by its fallback {FALLBACK_SERVICE} now (main: a DOWN" \
                in shown and "; 6 request(s) answered by the fallback" in shown
            assert [e.event for e in _events(ps)] == ["fallback_started"]  # the screen saw it

            main_again = start_server(mlp_models, ps.tmp / "data-main-again", port=main.port)
            wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "the main runtime up again")
            await wait_on_screen(pilot, lambda: "main release serving" in text_of(panel),
                                 what="the main release back on the screen")
            assert "; 6 request(s) answered by the fallback" in text_of(panel)
            assert [e.event for e in _events(ps)] == ["fallback_started", "fallback_stopped"]
    finally:
        proxy.stop()
        if main_again is not None:
            main_again.stop()
