"""A real canary through the installer screens: release 1 serves behind the front door on
the process engine (the host's HAProxy, real TLS and token, real runtimes), a steady
HTTPS load runs, and an update is installed from the screens with a canary: the offer,
the panel's live figures from HAProxy and the runtimes, then the verdict. One canary is
promoted; one is rolled back (its bounds ask for more traffic than the window brings)
and leaves the old release serving."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from textual.widgets import Input

from appliance.engines.process import DEFAULT_COMMAND, ProcessEngine
from appliance.frontdoor.canary import CanaryEvent
from appliance.site.door import lan_address
from appliance.site.gpu import RecordedProbe
from appliance.site.layout import Site
from installer_tui.app import InstallerApp, make_app
from installer_tui.config import InstallerConfig
from installer_tui.screens.confirm import CanaryOfferScreen
from installer_tui.screens.install import InstallScreen
from installer_tui.screens.status import StatusScreen
from installer_tui.widgets import CanaryPanel
from tests.e2e.doorkit import steady_load
from tests.image.fixtures import proxy_image_tar  # noqa: F401 - the door fixture needs it
from tests.site.test_process_frontdoor import ProcDoor, door, serving  # noqa: F401
from tests.tui.kit import NO_GPU, text_of, wait_for
from tests.tui.test_install_flow import open_first_bundle, state_is

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(600)]


def screens(pd: ProcDoor, bundle: Path) -> InstallerApp:
    """The installer on this site's process engine, with only `bundle` on the media."""
    media = pd.vendor.work / "media"
    shutil.rmtree(media, ignore_errors=True)
    media.mkdir()
    shutil.copy(bundle, media / bundle.name)
    site = Site(pd.root)
    engine = ProcessEngine(site, command=DEFAULT_COMMAND, unit_dir=pd.units,
                           use_systemd=False, runtime_from="host")  # as ProcDoor's CLI
    return make_app(InstallerConfig(
        site=site, engine=lambda _s: engine, gpu_probe=RecordedProbe(NO_GPU),
        media_roots=[media], now=lambda: datetime.now(UTC), health_timeout_s=60.0,
        poll_interval_s=0.5, export_dir=pd.vendor.work / "export"))


@dataclass
class Seen:
    """What the screens showed during one install with a canary."""

    state: str
    error: Exception | None
    events: list[CanaryEvent]  # every event the panel showed, in order
    live: str  # the panel while the window ran
    panel: str  # the panel at the end
    verdict: str
    done: str = ""  # the end screen's text
    status: str = ""  # the status screen's text (after a done install)


async def canary_through_screens(pd: ProcDoor, bundle: Path, flag: str, bounds: str = ""
                                 ) -> Seen:
    """Open `bundle`, take the canary offer with `flag` and `bounds`, run the install to
    its end and, when it is done, open the status screen."""
    app = screens(pd, bundle)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        install = app.screen
        assert isinstance(install, InstallScreen)
        assert install.state == "review", install.error
        assert install.canary_from == serving_sequence(pd)
        assert f"Release {install.canary_from} serves behind the front door" in text_of(
            install.query_one("#review-hint"))
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, CanaryOfferScreen),
                       what="the canary offer")
        offer = app.screen
        offer.query_one("#canary-flag", Input).value = flag
        offer.query_one("#canary-bounds", Input).value = bounds
        await pilot.click("#canary-go")
        await wait_for(pilot, lambda: app.screen is install, what="the install screen")

        panel = install.query_one(CanaryPanel)
        shown: list[CanaryEvent] = []
        take = panel.show_event

        def spy(ev: CanaryEvent) -> None:
            shown.append(ev)
            take(ev)
        panel.show_event = spy  # type: ignore[method-assign]
        live = ""

        def figures_live() -> bool:
            nonlocal live
            ev = panel.latest.get("mlp")
            if ev is not None and not ev.verdict and ev.new.requests > 0 and \
                    install.state == "running":
                live = text_of(panel)
                return True
            return False
        await wait_for(pilot, figures_live, timeout=120, what="live canary figures")
        await wait_for(pilot, state_is(app, "done", "failed"), timeout=180,
                       what="the end of the install")
        seen = Seen(install.state, install.error, shown, live, text_of(panel), panel.verdict)
        if install.state == "done":
            seen.done = text_of(install.query_one("#done-text"))
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen) and
                           "try: curl" in text_of(app.screen.query_one("#release")),
                           what="the status screen's front door lines")
            seen.status = text_of(app.screen.query_one("#release"))
        return seen


def serving_sequence(pd: ProcDoor) -> int | None:
    cur = Site(pd.root).current()
    return cur.sequence if cur is not None else None


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


async def test_update_with_a_canary_through_the_screens_is_promoted_then_one_rolls_back(
        serving: ProcDoor):  # noqa: F811 - release 1 behind the front door
    first = serving.vendor.work / "door-1.tar"
    load = steady_load(serving.root, serving.vendor.port).start()
    try:
        seen = await canary_through_screens(serving, serving.vendor.build(2, seed=1, base=first),
                                            "30%:8s")
        assert seen.state == "done", seen.error
        # the panel showed HAProxy's counts while the window ran, then the verdict
        assert "30% of new requests to the new release" in seen.live, seen.live
        assert any(r[:2] == ["mlp", "new"] and int(r[2]) > 0 for r in _rows(seen.live)), \
            seen.live
        ticks = [e for e in seen.events if not e.verdict]
        assert len(ticks) >= 2 and ticks[-1].new.requests > ticks[0].new.requests, ticks
        assert seen.events[-1].verdict == "promote" and seen.verdict == "promote"
        assert "release 2 (door 1.2.0) is serving" in seen.done
        assert "Canary: canary mlp: promoted: canary within bounds" in seen.done
        assert serving_sequence(serving) == 2
        # the end screen and the status screen: the stable URL, the infer path, a curl line
        url = f"https://{lan_address()}:{serving.vendor.port}"
        for text in (seen.done, seen.status):
            assert f"mlp: POST {url}/v2/models/mlp/infer" in text, text
            assert f"curl --cacert {serving.root / 'frontdoor'}" in text, text
            assert f"$(cat {serving.root / 'token'})" in text, text
            assert "certificate SHA-256 " in text

        # bounds that want more requests than 6 s can bring: rolled back, 2 keeps serving
        seen = await canary_through_screens(serving, serving.vendor.build(3, seed=2, base=first),
                                            "30%:6s", "min=1000000")
        assert seen.state == "failed"
        assert seen.events[-1].verdict == "rollback" and seen.verdict == "rollback"
        assert "canary saw only" in seen.events[-1].reason
        assert "fewer than 1000000" in seen.events[-1].reason
        assert "Rolled back: mlp: canary saw only" in seen.panel, seen.panel
        assert "canary" in str(seen.error)
        assert serving_sequence(serving) == 2
        assert serving.engine().running() == {2}
    finally:
        report = load.stop()
    assert report.sent > 100, report.summary()
    assert report.failures == [], report.summary()
