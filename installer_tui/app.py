"""`appliance-installer`: the Textual front end over the install plan.

Screens: find a bundle on mounted media -> who signed it (and, on a first
install, accepting the vendor's trust root by fingerprint) -> the install with
a progress bar and a review of the verified manifest, GPUs and placement ->
the end state; and a status screen with live figures, roll back and log export.
Every step is the same `appliance.site.plan.InstallPlan` the headless
`appliance install --yes` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from appliance.bundle.manifest import Manifest
from appliance.engines import Engine, make_engine
from appliance.site.gpu import GpuProbe, NvmlProbe, RecordedProbe
from appliance.site.layout import DEFAULT_ROOT, Site
from installer_tui.config import InstallerConfig
from installer_tui.media import default_media_roots
from installer_tui.screens.find import FindBundleScreen
from installer_tui.screens.install import InstallScreen
from installer_tui.screens.status import StatusScreen
from installer_tui.screens.trust import TrustScreen
from signing import Envelope


class InstallerApp(App[None]):
    """The installer; all it knows of the site, engine and GPUs comes from its config."""

    CSS_PATH = "app.tcss"
    TITLE = "Appliance installer"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, config: InstallerConfig) -> None:
        super().__init__()
        self.config = config
        self._quit_asked = False

    async def action_quit(self) -> None:
        """Quit; while the new release is being started, only when asked twice."""
        screen = self.screen
        if isinstance(screen, InstallScreen) and screen.state == "running" \
                and not self._quit_asked:
            self._quit_asked = True
            self.notify("The new release is being started. Quitting now lets the install "
                        "finish (or roll back) without the screen; press Ctrl+Q again to quit.",
                        severity="warning", timeout=10)
            return
        if isinstance(screen, InstallScreen):
            screen.cancel()
        self.exit()

    # -- navigation (installer_tui.screens.base.Navigator) ------------------------------
    def show_status(self) -> None:
        self.push_screen(StatusScreen())

    def show_bundles(self) -> None:
        if not any(isinstance(s, FindBundleScreen) for s in self.screen_stack):
            self.switch_screen(FindBundleScreen())
            return
        while not isinstance(self.screen, FindBundleScreen):
            self.pop_screen()

    def show_trust(self, parts: list[Path], manifest: Manifest, envelope: Envelope) -> None:
        self.push_screen(TrustScreen(parts, manifest, envelope))

    def show_install(self, parts: list[Path], manifest: Manifest, trust: Path | None) -> None:
        self.push_screen(InstallScreen(parts, manifest, trust))

    def on_mount(self) -> None:
        if self.config.start_on_status:
            self.push_screen(StatusScreen())
        else:
            self.push_screen(FindBundleScreen(self.config.bundle))


def make_app(config: InstallerConfig) -> InstallerApp:
    """The installer app for `config` (what `main` runs and what tests drive with Pilot)."""
    return InstallerApp(config)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appliance-installer",
                                description="Install a signed appliance bundle, or see what "
                                            "serves (keyboard-driven; works over SSH at 80x24).")
    p.add_argument("bundle", type=Path, nargs="?", help="a bundle to open straight away")
    p.add_argument("--root", type=Path,
                   default=Path(os.environ.get("APPLIANCE_ROOT", str(DEFAULT_ROOT))),
                   help="site root directory")
    p.add_argument("--engine", choices=("docker", "process"), default=None,
                   help="docker (Docker or Podman socket) or process; default: the current "
                        "release's, else docker")
    p.add_argument("--docker-host", help="engine socket URL, e.g. unix:///run/podman/podman.sock")
    p.add_argument("--unit-dir", type=Path, help="process engine: where to write systemd units")
    p.add_argument("--trust", type=Path, help="the vendor's root.json for a first install")
    p.add_argument("--media", type=Path, action="append",
                   help="where to look for bundles (repeatable; default the executable's "
                        "directory, /media, /mnt, /run/media)")
    p.add_argument("--gpu-state", type=Path, help="use a recorded GPU state instead of NVML")
    p.add_argument("--allow-expired", action="store_true",
                   help="install a bundle past its expiry (logged); for a wrong site clock")
    p.add_argument("--expired-max-days", type=int, default=30, metavar="DAYS",
                   help="with --allow-expired: refuse a bundle expired longer ago than this "
                        "(default 30)")
    p.add_argument("--health-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--status", action="store_true", help="open the status screen")
    return p


def opens_nothing(argv: Sequence[str]) -> bool:
    """Whether these TUI arguments name no bundle and no status screen: then the one
    bundle on the stick beside the executable opens. False for arguments that do not
    parse (`main` says what is wrong with them)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = _parser().parse_args(list(argv))
    except SystemExit:
        return False
    return args.bundle is None and not args.status


def config_from_args(args: argparse.Namespace) -> InstallerConfig:
    """The config the command line asks for (engine made lazily, like the headless CLI's)."""
    site = Site(args.root)

    def engine(s: Site) -> Engine:
        return make_engine(args.engine, s, docker_host=args.docker_host,
                           unit_dir=args.unit_dir)

    probe: GpuProbe = RecordedProbe.from_file(args.gpu_state) if args.gpu_state else NvmlProbe()
    return InstallerConfig(
        site=site, engine=engine, gpu_probe=probe,
        media_roots=args.media or default_media_roots(), trust=args.trust, bundle=args.bundle,
        start_on_status=args.status, allow_expired=args.allow_expired,
        max_expired=timedelta(days=args.expired_max_days),
        health_timeout_s=args.health_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the installer."""
    from appliance.errors import ApplianceError
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ApplianceError as e:
        print(f"error: {e}")
        return 2
    make_app(config).run()
    return 0


__all__ = ["InstallerApp", "main", "make_app"]
