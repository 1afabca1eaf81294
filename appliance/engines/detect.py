"""Which container engine socket to use when none is named: podman first, then Docker.

The order (docs/field-guide.md):
1. `--docker-host` or `$DOCKER_HOST`, when given;
2. podman's rootful socket, `/run/podman/podman.sock`, when it accepts;
3. podman's socket activation: where systemd knows `podman.socket`, start it
   (`systemctl start podman.socket`) and use that socket;
4. Docker's socket, `/var/run/docker.sock`, when it accepts;
5. else Docker's path, so that preflight names what to start.

A server with no container engine at all (`no_container_engine`: neither socket, no
podman.socket unit, no podman, docker or dockerd program) gets the process engine
instead (`appliance.engines.make_engine`), which needs nothing of the host but Linux.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

PODMAN_SOCKET = Path("/run/podman/podman.sock")
DOCKER_SOCKET = Path("/var/run/docker.sock")
PODMAN_UNITS = (Path("/usr/lib/systemd/system/podman.socket"),
                Path("/lib/systemd/system/podman.socket"),
                Path("/etc/systemd/system/podman.socket"))


def accepts(path: Path) -> bool:
    """Whether a unix socket at `path` accepts a connection now."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
        return True
    except OSError:
        return False


def start_podman_socket() -> bool:
    """Ask systemd to start podman.socket (socket activation); whether it did."""
    if not Path("/run/systemd/system").is_dir() or not any(p.is_file() for p in PODMAN_UNITS):
        return False
    try:
        r = subprocess.run(["systemctl", "start", "podman.socket"], capture_output=True,
                           check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def detect_docker_host(given: str | None = None, *, podman: Path = PODMAN_SOCKET,
                       docker: Path = DOCKER_SOCKET,
                       activate: Callable[[], bool] = start_podman_socket) -> str:
    """The engine socket URL to use, in the documented order."""
    if given:
        return given
    env = os.environ.get("DOCKER_HOST")
    if env:
        return env
    if accepts(podman):
        return f"unix://{podman}"
    if activate() and accepts(podman):
        return f"unix://{podman}"
    return f"unix://{docker}"


def no_container_engine(*, podman: Path = PODMAN_SOCKET, docker: Path = DOCKER_SOCKET,
                        units: tuple[Path, ...] = PODMAN_UNITS,
                        which: Callable[[str], str | None] = shutil.which) -> bool:
    """Whether this server has no container engine at all: no socket, no podman.socket
    unit and no engine program (a stopped engine still counts as one)."""
    if podman.exists() or docker.exists() or any(u.is_file() for u in units):
        return False
    return all(which(p) is None for p in ("podman", "docker", "dockerd"))
