"""How a service's container is confined: CIS Docker Benchmark section 5, log size, data.

Kept apart from `docker.py` so the list reads as one table (docs/security.md has the
same items with their tests). Network and port choices are not made here.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import Any

from appliance.bundle.manifest import Manifest

MIB = 1024 * 1024
GIB = 1024 * MIB
# Memory: the runtime with ONNX Runtime or torch loaded needs about 1 GiB before any
# model; a model takes its weights plus about as much again in arenas and buffers.
BASE_MEMORY = 1 * GIB
MEMORY_PER_WEIGHT_BYTE = 3
MIN_MEMORY = 2 * GIB
PIDS_LIMIT = 1024  # the runtime's threads and worker processes, with room; a fork bomb stops
NOFILE = 65536  # 1,000 idle client connections and the model files must not hit EMFILE
MIN_NOFILE = 4096  # below this the runtime cannot hold the connections the tests open
# RLIMIT_NPROC counts every process of the image's user on the host (all services and both
# slots run as the same uid), so it is a backstop above the per-container pids limit. It
# is also set because podman 4.3, given only nofile, sets an nproc it may not raise to.
NPROC = 8 * PIDS_LIMIT
TMPFS_SIZE = "256m"
LOG_MAX_SIZE = "10m"  # json-file rotation: at most LOG_MAX_FILES x LOG_MAX_SIZE per container
LOG_MAX_FILES = "3"
# Where the runtime keeps its logs and metrics history when the image declares no VOLUME.
DEFAULT_DATA_DIR = "/var/lib/appliance-runtime"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one service's container."""

    memory_bytes: int
    nano_cpus: int
    pids: int = PIDS_LIMIT
    nofile: int = NOFILE


def service_limits(manifest: Manifest, service: str, cpus: int | None = None) -> Limits:
    """Limits for `service` from what the bundle declares (its models' weights), with a floor.

    CPUs: all but one of the host's, so a runaway service leaves the host (the installer,
    sshd, the engine) a core to answer on.
    """
    svc = next(s for s in manifest.services if s.name == service)
    weights = sum(m.weights_size for m in manifest.models if m.name in svc.models)
    memory = max(MIN_MEMORY, BASE_MEMORY + MEMORY_PER_WEIGHT_BYTE * weights)
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return Limits(memory_bytes=memory, nano_cpus=max(1, n - 1) * 1_000_000_000,
                  nofile=nofile_limit())


def nofile_limit() -> int:
    """NOFILE, or this host's hard limit when that is lower: the engine cannot raise a
    container's limit past its own (the start fails with "error setting rlimits")."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return NOFILE
    return max(MIN_NOFILE, min(NOFILE, hard))


def data_volume(site_tag: str, service: str) -> str:
    """The named volume that holds one site's service data across releases."""
    return f"appliance-{site_tag}-{service}-data"


def data_dir(image_config: dict[str, Any]) -> str:
    """Where the image keeps its data: its first declared VOLUME, else the runtime's."""
    volumes = sorted(image_config.get("Volumes") or {})
    return volumes[0] if volumes else DEFAULT_DATA_DIR


def hardened(limits: Limits, volume: str, mount_at: str) -> dict[str, Any]:
    """The `containers.run` keyword arguments that confine a service (CIS section 5)."""
    from docker.types import LogConfig, Ulimit
    return {
        "read_only": True,  # 5.12: the image's files cannot be changed from inside
        # /tmp for Python and the runtime's scratch; exec is allowed (torch may JIT there)
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={TMPFS_SIZE}"},  # noqa: S108 - in the container
        "cap_drop": ["ALL"],  # 5.3: the runtime needs no capability (its port is > 1024)
        "security_opt": ["no-new-privileges"],  # 5.25
        "pids_limit": limits.pids,  # 5.28
        "mem_limit": limits.memory_bytes,  # 5.10
        "memswap_limit": limits.memory_bytes,  # no swap on top: fail fast, restart clean
        "nano_cpus": limits.nano_cpus,  # 5.11
        "ulimits": [Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
                    Ulimit(name="nproc", soft=NPROC, hard=NPROC)],
        "log_config": LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE,
                                                          "max-file": LOG_MAX_FILES}),
        # one named volume per site and service, kept across releases (not one per container)
        "volumes": {volume: {"bind": mount_at, "mode": "rw"}},
    }
