"""Errors raised while building the runtime image."""


class ImageBuildError(Exception):
    """Root of every runtime-image build failure; the message is one line for a person."""


class ToolMissingError(ImageBuildError):
    """A host tool the build needs (podman, debootstrap) is not installed."""


class BaseImageError(ImageBuildError):
    """The debootstrap base image could not be made or imported."""


class WheelhouseError(ImageBuildError):
    """The wheels for the image could not be downloaded or built on the host."""


class PodmanError(ImageBuildError):
    """A podman command failed."""
