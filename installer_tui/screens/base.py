"""What every installer screen shares: the app's configuration, and the way to the others.

Screens never import each other: they ask the app (`self.nav`) for the next one, and
the app, which imports every screen, builds it. A screen is made fresh each time it
is shown, so nothing it shows is left over from an earlier visit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, cast

from textual.screen import Screen

from appliance.bundle.manifest import Manifest
from installer_tui.config import InstallerConfig
from signing import Envelope


class Navigator(Protocol):
    """How a screen moves to another (implemented by `InstallerApp`)."""

    def show_status(self) -> None:
        """Push the status screen over this one."""

    def show_bundles(self) -> None:
        """Back to the bundle list: pop to it, or open it when it is not underneath."""

    def show_trust(self, parts: list[Path], manifest: Manifest, envelope: Envelope) -> None:
        """Push the signer/trust screen for an opened bundle."""

    def show_install(self, parts: list[Path], manifest: Manifest, trust: Path | None) -> None:
        """Push the install screen for a trusted bundle."""


class InstallerScreen(Screen[Any]):
    """A screen of the installer app (which carries an `InstallerConfig`)."""

    @property
    def config(self) -> InstallerConfig:
        config = getattr(self.app, "config", None)
        assert isinstance(config, InstallerConfig), "installer screens run in InstallerApp"
        return config

    @property
    def nav(self) -> Navigator:
        """The app, as the way to other screens."""
        return cast(Navigator, self.app)
