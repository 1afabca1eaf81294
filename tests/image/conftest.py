"""Fixtures for the runtime image tests (the image is built once per session)."""

from tests.image.fixtures import (  # noqa: F401
    runtime_image,
    runtime_image_tar,
    runtime_image_torch,
    runtime_image_torch_tar,
)
