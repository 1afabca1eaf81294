"""Reusable widgets of the installer: step list, transfer bar, error panel, figure sparkline."""

from installer_tui.widgets.error import ErrorPanel
from installer_tui.widgets.figure import Figure
from installer_tui.widgets.steps import StepList
from installer_tui.widgets.transfer import TransferBar

__all__ = ["ErrorPanel", "Figure", "StepList", "TransferBar"]
