"""Finding the container engine's socket on a server where nobody typed one.

Run from a stick with no flags, the installer must find the engine itself:
`DOCKER_HOST` when set; else Docker's socket when it answers (what the
installer always used); else rootful Podman's socket when it answers; else,
where systemd is PID 1 and Podman ships `podman.socket`, that unit is
started (socket activation, the way Podman is meant to serve its API) and
its socket used. When none answers, Docker's default is returned and the
engine's own error says what to start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

DOCKER_SOCKET = "unix:///var/run/docker.sock"
PODMAN_SOCKET = "unix:///run/podman/podman.sock"
CANDIDATES = (DOCKER_SOCKET, PODMAN_SOCKET)
_SYSTEMD_RUNNING = Path("/run/systemd/system")  # exists only when systemd is PID 1


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the unix socket `url` accepts a connection."""
    if not url.startswith("unix://"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(url.removeprefix("unix://"))
    except OSError:
        return False
    return True


def start_podman_socket() -> bool:
    """Start systemd's `podman.socket` unit; whether it started (False without systemd)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not _SYSTEMD_RUNNING.is_dir():
        return False
    try:
        proc = subprocess.run([systemctl, "start", "podman.socket"], capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def find_docker_host(
    environ: Mapping[str, str] | None = None,
    candidates: Sequence[str] = CANDIDATES,
    activate: Callable[[], bool] = start_podman_socket,
    activated: str = PODMAN_SOCKET,
) -> str:
    """The engine socket to use when none was given (see the module's docstring)."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_HOST"):
        return env["DOCKER_HOST"]
    for url in candidates:
        if answers(url):
            return url
    if activate() and answers(activated, timeout_s=10.0):
        return activated
    return candidates[0]
