"""Container engines (Docker/Podman through the docker SDK) and the process engine."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from appliance.errors import EngineError
from appliance.site.engine import Engine, Launch, launches, with_port
from appliance.site.layout import Site

__all__ = ["RUNTIME_COMMAND_ENV", "Engine", "Launch", "launches", "make_engine", "with_port"]

RUNTIME_COMMAND_ENV = "APPLIANCE_RUNTIME_COMMAND"  # process engine: command template


def make_engine(kind: str | None, site: Site, *, docker_host: str | None = None,
                unit_dir: Path | None = None, runtime_from: str | None = None) -> Engine:
    """The engine named `kind` ("docker" or "process") for `site`; with no kind, the one
    the current release runs on, else docker (at `docker_host`, else the socket
    `appliance.engines.detect` finds), or the process engine on a server with no
    container engine installed at all. The process engine runs each service from its
    image's root unless `runtime_from` is "host" or APPLIANCE_RUNTIME_COMMAND names a
    command template for the host's own runtime.

    Raises:
        EngineError: an unknown kind.
    """
    if kind is None:
        from appliance.engines.detect import no_container_engine
        cur = site.current() if site.root.exists() else None
        if cur is not None and cur.record.engine:
            kind = cur.record.engine
        elif docker_host is None and not os.environ.get("DOCKER_HOST") and no_container_engine():
            kind = "process"  # a bare server: no engine installed, and none is needed
        else:
            kind = "docker"
    if kind == "docker":
        from appliance.engines.detect import detect_docker_host
        from appliance.engines.docker import DockerEngine
        return DockerEngine(site, base_url=detect_docker_host(docker_host))
    if kind == "process":
        from appliance.engines.process import DEFAULT_COMMAND, DEFAULT_UNIT_DIR, ProcessEngine
        template = os.environ.get(RUNTIME_COMMAND_ENV)
        if template:
            runtime_from = "host"
        return ProcessEngine(site, command=shlex.split(template) if template else DEFAULT_COMMAND,
                             unit_dir=unit_dir or DEFAULT_UNIT_DIR,
                             runtime_from=runtime_from or "image")
    raise EngineError(f"unknown engine {kind!r}; use --engine docker or --engine process")
