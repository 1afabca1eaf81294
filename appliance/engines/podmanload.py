"""Load images into a podman on this host in place, from the content store's files.

podman 4.3's socket writes a whole `POST /images/load` upload to a temp file before it
loads it: a second copy of multi-gigabyte weights (into `/tmp`, which may be a small
tmpfs). When the engine is a podman on this host whose storage this user owns, each
image is instead loaded with `podman load` from a one-image OCI layout of hard links
to the store's blobs; podman checks every blob against its digest as it copies it.
Whatever cannot be loaded this way is left for the caller to stream.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from appliance.bundle.imagearchive import OCI_LAYOUT, blob_path, oci_index
from appliance.bundle.manifest import Image, image_blobs
from appliance.bundle.store import ContentStore
from appliance.engines.libpod import LIBPOD_API
from appliance.errors import ImageLoadError, StoreError
from appliance.progress import Progress, ProgressFn

OnLoaded = Callable[[Image, list[str]], None]  # the image, the names podman gave it


def podman_cli(base_url: str, api: Any) -> list[str] | None:
    """`podman` with the flags that reach the storage behind `base_url`, when that socket
    is a podman on this host whose storage this user owns; else None.

    `api` is the docker SDK's low-level client on that socket.
    """
    if not base_url.startswith("unix://") or (exe := shutil.which("podman")) is None:
        return None
    try:  # only podman answers its own API (Docker: 404); cheaper than /version
        r = api.get(f"{api.base_url}{LIBPOD_API}/info", timeout=30)
        r.raise_for_status()
        info = r.json()
    except Exception:  # not a libpod API we understand: stream instead
        return None
    store, host = info.get("store") or {}, info.get("host") or {}
    graph, run = store.get("graphRoot"), store.get("runRoot")
    rootless = bool((host.get("security") or {}).get("rootless"))
    if not (graph and run) or rootless != (os.geteuid() != 0):
        return None
    try:
        if os.stat(graph).st_uid != os.geteuid():
            return None
    except OSError:
        return None
    # Only the roots: podman takes the driver and its own temp dir from the storage's
    # database when they are not given, and refuses a given one that differs.
    return [exe, "--root", graph, "--runroot", run]


def load_in_place(cli: list[str], images: list[Image], store: ContentStore,
                  progress: ProgressFn, on_loaded: OnLoaded) -> list[Image]:
    """`podman load` each image from an OCI layout over the store's blobs; return the
    images left for streaming (all from the first one podman refuses).

    Raises:
        ImageLoadError: the store cannot give the images' small blobs back verified.
    """
    left = list(images)
    try:
        # per image, shared layers counted in each: podman reads them again (and
        # skips writing them) for each image, so the bar ends at 100 %
        sizes = [sum(store.size(d) for d in image_blobs([img])) for img in images]
        for img in images:
            store.verify(img.manifest_digest)  # the small ones podman reads unchecked
            store.verify(img.config_digest)
    except StoreError as e:
        raise ImageLoadError(f"cannot read the images from the store: {e}") from e
    total, done = sum(sizes), 0
    for img, size in zip(images, sizes, strict=True):
        message = f"podman load {img.reference} from the store"

        def moved(n: int, base: int = done, size: int = size, message: str = message) -> None:
            progress(Progress("load", base + min(n, size - 1), total, message))

        try:
            with _oci_layout(store, img) as layout, _named_path(layout) as path:
                ok, out = _run_watched([*cli, "load", "-i", str(path)], moved)
        except (OSError, StoreError) as e:  # no hard links here (another filesystem)
            ok, out = False, f"cannot lay the image out in {store.tmp}: {e}"
        if not ok:
            progress(Progress("load", message=f"podman could not load {img.reference} "
                              f"from the store ({out}); streaming it instead"))
            return left
        done += size
        progress(Progress("load", done, total, message))
        names = [n.strip() for line in re.findall(r"^Loaded image(?:\(s\))?: (.+)$", out, re.M)
                 for n in line.split(",") if n.strip()]
        on_loaded(img, names)
        left.remove(img)
    return left


@contextlib.contextmanager
def _oci_layout(store: ContentStore, img: Image) -> Iterator[Path]:
    """A one-image OCI layout in the store's temp area whose blobs are hard links to
    the store's (same filesystem: no copy; a link keeps the verified inode even if
    the store's name is replaced meanwhile). Removed afterwards."""
    store.ensure()
    d = store.tmp / f"oci-{secrets.token_hex(8)}"
    try:
        (d / "blobs" / "sha256").mkdir(parents=True)
        for digest in image_blobs([img]):
            os.link(store.path(digest), d / blob_path(digest))
        (d / "oci-layout").write_bytes(OCI_LAYOUT)
        (d / "index.json").write_bytes(oci_index([img], store.size))
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# podman names an image loaded from a directory `localhost/<the path>`, so the path has
# to read as a repository name: lowercase components joined by `.`, `_`, `__` or `-`.
_REPOSITORY_PATH = re.compile(r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+")
# A link made with a random name fails rather than follow one planted there first.
_LINK_DIRS = ("/run", "/tmp", "/var/tmp")  # noqa: S108


@contextlib.contextmanager
def _named_path(layout: Path) -> Iterator[Path]:
    """`layout`, or a fresh symlink to it whose path podman can turn into a name."""
    if _REPOSITORY_PATH.fullmatch(str(layout)) and len(str(layout)) < 200:
        yield layout
        return
    for parent in _LINK_DIRS:
        link = Path(parent) / f"appliance-load-{secrets.token_hex(8)}"
        try:
            os.symlink(layout, link)
        except OSError:
            continue
        try:
            yield link
        finally:
            link.unlink(missing_ok=True)
        return
    yield layout  # podman will refuse the name; the images are streamed instead


def _run_watched(cmd: list[str], on_bytes: Callable[[int], None]) -> tuple[bool, str]:
    """Run `cmd`; while it runs, report about how many bytes of the image it has copied.

    The estimate is half of what the process has read (/proc/PID/io rchar): podman reads
    each blob once from the layout and once more from its own staging copy as it applies
    the layer. Returns (True, its output) when it succeeds, else (False, its reason: the
    OCI layout's line of podman's error, or the last line of it).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            while True:
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    on_bytes(_read_chars(proc.pid) // 2)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode == 0:
            out.seek(0)
            return True, out.read().decode(errors="replace")
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
        # podman tries each archive format in turn; ours is the OCI layout's line
        why = [ln.strip(" *") for ln in lines if ln.lstrip(" *").startswith("oci:")]
        return False, (why or lines or [f"exit status {proc.returncode}"])[-1][:300]


def _read_chars(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


