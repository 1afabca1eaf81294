"""Removing a whole site: everything it runs, its units, data, images and its root.

The order makes a kill at any instant harmless: the watchdog goes first (so it cannot
restart what is being stopped), then every release and the front door, then what the
engine holds for the site (units, named volumes, image tags), all of it idempotent, with
the site root still in place; a second run simply does the same again. Only then is the
root renamed aside in one step and deleted; a run that finds the renamed root (a kill
during the deletion) finishes deleting it.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError, SiteError
from appliance.fsutil import fsync_dir
from appliance.site import watchdog_units
from appliance.site.engine import Engine
from appliance.site.layout import Site
from appliance.site.lock import site_lock

# What only a site root holds: a directory holding none of these is not removed.
SITE_MARKERS = ("state.json", "releases", "blobs", "audit", ".install.lock", "root.json")
FRONT_DOOR_DIR = "frontdoor"  # appliance.frontdoor.site.CONF_DIR (kept out of this layer)


def trash_path(root: Path) -> Path:
    """Where the root is renamed to just before it is deleted (same directory: a rename)."""
    root = Path(root).absolute()
    return root.with_name(f".{root.name}.uninstalling")


def check_site(root: Path) -> None:
    """Refuse a root that is not a site (absent, a link, not a directory, or holding no
    file a site has), so a mistyped --root removes nothing.

    Raises:
        SiteError: in one line, naming the root and what was expected.
    """
    root = Path(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise SiteError(f"there is no site at {root}; nothing was removed") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SiteError(f"{root} is not a directory (a link or a file), so not a site root; "
                        "give the site's own directory with --root; nothing was removed")
    if not any(os.path.lexists(root / m) for m in SITE_MARKERS):
        raise SiteError(f"{root} is not a site root (it holds no state.json, releases/ or "
                        "blobs/); check --root; nothing was removed")


@dataclass(frozen=True)
class SiteSummary:
    """What a removal will take away, for the question asked before it."""

    releases: list[int]
    front_door: bool
    watchdog: bool

    def line(self, root: Path) -> str:
        rel = ", ".join(str(s) for s in self.releases) or "none"
        door = "its front door, " if self.front_door else ""
        dog = "its watchdog, " if self.watchdog else ""
        return (f"remove the site at {root}: releases {rel}, {door}{dog}its services' data, "
                "its images and its verified store")


def summary(site: Site) -> SiteSummary:
    """What `remove_site` would remove (the root must be a site: see `check_site`)."""
    return SiteSummary([r.sequence for r in site.releases()],
                       (site.root / FRONT_DOOR_DIR).is_dir(),
                       watchdog_units.WatchdogSetup.read(site.root) is not None)


def finish_interrupted(root: Path, say: Callable[[str], None]) -> bool:
    """Delete a root an earlier removal renamed aside but did not finish deleting; True
    when there was one."""
    trash = trash_path(root)
    if not os.path.lexists(trash):
        return False
    shutil.rmtree(trash)
    fsync_dir(trash.parent)
    say(f"removed {root} (left half-deleted by an earlier run)")
    return True


def remove_site(site: Site, engine: Engine, say: Callable[[str], None], *,
                systemctl: Callable[..., None] | None = None) -> None:
    """Stop and remove everything of the site at `site.root`, saying one line per thing
    removed; a second run after a kill finishes the job.

    Raises:
        SiteError: the root is not a site (nothing is touched).
        EngineUnavailableError: the engine does not answer (nothing is touched).
        EngineError: the engine refused to stop or remove something (the root is kept,
            so the command can run again).
    """
    root = site.root
    if not os.path.lexists(root) and finish_interrupted(root, say):
        return
    check_site(root)
    engine.ping()  # before anything goes: a site whose containers cannot be stopped stays
    with site_lock(site):
        kw = {"systemctl": systemctl} if systemctl is not None else {}
        for path in watchdog_units.remove(root, **kw):
            say(f"removed watchdog {path}")
        sequences = {r.sequence for r in site.releases()} | engine.running()
        for seq in sorted(sequences, reverse=True):
            engine.stop(seq)
            say(f"stopped release {seq} ({engine.name} engine)")
        stop_proxy = getattr(engine, "stop_proxy", None)  # a ProxyHost: the front door
        if stop_proxy is not None:
            stop_proxy()  # idempotent: also a proxy left by a first install that failed
            if (root / FRONT_DOOR_DIR).exists():
                say(f"stopped and removed the front door {engine_proxy_name(engine)}")
        for line in engine.forget_site():
            say(line)
    trash = trash_path(root)
    try:
        os.rename(root, trash)
        fsync_dir(trash.parent)
        shutil.rmtree(trash)
        fsync_dir(trash.parent)
    except OSError as e:
        raise SiteError(f"cannot delete the site root {root}: {e.strerror or e}; fix that "
                        "and run `appliance uninstall` again") from e
    say(f"removed {root} (store, releases, data, logs, audit trail, keys)")


def engine_proxy_name(engine: object) -> str:
    """The front door's name on `engine`, for the line that says it was removed."""
    name = getattr(engine, "proxy_name", None)
    try:
        return str(name()) if callable(name) else "proxy"
    except (ApplianceError, OSError):
        return "proxy"
