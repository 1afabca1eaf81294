"""Reusable widgets of the installer: step list, transfer bar, error panel, figure sparkline,
canary panel,
fallback panel."""

from installer_tui.widgets.canary import CanaryPanel
from installer_tui.widgets.error import ErrorPanel
from installer_tui.widgets.fallback import FallbackPanel
from installer_tui.widgets.figure import Figure
from installer_tui.widgets.steps import StepList
from installer_tui.widgets.transfer import TransferBar

__all__ = ["CanaryPanel", "ErrorPanel", "FallbackPanel", "Figure", "StepList", "TransferBar"]
