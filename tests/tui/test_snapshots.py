"""Snapshots of the main screens at 80x24, made deterministic.

Keys come from fixed seeds, bundles are built with SOURCE_DATE_EPOCH, the clock
is fixed, paths are relative to the test's directory, the service port is fixed,
free disk is a fixed figure and the status figures are recorded, so the same
screen is drawn on every run. Regenerate with `pytest tests/tui --snapshot-update`
and look at the report before committing.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections import namedtuple
from pathlib import Path

import pytest

from appliance.site.gpu import GpuReport
from installer_tui.figures import FigureSample
from installer_tui.screens.find import FindBundleScreen
from installer_tui.screens.install import InstallScreen
from installer_tui.screens.status import StatusScreen
from installer_tui.screens.trust import TrustScreen
from installer_tui.widgets import Figure
from tests.bundle.kit import flip_bit, member_offsets
from tests.tui.kit import Rig, build_demo, key, make_rig, text_of, wait_for, write_root

PORT = 18437  # fixed so the endpoint URL on screen is the same every run
SIZE = (80, 24)
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def snap_rig(tmp_path, monkeypatch):
    for p in (PORT, PORT + 100):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the runtime binds
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                pytest.fail(f"port {p} is taken; the snapshot tests need it free")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("appliance.site.preflight.shutil.disk_usage",
                        lambda _p: Usage(64 * 2**30, 24 * 2**30, 40 * 2**30))
    r = make_rig(tmp_path, site_root=Path("site"), media=Path("media"))
    vendor = key(1)
    build_demo(r.media / "usb", 1, PORT, vendor)
    write_root(r.media / "usb" / "root.json", [vendor])
    r.extra["vendor"] = vendor
    yield r
    r.stop_all()


async def _to_trust(pilot):
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, FindBundleScreen) and app.screen.found)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, TrustScreen))


async def _to_state(pilot, *states):
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, InstallScreen)
                   and app.screen.state in states, timeout=90)


def test_find_screen_lists_the_bundle_on_the_stick(snap_rig: Rig, snap_compare):
    async def scanned(pilot):
        app = pilot.app
        await wait_for(pilot, lambda: isinstance(app.screen, FindBundleScreen)
                       and app.screen.found)
    assert snap_compare(snap_rig.app(), terminal_size=SIZE, run_before=scanned)


def test_trust_screen_shows_fingerprints_before_a_first_root_is_accepted(snap_rig, snap_compare):
    assert snap_compare(snap_rig.app(), terminal_size=SIZE, run_before=_to_trust)


def test_review_shows_manifest_gpu_table_and_placement(snap_rig, snap_compare):
    build_demo(snap_rig.media / "usb", 1, PORT, snap_rig.extra["vendor"], gpu_mib=4096)
    snap_rig.gpus = GpuReport.from_dict(json.loads(
        (Path(__file__).parents[1] / "site" / "gpu_states" / "two_uneven.json").read_text()))

    async def review(pilot):
        await _to_trust(pilot)
        await pilot.press("space", "c")
        await _to_state(pilot, "review", "failed")
    assert snap_compare(snap_rig.app(), terminal_size=SIZE, run_before=review)


@pytest.mark.slow
def test_done_screen_shows_endpoints_health_and_how_to_roll_back(snap_rig, snap_compare):
    async def installed(pilot):
        await _to_trust(pilot)
        await pilot.press("space", "c")
        await _to_state(pilot, "review", "failed")
        await pilot.press("i")
        await _to_state(pilot, "done", "failed")
    assert snap_compare(snap_rig.app(), terminal_size=SIZE, run_before=installed)


def test_tampered_bundle_error_in_plain_words(snap_rig, snap_compare):
    bundle = snap_rig.media / "usb" / "demo-bundle-1.tar"
    blob = next(n for n in member_offsets(bundle) if n.startswith("blobs/"))
    flip_bit(bundle, member_offsets(bundle)[blob][0] + 10)

    async def refused(pilot):
        await _to_trust(pilot)
        await pilot.press("space", "c")
        await _to_state(pilot, "failed")  # verify refuses the flipped blob
        await pilot.pause()  # the footer's keys follow the state
    assert snap_compare(snap_rig.app(), terminal_size=SIZE, run_before=refused)


class RecordedFigures:
    """Figures as a runtime on a GPU server reported them (no GPU exists here)."""

    def __init__(self, _urls: object) -> None:
        pass

    def history(self) -> list[FigureSample]:
        return [FigureSample(rps=float(10 + (i * 7) % 23), p99_ms=4.0 + (i * 3) % 11,
                             gpu_memory_mib=2048.0 + 64 * (i % 5)) for i in range(60)]

    def sample(self) -> FigureSample | None:
        return None


@pytest.mark.slow
def test_status_screen_with_live_figures(snap_rig, snap_compare):
    vendor = snap_rig.extra["vendor"]
    trust = Path("media/usb/root.json")
    snap_rig.install_headless(Path("media/usb/demo-bundle-1.tar"), trust)
    build_demo(Path("older"), 2, PORT, vendor)  # a second release, so rollback is offered
    shutil.move("older/demo-bundle-2.tar", "media/usb/demo-bundle-2.tar")
    snap_rig.install_headless(Path("media/usb/demo-bundle-2.tar"), None)
    snap_rig.figures = RecordedFigures

    async def figures(pilot):
        app = pilot.app
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None
                       and app.screen.query_one("#fig-rps", Figure).latest is not None
                       and "model mlp" in text_of(app.screen.query_one("#devices")))
    app = snap_rig.app(start_on_status=True, poll_interval_s=3600.0)
    assert snap_compare(app, terminal_size=SIZE, run_before=figures)
