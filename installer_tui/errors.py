"""Errors of the installer's screens (the install plan's own are in appliance.errors)."""

from __future__ import annotations

from appliance.errors import ApplianceError


class InstallerError(ApplianceError):
    """Something the screens could not do; the message says what to do next."""


class LogExportError(InstallerError):
    """The runtime could not export its logs, or the archive could not be written."""


class TrustRootChoiceError(InstallerError):
    """No usable trust root was found or given for a first install."""


class InstallCancelledError(InstallerError):
    """The person stopped the install before it changed what serves."""
