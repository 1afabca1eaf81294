"""What each engine holds for a site beyond its running releases, and its removal when
the site is removed (`appliance uninstall`, `appliance.site.removal`).

The process engine keeps its services' data, image roots and logs under the site root
(removed with it); only its units live elsewhere. A container engine keeps one named
data volume per service (`hardening.data_volume`) and the images it loaded, tagged with
their reference and the release's sequence.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import EngineError, SiteError
from appliance.site.layout import Site


def release_units(unit_dir: Path, tag: str) -> list[Path]:
    """The site's release units in `unit_dir` and their boot links (not the front door's or
    the watchdog's, whose owners remove them)."""
    units = sorted(Path(unit_dir).glob(f"appliance-{tag}-[0-9]*-*.service"))
    wants = Path(unit_dir) / "multi-user.target.wants"
    links = sorted(wants.glob(f"appliance-{tag}-[0-9]*-*.service")) if wants.is_dir() else []
    return [*links, *units]


def forget_process(unit_dir: Path, tag: str, use_systemd: bool) -> list[str]:
    """Delete the site's release units (the services are stopped); one line per unit.

    Raises:
        EngineError: systemctl refused to reload after the units went.
    """
    lines = []
    for path in release_units(unit_dir, tag):
        path.unlink(missing_ok=True)
        lines.append(f"removed unit {path}")
    if lines and use_systemd:
        r = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False,
                           timeout=60)
        if r.returncode != 0:
            raise EngineError("systemctl daemon-reload failed: "
                              f"{r.stderr.decode(errors='replace').strip()[:300]}")
    return lines


def image_tags(site: Site, sequence_reference: Callable[[str, int], str]
               ) -> list[tuple[str, str]]:
    """(name, config digest) of every image name the engine gave this site's releases:
    each image's reference and its sequence tag (`docker.sequence_reference`)."""
    out: dict[str, str] = {}
    for rel in site.releases():
        try:
            manifest = rel.manifest()
        except SiteError:
            continue  # an unreadable release: its sequence tags stay (docker rmi by hand)
        images = [manifest.image(n) for n in dict.fromkeys(s.image for s in manifest.services)]
        if (door := manifest.frontdoor_image()) is not None:
            images.append(door)
        for img in images:
            out[sequence_reference(img.reference, rel.sequence)] = img.config_digest
            out.setdefault(img.reference, img.config_digest)
    return sorted(out.items())


def data_volumes(names: list[str], tag: str) -> list[str]:
    """The site's own data volumes among the engine's volume `names`."""
    return sorted(n for n in names if n.startswith(f"appliance-{tag}-") and n.endswith("-data"))


def forget_docker(engine: Any, sequence_reference: Callable[[str, int], str]) -> list[str]:
    """Remove the site's data volumes and the image names it loaded (an image goes with
    its last name, unless another container still uses it); one line per thing removed.

    Raises:
        EngineError: the engine refused to remove a volume.
    """
    import docker.errors
    client: Any = engine.client
    lines = []
    try:
        names = [v.name for v in client.volumes.list(filters={"name": f"appliance-{engine.tag}-"})]
    except docker.errors.DockerException as e:
        raise EngineError(f"cannot list the engine's volumes: {e}") from e
    for name in data_volumes(names, engine.tag):
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.DockerException as e:
            raise EngineError(f"cannot remove the data volume {name}: {e}") from e
        lines.append(f"removed data volume {name}")
    for name, digest in image_tags(engine.site, sequence_reference):
        if engine.image_id(name) != digest:
            continue  # gone, or the name now points at another site's or vendor's image
        try:
            client.images.remove(name, noprune=False)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as e:
            # in use by a container of another site, say: the engine keeps it, as it should
            lines.append(f"kept image {name} ({str(e.explanation or e)[:120]})")
            continue
        gone = False
        with contextlib.suppress(EngineError):
            gone = engine.image_id(digest) is None
        lines.append(f"removed image name {name}" + (" and its image" if gone else ""))
    return lines
