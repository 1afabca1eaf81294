"""The engine seam: what the install plan asks of Docker/Podman or the process supervisor."""

from __future__ import annotations

import errno
import hashlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.bundle.manifest import Manifest
from appliance.bundle.store import ContentStore
from appliance.progress import ProgressFn, no_progress
from appliance.site.layout import Release, runtime_port, slot_port
from appliance.site.placement import Placement

HEALTH_INTERVAL_S = 10
HEALTH_TIMEOUT_S = 5
HEALTH_RETRIES = 3
HEALTH_START_PERIOD_S = 120


@dataclass(frozen=True)
class Launch:
    """One service of one release as the engine must start it."""

    release: int
    service: str
    image_ref: str  # the human reference, for messages
    image_id: str  # the signed config digest: what the engine runs
    models: list[str]
    port: int  # host port in this release's slot
    gpu_index: int | None
    gpu_uuid: str
    health_path: str
    loopback_only: bool = False  # behind the front door: listen on 127.0.0.1 only
    gpu_policy: str = "preferred"  # the service's `gpu:`; the runtime refuses the CPU on required


def behind_front_door(manifest: Manifest) -> bool:
    """Whether the release's services are reached through the front door (the bundle
    carries its proxy image) rather than each on its declared port."""
    return manifest.frontdoor_image() is not None


def launches(manifest: Manifest, placement: Placement, slot: int,
             door: bool = False) -> list[Launch]:
    """Every service of `manifest` with its image, port in `slot` and placed device.

    Behind the front door (`door`) a runtime listens on loopback only, on `runtime_port`;
    the proxy owns the declared port. Without one, on the declared port's `slot_port`.
    """
    out = []
    for svc in manifest.services:
        p = placement.for_service(svc.name)
        image = manifest.image(svc.image)
        port = runtime_port(svc.port, slot) if door else slot_port(svc.port, slot)
        out.append(Launch(manifest.sequence, svc.name, image.reference, image.config_digest,
                          list(svc.models), port, p.gpu_index if p.device == "gpu" else None,
                          p.gpu_uuid, svc.health, loopback_only=door, gpu_policy=svc.gpu))
    return out


def with_option(command: Sequence[str], option: str, value: str) -> list[str]:
    """The runtime command with `option` (e.g. `--port`) set to `value`, replaced or appended."""
    cmd = list(command)
    for i, arg in enumerate(cmd):
        if arg == option and i + 1 < len(cmd):
            cmd[i + 1] = value
            return cmd
        if arg.startswith(f"{option}="):
            cmd[i] = f"{option}={value}"
            return cmd
    return [*cmd, option, value]


def with_port(command: Sequence[str], port: int) -> list[str]:
    """The runtime command with `--port` set to `port` (replaced, or appended)."""
    return with_option(command, "--port", str(port))


def runtime_command(command: Sequence[str], launch: Launch) -> list[str]:
    """The runtime command for `launch`: its port, and loopback only behind the front door."""
    cmd = with_port(command, launch.port)
    return with_option(cmd, "--host", "127.0.0.1") if launch.loopback_only else cmd


def port_in_use(port: int) -> bool:
    """Whether something listens on TCP `port` on any IPv4 address of this host.

    A bind probe with SO_REUSEADDR, as servers bind: it fails on a listener, not on
    connections of a stopped server still in TIME_WAIT.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def site_id(root: Path) -> str:
    """A short id of a site root, so engines tell apart the releases of two sites."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


class Engine(Protocol):
    """Runs releases. Every method is idempotent, so a re-run after a crash completes."""

    name: str

    def ping(self) -> str:
        """Check the engine answers; return a one-line description (name and version).

        Raises:
            EngineUnavailableError: it does not answer; the message says what to start.
        """
        ...

    def gpu_runtime(self) -> bool:
        """Whether containers started here can be given NVIDIA GPUs."""
        ...

    def load(self, manifest: Manifest, release: Release, store: ContentStore,
             progress: ProgressFn = no_progress) -> None:
        """Make the release's images (or model files) ready to run, from the store only.

        Raises:
            ImageLoadError: the engine refused an image or loaded a different id.
        """
        ...

    def start(self, manifest: Manifest, release: Release, placement: Placement, slot: int,
              progress: ProgressFn = no_progress) -> dict[str, str]:
        """Start every service of the release (replacing leftovers); return service -> URL.

        Raises:
            EngineError: a service could not be started.
        """
        ...

    def alive(self, sequence: int, service: str) -> bool:
        """Whether the service's container or process is still running."""
        ...

    def logs_tail(self, sequence: int, service: str, lines: int = 20) -> str:
        """The last lines the service printed, for an error message."""
        ...

    def stop(self, sequence: int) -> None:
        """Stop and remove every service of a release; nothing running is fine."""
        ...

    def running(self) -> set[int]:
        """Sequences of this site's releases that have something running (or crash-looping)."""
        ...

    def enable(self, sequence: int) -> None:
        """Make `sequence` the release that comes back after a reboot (and no other)."""
        ...

    def restart(self, sequence: int, service: str) -> None:
        """Kill and restart one service that lives but answers nothing (the watchdog's cure).

        Raises:
            EngineError: it could not be restarted.
        """
        ...

    def forget_site(self) -> list[str]:
        """Remove what the engine still holds for this site once its releases are stopped
        (units, named data volumes, image tags; the site is being removed); one line per
        thing removed. Idempotent.

        Raises:
            EngineError: the engine refused a removal.
        """
        ...
