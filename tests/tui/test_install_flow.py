"""The whole install driven with Pilot: real signed bundles, the process engine, the runtime."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from textual.widgets import Input

from appliance.site.gpu import GpuReport
from appliance.support.verify import verify_export
from installer_tui.screens.find import FindBundleScreen
from installer_tui.screens.install import InstallScreen
from installer_tui.screens.status import StatusScreen
from installer_tui.screens.trust import TrustScreen
from installer_tui.widgets import ErrorPanel, Figure, StepList, TransferBar
from signing import TrustRoot, fingerprint
from tests.bundle.kit import flip_bit, member_offsets
from tests.tui.kit import build_demo, infer, key, text_of, wait_for, write_root

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


def screen_is(app, cls):
    return lambda: isinstance(app.screen, cls)


def state_is(app, *states):
    return lambda: isinstance(app.screen, InstallScreen) and app.screen.state in states


async def open_first_bundle(pilot):
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, FindBundleScreen) and app.screen.found,
                   what="the media scan")
    await pilot.press("enter")
    await wait_for(pilot, screen_is(app, TrustScreen), what="the trust screen")


@pytest.mark.slow
async def test_first_install_from_stick_to_serving_then_status_figures_and_export(
        rig, vendor_key, port):
    bundle = build_demo(rig.media / "usb", 1, port, vendor_key)
    root_file = write_root(rig.media / "usb" / "root.json", [vendor_key])
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        trust = app.screen
        assert trust.first_install and trust.root_path == root_file
        shown = text_of(trust.query_one("#root-keys"))
        assert fingerprint(vendor_key.key_id) in shown

        # the root is not accepted until the person says they compared the fingerprints
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, TrustScreen)
        assert not rig.site.trust_path.exists()
        signers = text_of(trust.query_one("#signers"))
        assert "not yet" in signers and " yes" not in signers  # the root is only offered
        from textual.widgets import Checkbox
        box = trust.query_one("#compared", Checkbox)
        assert str(box.label).startswith("NOT YET")
        await pilot.press("space")  # tick "I compared each fingerprint ..."
        await pilot.pause()
        assert str(box.label).startswith("YES - I compared")  # in words, not only a colour
        await pilot.press("c")

        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        install = app.screen
        assert isinstance(install, InstallScreen)
        assert install.state == "review", install.error
        review = text_of(install.query_one("#review-text"))
        assert "mlp" in review and "4f2a9c1" in review and "ct-2026-03" in review
        assert "All services run on the CPU" in review
        assert install.query_one(TransferBar).text.endswith("done")
        assert rig.site.current() is None  # nothing serves until the person says install

        await pilot.press("i")
        await wait_for(pilot, state_is(app, "done", "failed"), what="the install")
        assert install.state == "done", install.error
        steps = install.query_one(StepList)
        assert all(steps.status(s) in ("ok", "warn") for s in steps.steps)
        done = text_of(install.query_one("#done-text"))
        url = f"http://127.0.0.1:{port}"
        assert url in done and "ready" in done
        assert "mlp: model mlp on cpu (no GPU visible)" in done  # as the runtime reports it
        assert f"appliance rollback --root {rig.site.root}" in done
        assert rig.site.current().sequence == 1
        assert TrustRoot.from_json(rig.site.trust_path.read_bytes()).to_json() == \
            root_file.read_bytes()

        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None, what="the status")
        status = app.screen
        assert isinstance(status, StatusScreen) and status.status is not None
        assert status.status.health == {"mlp": True}
        assert status.status.rollback_to is None
        rps = status.query_one("#fig-rps", Figure)
        latency = status.query_one("#fig-latency", Figure)

        def busy():
            infer(url, 3)
            return rps.latest is not None and rps.latest > 0 and latency.latest is not None
        await wait_for(pilot, busy, what="a request rate above zero")
        assert "no GPU in use" in text_of(status.query_one("#fig-gpu").query_one(".figure-value"))

        out = rig.tmp / "stick"
        out.mkdir()
        await pilot.press("e")
        field = status.query_one("#export-dir", Input)
        assert field.has_focus and field.value == str(rig.tmp / "export")
        field.value = str(out)
        await pilot.press("enter")
        await wait_for(pilot, lambda: list(out.glob("*.tar")) and not status.busy,
                       what="the support export")
        (archive,) = out.glob("*.tar")
        export = verify_export(archive)  # whole, signed by the site's key
        assert any(n.endswith("/install.log") for n in export.files)
        assert not list(out.glob(".*.partial"))
        assert "Wrote" in text_of(status.query_one("#status-message"))
    assert bundle.exists()


@pytest.mark.slow
async def test_update_shows_trusted_signers_then_rolls_back_from_status(rig, vendor_key, port):
    root_file = write_root(rig.tmp / "vendor" / "root.json", [vendor_key])
    rig.install_headless(build_demo(rig.tmp / "old", 1, port, vendor_key), root_file)
    build_demo(rig.media, 2, port, vendor_key)
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        trust = app.screen
        assert not trust.first_install
        assert "This server trusts root version 1" in text_of(trust.query_one("#root-keys"))
        assert "yes" in text_of(trust.query_one("#signers"))
        await pilot.press("c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        await pilot.press("i")
        await wait_for(pilot, state_is(app, "done", "failed"), what="the update")
        assert app.screen.state == "done", app.screen.error
        done = text_of(app.screen.query_one("#done-text"))
        assert "release 2 (demo 1.2.0) is serving" in done
        assert "Release 1 was stopped and stays installed" in done
        assert rig.site.current().sequence == 2

        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None, what="the status")
        assert app.screen.status.rollback_to == 1
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("n")  # asked first; "no" changes nothing
        await pilot.pause()
        assert rig.site.current().sequence == 2
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen.status is not None
                       and app.screen.status.sequence == 1 and not app.screen.busy,
                       what="the rollback")
        assert rig.site.current().sequence == 1
        assert app.screen.status.health == {"mlp": True}
        assert "Release 1 is serving again" in text_of(app.screen.query_one(
            "#status-message"))


async def test_tampered_bundle_is_refused_on_screen_and_nothing_changes(rig, vendor_key, port):
    bundle = build_demo(rig.media, 1, port, vendor_key)
    write_root(rig.media / "root.json", [vendor_key])
    blob = next(n for n in member_offsets(bundle) if n.startswith("blobs/"))
    offset, _ = member_offsets(bundle)[blob]
    flip_bit(bundle, offset + 10)
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the verify")
        screen = app.screen
        assert screen.state == "failed"
        panel = screen.query_one("#install-error", ErrorPanel)
        assert panel.display
        text = text_of(panel)
        assert "The bundle was refused" in text
        assert f"member {blob} does not match its signed sha256" in text
        assert "get a fresh copy" in text
        assert screen.query_one(StepList).status("verify") == "failed"
        assert screen.query_one(StepList).status("load") == "pending"
        await pilot.press("escape")
        await wait_for(pilot, screen_is(app, FindBundleScreen), what="the bundle list")
    assert rig.site.current() is None
    assert rig.engine.running() == set()


async def test_bundle_signed_by_an_unknown_key_is_flagged_then_refused(rig, vendor_key, port):
    build_demo(rig.media, 1, port, key(7))  # not the vendor's key
    write_root(rig.media / "root.json", [vendor_key])
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        trust = app.screen
        assert "NO" in text_of(trust.query_one("#signers"))
        warning = text_of(trust.query_one("#trust-warning"))
        assert "Only 0 of the keys" in warning and "will refuse it" in warning
        await pilot.press("space", "c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the verify")
        text = text_of(app.screen.query_one("#install-error", ErrorPanel))
        assert "bundle signature refused" in text
        # preflight checks the signature before it parses anything the signature covers
        assert app.screen.query_one(StepList).status("preflight") == "failed"
    assert rig.site.current() is None
    assert not rig.site.trust_path.exists()  # a refused bundle does not plant its root


async def test_first_install_without_a_root_asks_for_its_path(rig, vendor_key, port):
    build_demo(rig.media, 1, port, vendor_key)
    elsewhere = write_root(rig.tmp / "paper" / "root.json", [vendor_key])
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        trust = app.screen
        assert trust.root is None
        assert "trusts no signing keys yet" in text_of(trust.query_one("#trust-error"))
        await pilot.press("c")  # nothing to accept yet
        assert isinstance(app.screen, TrustScreen)
        field = trust.query_one("#root-path")
        assert field.has_focus
        await pilot.press("x", "enter")  # a path that is not a root: said so on screen
        await wait_for(pilot, lambda: "not a usable trust root" in text_of(
            trust.query_one("#trust-error")), what="the refusal")
        trust.query_one("#root-path").value = str(elsewhere)
        await pilot.press("enter")
        await wait_for(pilot, lambda: trust.root is not None, what="the typed root")
        assert fingerprint(vendor_key.key_id) in text_of(trust.query_one("#root-keys"))
        assert trust.root_path == elsewhere


async def test_preflight_failure_is_explained_and_nothing_changes(rig, vendor_key, port):
    build_demo(rig.media, 1, port, vendor_key, gpu="required", gpu_mib=1024)
    write_root(rig.media / "root.json", [vendor_key])
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="preflight")
        text = text_of(app.screen.query_one("#install-error", ErrorPanel))
        assert "Preflight failed: nothing on this server was changed" in text
        assert "require a GPU" in text and "install the NVIDIA driver" in text
        assert app.screen.query_one(StepList).status("preflight") == "failed"
    assert rig.site.current() is None
    assert not (rig.site.releases_dir / "1").exists()


async def test_placement_on_recorded_gpus_is_shown_in_the_review(rig, vendor_key, port):
    build_demo(rig.media, 1, port, vendor_key, gpu_mib=2048)
    write_root(rig.media / "root.json", [vendor_key])
    rig.gpus = GpuReport.from_dict(json.loads(
        (Path(__file__).parents[1] / "site" / "gpu_states" / "two_uneven.json").read_text()))
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        assert app.screen.state == "review", app.screen.error
        review = text_of(app.screen.query_one("#review-text"))
        best = max(rig.gpus.gpus, key=lambda g: g.memory_free_mib)
        assert f"mlp: GPU {best.index}" in review
        assert "needs 2048 MiB" in review
        assert str(best.memory_free_mib) in review
        await pilot.press("escape")
        await wait_for(pilot, screen_is(app, FindBundleScreen), what="the bundle list")
    assert rig.site.current() is None


async def test_typed_path_that_is_no_bundle_is_explained(rig, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("meeting notes, not a bundle\n" * 100)
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, screen_is(app, FindBundleScreen))
        await pilot.press("p")
        app.screen.query_one("#path").value = str(junk)
        await pilot.press("enter")
        panel = app.screen.query_one("#find-error", ErrorPanel)
        await wait_for(pilot, lambda: panel.display, what="the error")
        assert "not a bundle" in text_of(panel)
        assert isinstance(app.screen, FindBundleScreen)


async def test_status_on_a_fresh_site_says_nothing_is_installed(rig):
    app = rig.app(start_on_status=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None, what="the status")
        assert "No release is installed on this server" in text_of(
            app.screen.query_one("#release"))
        assert app.screen.check_action("rollback", ()) is False
        assert app.screen.check_action("export", ()) is False
        await pilot.press("escape")
        await wait_for(pilot, screen_is(app, FindBundleScreen), what="the bundle list")


def test_command_line_builds_the_config_the_screens_use(tmp_path):
    from installer_tui.app import _parser, config_from_args
    state = tmp_path / "gpus.json"
    state.write_text(json.dumps(GpuReport(unavailable="recorded: none").to_dict()))
    args = _parser().parse_args([str(tmp_path / "b.tar"), "--root", str(tmp_path / "site"),
                                 "--engine", "process", "--unit-dir", str(tmp_path / "units"),
                                 "--media", str(tmp_path / "m1"), "--media", str(tmp_path / "m2"),
                                 "--gpu-state", str(state), "--trust", str(tmp_path / "r.json")])
    c = config_from_args(args)
    assert c.site.root == tmp_path / "site"
    assert list(c.media_roots) == [tmp_path / "m1", tmp_path / "m2"]
    assert c.bundle == tmp_path / "b.tar" and c.trust == tmp_path / "r.json"
    assert c.gpu_probe.probe().unavailable == "recorded: none"
    engine = c.get_engine()
    assert engine.name == "process" and engine is c.get_engine()


@pytest.mark.slow
async def test_release_failing_its_signed_samples_is_rolled_back_and_said_so(rig, vendor_key,
                                                                              port):
    root_file = write_root(rig.tmp / "vendor" / "root.json", [vendor_key])
    rig.install_headless(build_demo(rig.tmp / "old", 1, port, vendor_key), root_file)
    build_demo(rig.media, 2, port, vendor_key, sample_off_by=0.5)
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        await pilot.press("i")
        await wait_for(pilot, state_is(app, "done", "failed"), what="the install")
        screen = app.screen
        assert screen.state == "failed"
        text = text_of(screen.query_one("#install-error", ErrorPanel))
        assert "the previous release keeps serving" in text
        assert "release 2 failed at accept" in text and "release 1 keeps serving" in text
        steps = screen.query_one(StepList)
        assert steps.status("accept") == "failed" and steps.status("switch") == "pending"
    assert rig.site.current().sequence == 1
    assert rig.engine.running() == {1}
    assert infer(f"http://127.0.0.1:{port}")  # the old release still answers


class HeldProbe:
    """A GPU probe that answers only when the test lets it (to act mid-preflight)."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()

    def probe(self) -> GpuReport:
        self.asked.set()
        assert self.release.wait(30), "the test never released the probe"
        return GpuReport(unavailable="held in a test")


async def test_escape_while_preparing_stops_before_anything_changes(rig, vendor_key, port):
    build_demo(rig.media, 1, port, vendor_key)
    write_root(rig.media / "root.json", [vendor_key])
    probe = HeldProbe()
    app = rig.app(gpu_probe=probe)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, probe.asked.is_set, what="preflight to ask for the GPUs")
        assert app.screen.state == "preparing"
        await pilot.press("escape")
        probe.release.set()
        await wait_for(pilot, screen_is(app, FindBundleScreen), what="the bundle list")
    assert rig.site.current() is None
    assert not (rig.site.releases_dir / "1").exists()
    assert not rig.site.trust_path.exists()


class HeldStart:
    """The real process engine, except that `start` waits until the test lets it go on."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.starting = threading.Event()
        self.go = threading.Event()

    def start(self, *args, **kwargs):
        self.starting.set()
        assert self.go.wait(30), "the test never let the start go on"
        return self.engine.start(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


async def test_quit_while_the_new_release_starts_needs_asking_twice(rig, vendor_key, port):
    build_demo(rig.media, 1, port, vendor_key)
    write_root(rig.media / "root.json", [vendor_key])
    held = HeldStart(rig.engine)
    app = rig.app(engine=lambda _s: held)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        await pilot.press("i")
        await wait_for(pilot, held.starting.is_set, what="the start step")
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and app.screen.state == "running"
        held.go.set()
        await wait_for(pilot, state_is(app, "done", "failed"), what="the install")
        assert app.screen.state == "done", app.screen.error
    assert rig.site.current().sequence == 1


async def test_status_offers_every_installed_release_and_esc_after_a_switch_is_not_stale(
        rig, vendor_key, port):
    root = write_root(rig.tmp / "root.json", [vendor_key])
    for seq in (1, 2, 3):
        rig.install_headless(build_demo(rig.tmp / f"b{seq}", seq, port, vendor_key),
                             root if seq == 1 else None)
    app = rig.app(start_on_status=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None, what="the status")
        assert [s for s, _ in app.screen.status.others] == [2, 1]
        assert "Serve another installed release (r): 2, 1" in text_of(
            app.screen.query_one("#release"))
        await pilot.press("r")  # a list to choose from: 2, then 1
        await pilot.pause()
        await pilot.press("down", "enter")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None and app.screen.status.sequence == 1
                       and not app.screen.busy, what="the switch to release 1")
        assert rig.site.current().sequence == 1
        # forward again: the newer installed releases are offered too
        assert [s for s, _ in app.screen.status.others] == [3, 2]
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("enter")  # release 3, newest first
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and app.screen.status is not None and app.screen.status.sequence == 3
                       and not app.screen.busy, what="the switch to release 3")
        assert rig.site.current().sequence == 3
        await pilot.press("escape")
        await wait_for(pilot, screen_is(app, FindBundleScreen), what="the bundle list")


async def test_bundle_list_names_each_bundle_against_what_serves_and_keeps_keys(
        rig, vendor_key, port):
    root = write_root(rig.tmp / "root.json", [vendor_key])
    rig.install_headless(build_demo(rig.tmp / "b2", 2, port, vendor_key), root)
    for seq in (1, 2, 3):
        build_demo(rig.media / f"stick-{seq}", seq, port, vendor_key,
                   name="a-very-long-bundle-name-that-a-vendor-might-well-choose-" + "x" * 40)
    app = rig.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, FindBundleScreen)
                       and len(app.screen.found) == 3, what="the media scan")
        options = app.screen.query_one("#bundles")
        labels = [str(options.get_option_at_index(i).prompt) for i in range(3)]
        assert labels[0].startswith("demo 1.1.0  release 1  OLDER than serving 2")
        assert labels[1].startswith("demo 1.2.0  release 2  the release serving now")
        assert labels[2].startswith("demo 1.3.0  release 3  newer than serving 2")
        assert all(options.get_option_at_index(i).prompt.no_wrap for i in range(3))
        await pilot.press("enter")
        await wait_for(pilot, screen_is(app, TrustScreen), what="the trust screen")
        await pilot.press("escape")
        await wait_for(pilot, screen_is(app, FindBundleScreen), what="the list again")
        await pilot.press("down", "enter")  # the first keys after returning reach the list
        await wait_for(pilot, screen_is(app, TrustScreen), what="the second bundle")
        assert app.screen.manifest.sequence == 2
