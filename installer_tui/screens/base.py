"""What every installer screen shares: the app's configuration."""

from __future__ import annotations

from typing import Any

from textual.screen import Screen

from installer_tui.config import InstallerConfig


class InstallerScreen(Screen[Any]):
    """A screen of the installer app (which carries an `InstallerConfig`)."""

    @property
    def config(self) -> InstallerConfig:
        config = getattr(self.app, "config", None)
        assert isinstance(config, InstallerConfig), "installer screens run in InstallerApp"
        return config
