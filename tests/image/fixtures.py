"""Session fixtures for the runtime image, shared by any test package that needs it.

Use from another package's conftest.py:
    from tests.image.fixtures import runtime_image, runtime_image_tar  # noqa: F401
The first use builds the image (cold: about 1-2 minutes, debootstrap and PyPI on the
host); later uses, in this run or the next, reuse the cache keyed by the inputs' hash.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from images.build import ROOT, BuiltImage, build_runtime_image
from images.errors import ImageBuildError


def require_podman() -> None:
    """Skip the calling test when podman is not installed (CI installs it: .ci/setup-system)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (see .ci/setup-system)")


@pytest.fixture(scope="session")
def runtime_image() -> BuiltImage:
    """The slim runtime image, built (or reused) and saved as out/runtime-image.tar."""
    require_podman()
    try:
        return build_runtime_image("slim", root=ROOT, out_dir=ROOT / "out")
    except ImageBuildError as e:
        pytest.fail(f"runtime image build failed: {e}")


@pytest.fixture(scope="session")
def runtime_image_tar(runtime_image: BuiltImage) -> Path:
    """Path of out/runtime-image.tar (docker-archive), usable as a spec's runtime_image.archive."""
    return runtime_image.archive


@pytest.fixture(scope="session")
def runtime_image_torch() -> BuiltImage:
    """The runtime image with PyTorch CPU (big: built only by tests that ask for it)."""
    require_podman()
    try:
        return build_runtime_image("torch", root=ROOT, out_dir=ROOT / "out")
    except ImageBuildError as e:
        pytest.fail(f"torch runtime image build failed: {e}")


@pytest.fixture(scope="session")
def runtime_image_torch_tar(runtime_image_torch: BuiltImage) -> Path:
    """Path of out/runtime-image-torch.tar (docker-archive)."""
    return runtime_image_torch.archive


@pytest.fixture(scope="session")
def proxy_image_tar() -> Path:
    """Path of out/proxy-image.tar: the real front-door proxy image (`make proxy-image`),
    built once, then reused by its inputs' hash."""
    require_podman()
    from images.proxy import build_proxy_image
    try:
        return build_proxy_image(root=ROOT, out_dir=ROOT / "out").archive
    except ImageBuildError as e:
        pytest.fail(f"proxy image build failed: {e}")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run podman and return the finished process (no check: tests assert on it)."""
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
