"""The proxy container, hardened per the CIS Docker Benchmark section 5, for the docker SDK.

The same keyword arguments create it through Docker 20.10's socket and through podman's
Docker-compatible one. The container mounts the rendered configuration, certificate and
token map read-only (`conf_dir`) and a small host directory for the runtime API's socket
(`run_dir`, so the installer on the host can reach it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ProxyConfigError

PROXY_UID = 10002  # the image's appliance-proxy user (images/Containerfile.proxy)
CONF_IN_CONTAINER = Path("/etc/appliance-proxy")
RUN_IN_CONTAINER = Path("/run/appliance-proxy")
# HAProxy needs about two descriptors per connection; Docker's default soft limit of
# 1024 lets some 1,030 idle connections take the service down.
NOFILE = 65536
PRIVILEGED_PORTS = 1024
# Given explicitly: with any ulimit set, podman fills RLIMIT_NPROC with 1048576, which
# a box with a lower hard limit refuses at start. The pids limit is the real bound.
NPROC = 4096


@dataclass(frozen=True)
class ProxyContainer:
    """What the installer decides about the proxy container.

    `network` None means the host's network namespace (the proxy owns the service
    ports itself and reaches runtimes on loopback); otherwise the named engine
    network, with each of `ports` published on `publish_address`.
    """

    image: str
    name: str
    conf_dir: Path
    run_dir: Path
    ports: tuple[int, ...]
    network: str | None = None
    publish_address: str = "0.0.0.0"  # noqa: S104 - the front door faces the LAN
    memory_bytes: int = 256 * 1024 * 1024
    cpus: float = 1.0
    pids_limit: int = 256
    nofile: int = NOFILE  # keep ProxySettings.maxconn under about half of it
    log_max_bytes: int = 10 * 1024 * 1024
    labels: dict[str, str] = field(default_factory=dict)


def create_kwargs(spec: ProxyContainer) -> dict[str, Any]:
    """Keyword arguments for `docker.DockerClient.containers.create` (or `.run`).

    No capability at all, not even NET_BIND_SERVICE: Docker gives a non-root user no
    ambient capabilities and no-new-privileges voids file capabilities, so a port under
    1024 is opened by lowering the container network's unprivileged-port floor instead
    (a per-namespace sysctl), which needs an engine network.

    Raises:
        ProxyConfigError: a port under 1024 on the host's network namespace.
    """
    from docker.types import LogConfig, Ulimit

    low = sorted(p for p in spec.ports if p < PRIVILEGED_PORTS)
    if low and spec.network is None:
        raise ProxyConfigError(
            f"port {low[0]} is under 1024 and the proxy runs unprivileged on the host's "
            "network: give the proxy an engine network, or declare a port of 1024 or more")
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "user": f"{PROXY_UID}:{PROXY_UID}",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=16m"},  # noqa: S108
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": spec.pids_limit,
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_bytes,  # no swap beyond the limit
        "nano_cpus": int(spec.cpus * 1e9),
        "ulimits": [Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile),
                    Ulimit(name="nproc", soft=NPROC, hard=NPROC)],
        # "always": a killed proxy (OOM, `kill -9`) comes back by itself.
        "restart_policy": {"Name": "always"},
        "log_config": LogConfig(type="json-file", config={
            "max-size": str(spec.log_max_bytes), "max-file": "3"}),
        "volumes": {
            str(spec.conf_dir): {"bind": str(CONF_IN_CONTAINER), "mode": "ro"},
            str(spec.run_dir): {"bind": str(RUN_IN_CONTAINER), "mode": "rw"},
        },
        "labels": {"org.appliance.role": "front-door", **spec.labels},
        "stop_signal": "SIGUSR1",  # HAProxy's soft stop: finish requests, then exit
        "detach": True,
    }
    if spec.network is None:
        kwargs["network_mode"] = "host"
    else:
        kwargs["network"] = spec.network
        kwargs["ports"] = {f"{p}/tcp": (spec.publish_address, p) for p in spec.ports}
        if low:
            kwargs["sysctls"] = {"net.ipv4.ip_unprivileged_port_start": str(low[0])}
    return kwargs


def own_for_proxy(paths: Iterable[Path]) -> None:
    """Give the proxy's user the files it must read (the 0600 site PEM) and its run dir.

    Modes stay as they are: only the proxy's user (and root) may read the key.
    """
    for path in paths:
        os.chown(path, PROXY_UID, PROXY_UID)
