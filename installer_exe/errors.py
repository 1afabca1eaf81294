"""Errors of the installer executable's build; each says what failed and what to do."""

from __future__ import annotations


class InstallerBuildError(Exception):
    """The self-contained installer executable could not be built."""


class ToolMissingError(InstallerBuildError):
    """A host tool the build needs (debootstrap, unshare, chroot) is not installed."""
