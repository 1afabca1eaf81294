"""Once through the Textual installer under Pilot, on podman: from the stick to serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.engines.docker import DockerEngine
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.support.verify import verify_export
from installer_tui.app import make_app
from installer_tui.config import InstallerConfig
from installer_tui.screens.find import FindBundleScreen
from installer_tui.screens.install import InstallScreen
from installer_tui.screens.status import StatusScreen
from installer_tui.screens.trust import TrustScreen
from tests.e2e.kit import (
    Release,
    Vendor,
    assert_serves,
    remove_vendor_images,
    to_stick,
)
from tests.tui.kit import wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.engine, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


async def test_first_install_through_the_installer_screens(
        tmp_path: Path, podman_url: str, vendor: Vendor, bundles: dict[int, Release]) -> None:
    stick = tmp_path / "usb"
    to_stick(bundles[1].path, stick)
    shutil.copyfile(vendor.root_path, stick / "root.json")
    site = Site(tmp_path / "site")
    engine = DockerEngine(site, base_url=podman_url)
    app = make_app(InstallerConfig(
        site=site, engine=lambda _s: engine,
        gpu_probe=RecordedProbe(GpuReport(unavailable="no NVIDIA driver in e2e tests")),
        media_roots=[stick], health_timeout_s=180.0, poll_interval_s=0.5, export_dir=stick))
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, FindBundleScreen)
                           and bool(app.screen.found), what="the media scan")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, TrustScreen),
                           what="the trust screen")
            trust = app.screen
            assert isinstance(trust, TrustScreen) and trust.first_install
            await pilot.press("space")  # "I compared each fingerprint ..."
            await pilot.press("c")

            def state(*states: str) -> bool:
                return isinstance(app.screen, InstallScreen) and app.screen.state in states
            await wait_for(pilot, lambda: state("review", "failed"), timeout=300,
                           what="verify and the review")
            install = app.screen
            assert isinstance(install, InstallScreen)
            assert install.state == "review", install.error
            assert site.current() is None  # nothing serves before the person says install
            await pilot.press("i")
            await wait_for(pilot, lambda: state("done", "failed"), timeout=400,
                           what="load, start and ready")
            assert install.state == "done", install.error
            cur = site.current()
            assert cur is not None and cur.sequence == 1 and cur.record.engine == "docker"
            assert_serves(cur.record.endpoints, bundles[1])

            # the status screen writes the site's support export onto the stick
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                           and app.screen.status is not None, what="the status")
            status = app.screen
            assert isinstance(status, StatusScreen) and status.status is not None
            assert status.status.health == {"mlp": True, "tmlp": True}
            await pilot.press("e")
            await pilot.press("enter")  # the field starts at the stick
            await wait_for(pilot, lambda: list(stick.glob("appliance-support-*.tar"))
                           and not status.busy,
                           timeout=120, what="the support export")
        (archive,) = stick.glob("appliance-support-*.tar")
        export = verify_export(archive)  # whole, and signed by the site's key
        assert any(name.endswith("install.log") for name in export.files), sorted(export.files)
    finally:
        for rel in site.releases():
            engine.stop(rel.sequence)
        remove_vendor_images(engine, vendor.name)
        engine.close()
        for d in (stick, site.root):
            shutil.rmtree(d, ignore_errors=True)
