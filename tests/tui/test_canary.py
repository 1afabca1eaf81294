"""The canary on the screens: the offer (share and window, checked by the CLI's parser), the
panel of live figures and the verdict, driven here by recorded `CanaryEvent`s (the events
the door sends through the install's progress callback) over bundles without a front door.
A real canary through the screens, behind the process engine's front door, is
tests/tui/test_canary_door.py.
"""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input

from appliance.frontdoor.canary import CanaryBounds, CanaryEvent, CanaryPlan, WindowFigures
from installer_tui.messages import PlanProgress
from installer_tui.screens.confirm import CanaryChoice, CanaryOfferScreen
from installer_tui.screens.install import InstallScreen
from installer_tui.widgets import CanaryPanel
from tests.tui.kit import build_demo, text_of, wait_for, write_root
from tests.tui.test_install_flow import open_first_bundle, state_is

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


def live(elapsed: float, new: tuple[int, int, float], old: tuple[int, int, float],
         service: str = "mlp") -> CanaryEvent:
    return CanaryEvent("switch", service=service, share=0.1, elapsed_s=elapsed, window_s=300,
                       new=WindowFigures(*new), old=WindowFigures(*old))


RECORDED = [live(2.0, (3, 0, 9.0), (27, 0, 8.0)), live(150.3, (210, 1, 12.0), (1890, 2, 9.5))]
ROLLED_BACK = CanaryEvent(
    "switch", service="mlp", share=0.1, elapsed_s=300.0, window_s=300,
    new=WindowFigures(420, 63, 12.0), old=WindowFigures(3780, 4, 9.5), verdict="rollback",
    reason="canary error rate above the old release's + 1.00%: new 63/420 errors (15.00%), "
           "p99 12.0 ms; old 4/3780 errors (0.11%), p99 9.5 ms")


class Bench(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.choices: list[CanaryChoice | None] = []

    def compose(self) -> ComposeResult:
        yield CanaryPanel(id="panel")

    def offer(self) -> None:
        self.push_screen(CanaryOfferScreen(1, 2), self.choices.append)


async def test_panel_shows_figures_as_they_come_then_the_verdict_with_them():
    app = Bench()
    async with app.run_test(size=(80, 24)):
        panel = app.query_one(CanaryPanel)
        panel.show_event(RECORDED[0])
        first = text_of(panel)
        assert "10% of new requests to the new release: 2 of 300 s" in first
        rows = [line.split() for line in first.splitlines()]
        assert ["mlp", "new", "3", "0.00%", "9.0"] in rows and ["old", "27", "0.00%", "8.0"] in rows
        panel.show_event(RECORDED[1])
        shown = text_of(panel)
        assert "150 of 300 s" in shown and "210" in shown and "0.48%" in shown
        assert "1890" in shown and "0.11%" in shown and "12.0" in shown and "9.5" in shown
        assert panel.verdict == "" and "Rolled back" not in shown
        panel.show_event(ROLLED_BACK)
        end = text_of(panel)
        assert panel.verdict == "rollback"
        assert "Rolled back: mlp: canary error rate above" in end and "15.00%" in end


async def test_offer_refuses_bad_values_in_one_line_then_takes_good_ones():
    app = Bench()
    async with app.run_test(size=(80, 24)) as pilot:
        app.offer()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CanaryOfferScreen)
        flag = screen.query_one("#canary-flag", Input)
        assert flag.value == "10%:5m"  # the default, from canary.py
        flag.value = "10%"
        await pilot.press("enter")
        await pilot.pause()
        error = text_of(screen.query_one("#canary-error")).strip()
        assert error.startswith("--canary '10%' is not SHARE%:WINDOW") and "\n" not in error
        assert app.screen is screen and app.choices == []
        flag.value = "20%:90s"
        screen.query_one("#canary-bounds", Input).value = "p99=2"
        await pilot.press("enter")
        await pilot.pause()
        assert "canary bound 'p99=2' does not parse" in text_of(screen.query_one("#canary-error"))
        screen.query_one("#canary-bounds", Input).value = "errors=+0.5%,min=50"
        await pilot.press("enter")
        await pilot.pause()
        assert app.choices == [CanaryChoice(CanaryPlan(0.2, 90),
                                            CanaryBounds(0.005, 1.5, 5.0, 50))]
        app.offer()
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.choices[-1] is None  # back: nothing chosen
        app.offer()
        await pilot.pause()
        await pilot.click("#canary-skip")
        await pilot.pause()
        assert app.choices[-1] == CanaryChoice(None)


@pytest.mark.slow
async def test_update_offers_the_canary_and_the_install_screen_shows_its_events(
        rig, vendor_key, port):
    root_file = write_root(rig.tmp / "vendor" / "root.json", [vendor_key])
    rig.install_headless(build_demo(rig.tmp / "old", 1, port, vendor_key), root_file)
    build_demo(rig.media, 2, port, vendor_key)
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        install = app.screen
        assert isinstance(install, InstallScreen) and install.state == "review", install.error
        # these bundles carry no proxy image: no front door, nothing to canary against
        assert install.canary_from is None
        install.canary_from = 1  # as when release 1 serves behind a running front door
        install.review_ready()
        assert "Release 1 serves behind the front door" in text_of(
            install.query_one("#review-hint"))
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, CanaryOfferScreen),
                       what="the canary offer")
        await pilot.press("escape")  # back to the review: nothing changes what serves
        await wait_for(pilot, lambda: app.screen is install, what="the review again")
        assert install.state == "review" and rig.site.current().sequence == 1
        assert not install.query_one(CanaryPanel).display

        for ev in [*RECORDED, ROLLED_BACK]:  # what the door sends during a canary
            install.post_message(PlanProgress(ev))
        await wait_for(pilot, lambda: install.query_one(CanaryPanel).verdict == "rollback",
                       what="the recorded events")
        assert install.query_one(CanaryPanel).display
        assert ["old", "3780", "0.11%", "9.5"] in [
            line.split() for line in text_of(install.query_one(CanaryPanel)).splitlines()]

        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, CanaryOfferScreen),
                       what="the canary offer")
        await pilot.click("#canary-skip")
        await wait_for(pilot, state_is(app, "done", "failed"), what="the update")
        assert install.state == "done", install.error
        assert install.plan is not None and install.plan.o.canary is None
        done = text_of(install.query_one("#done-text"))
        assert "release 2 (demo 1.2.0) is serving" in done
        assert "Canary: canary mlp: rolled back: canary error rate" in done
