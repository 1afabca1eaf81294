"""Container engines (Docker/Podman through the docker SDK) and the process engine."""

from __future__ import annotations

from pathlib import Path

from appliance.engines.base import Engine, Launch, launches, with_port
from appliance.errors import EngineError
from appliance.site.layout import Site

__all__ = ["Engine", "Launch", "launches", "make_engine", "with_port"]


def make_engine(kind: str, site: Site, *, docker_host: str | None = None,
                unit_dir: Path | None = None) -> Engine:
    """The engine named `kind` ("docker" or "process") for `site`.

    Raises:
        EngineError: an unknown kind.
    """
    if kind == "docker":
        from appliance.engines.docker import DockerEngine
        return DockerEngine(site, base_url=docker_host)
    if kind == "process":
        from appliance.engines.process import ProcessEngine
        return ProcessEngine(site, unit_dir=unit_dir) if unit_dir else ProcessEngine(site)
    raise EngineError(f"unknown engine {kind!r}; use --engine docker or --engine process")
