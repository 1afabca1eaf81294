"""A thin wrapper over the podman command line, raising PodmanError with the tail of its output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from images.errors import ImageBuildError, PodmanError, ToolMissingError

_TAIL = 600


def run_tool(
    argv: Sequence[str | Path],
    *,
    what: str,
    cwd: Path | None = None,
    verbose: bool = False,
    error: type[ImageBuildError] = PodmanError,
) -> str:
    """Run a host command and return its stdout.

    Raises:
        ToolMissingError: the program is not installed.
        ImageBuildError: (`error`) it exited non-zero; the message ends with its last output.
    """
    args = [str(a) for a in argv]
    if shutil.which(args[0]) is None:
        raise ToolMissingError(f"{args[0]} not found: install it (see .ci/setup-system)")
    if verbose:
        # Stream to stderr so a long build shows its progress and stdout stays clean.
        proc = subprocess.run(args, cwd=cwd, stdout=sys.stderr, text=True, check=False)
        out, err = "", "see the output above"
    else:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
        out, err = proc.stdout, proc.stderr
    if proc.returncode != 0:
        tail = " ".join((err or out).split())[-_TAIL:]
        raise error(f"{what} failed (exit {proc.returncode}): {tail}")
    return out


class Podman:
    """The podman commands the builder needs."""

    def __init__(self, binary: str = "podman", *, verbose: bool = False) -> None:
        self.binary = binary
        self.verbose = verbose

    def run(self, *args: str | Path, what: str, cwd: Path | None = None) -> str:
        """Run `podman ARGS` and return its stdout.

        Raises:
            PodmanError: podman failed.
        """
        return run_tool([self.binary, *args], what=what, cwd=cwd, verbose=False)

    def stream(self, *args: str | Path, what: str, cwd: Path | None = None) -> str:
        """Run `podman ARGS`, showing its output when verbose.

        Raises:
            PodmanError: podman failed.
        """
        return run_tool([self.binary, *args], what=what, cwd=cwd, verbose=self.verbose)

    def image_id(self, ref: str) -> str | None:
        """The full ID of a local image, or None when it is not in local storage.

        Raises:
            ToolMissingError: podman is not installed.
        """
        if shutil.which(self.binary) is None:
            raise ToolMissingError(f"{self.binary} not found: install it (see .ci/setup-system)")
        proc = subprocess.run(
            [self.binary, "image", "inspect", "--format", "{{.Id}}", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return None
        return proc.stdout.strip() or None
