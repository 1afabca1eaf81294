"""The base image: Debian bookworm minbase with python3, made by debootstrap and podman import."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from images.errors import BaseImageError
from images.podman import Podman, run_tool

SUITE = "bookworm"
PACKAGES = ("python3",)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BASE_REPO = "localhost/appliance-base"

# Nothing in the image ever runs apt again (there is no network), so the package
# indexes, downloaded .debs, docs, man pages and translations are dead weight.
_PRUNE = (
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists",
    "var/cache/debconf",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
)


def recipe_digest(mirror: str = DEFAULT_MIRROR) -> str:
    """A digest of everything that decides the base image's content (changes it, rebuilds it)."""
    recipe = "\n".join(["v1", SUITE, "minbase", mirror, *PACKAGES, *_PRUNE])
    return hashlib.sha256(recipe.encode()).hexdigest()


def base_tag(mirror: str = DEFAULT_MIRROR) -> str:
    """The local tag the base image is stored under."""
    return f"{BASE_REPO}:{SUITE}-{recipe_digest(mirror)[:12]}"


def ensure_base(
    podman: Podman, cache: Path, *, mirror: str | None = None, log: bool = False
) -> str:
    """Return the tag of the base image, importing the cached rootfs or debootstrapping it.

    Raises:
        BaseImageError: debootstrap or the import failed.
        ToolMissingError: debootstrap or podman is not installed.
    """
    mirror = mirror or os.environ.get("DEBIAN_MIRROR", DEFAULT_MIRROR)
    tag = base_tag(mirror)
    cache.mkdir(parents=True, exist_ok=True)
    rootfs_tar = cache / f"base-{SUITE}-{recipe_digest(mirror)[:12]}.tar"
    if podman.image_id(tag) is not None:
        if not rootfs_tar.exists():
            # Keep the staged rootfs with the cache even when the engine already has
            # the base (another checkout built it): an offline rebuild needs the tar.
            _export_rootfs(podman, tag, rootfs_tar)
        return tag
    if not rootfs_tar.exists():
        _debootstrap_to_tar(rootfs_tar, mirror, log=log)
    podman.run(
        "import",
        "--change",
        'CMD ["/usr/bin/python3"]',
        "--change",
        "ENV LANG=C.UTF-8",
        rootfs_tar,
        tag,
        what=f"podman import {rootfs_tar.name}",
    )
    return tag


def _export_rootfs(podman: Podman, tag: str, out: Path) -> None:
    """Write the base image's filesystem as a rootfs tar (temp name, then rename)."""
    cid = podman.run("create", tag, what=f"podman create {tag}").strip()
    tmp = out.with_name(out.name + ".part")
    try:
        podman.run("export", "-o", tmp, cid, what=f"podman export {tag}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        podman.run("rm", cid, what=f"podman rm {cid[:12]}")


def _debootstrap_to_tar(out: Path, mirror: str, *, log: bool) -> None:
    """Debootstrap a minbase rootfs, prune it, and write it as a tar (temp name, then rename)."""
    if os.geteuid() != 0:
        raise BaseImageError("debootstrap needs root: run `make runtime-image` as root")
    if not KEYRING.exists():
        # Without it debootstrap cannot check the Release signature of what it downloads.
        raise BaseImageError(f"{KEYRING} is missing: install the debian-archive-keyring package")
    work = Path(tempfile.mkdtemp(prefix="appliance-base-", dir=out.parent))
    rootfs = work / "rootfs"
    try:
        run_tool(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             rootfs, mirror],
            what=f"debootstrap {SUITE} from {mirror} (set DEBIAN_MIRROR to a reachable mirror)",
            verbose=log,
            error=BaseImageError,
        )
        for rel in _PRUNE:
            _empty(rootfs / rel)
        tmp = out.with_name(out.name + ".part")
        # tar(1) keeps owners, modes, devices and hard links exactly; numeric ids
        # so the host's user names do not leak in.
        proc = subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tmp), "."],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BaseImageError(f"could not tar the base rootfs: {proc.stderr.strip()[-300:]}")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _empty(path: Path) -> None:
    """Remove a file, or everything inside a directory (the directory itself stays)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
