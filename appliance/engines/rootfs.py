"""Unpack a verified runtime image's layers into a root directory the process engine runs.

Layers are read member by member from the content store (never `extractall`),
each blob hashed as it streams and compared with its signed digest. Every path
is walked from the root one component at a time with O_NOFOLLOW, so nothing is
ever written through a symlink; absolute and `..` paths, links that leave the
root and whiteouts that escape their directory refuse the image. Device nodes
and FIFOs are skipped, setuid/setgid bits dropped, OCI whiteouts (`.wh.NAME`,
`.wh..wh..opq`) applied. The root is built in a temp directory renamed into
place, so a kill leaves either no root or a complete one.

Roots live in `<site>/rootfs/<key>`, the key a digest of the unpacked layers in
order: every service image on one runtime (they differ only in their weights
layers, which are bind-mounted instead) and every release shares one root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from appliance.bundle.layers import member_path
from appliance.bundle.manifest import Manifest
from appliance.bundle.store import ContentStore, hex_of
from appliance.errors import DigestMismatchError, LayerError, StoreError
from appliance.fsutil import fsync_dir

CHUNK = 1024 * 1024
MAX_MEMBERS = 1_000_000
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# Mount points the launcher (or systemd) needs whatever the image holds.
MOUNT_POINTS = ("proc", "dev", "tmp", "sys")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def runtime_layers(manifest: Manifest, image_name: str) -> list[str]:
    """The image's layers but its models' weights layers (those are bind-mounted), in order."""
    img = manifest.image(image_name)
    weights = {m.weights_digest for m in manifest.models}
    return [d for d in img.layers if d not in weights]


def root_key(layers: Sequence[str]) -> str:
    """The directory name of the root made of `layers` (a digest of them, in order)."""
    return hashlib.sha256("\n".join(layers).encode()).hexdigest()


def roots_dir(site_root: Path) -> Path:
    """Where a site keeps its unpacked image roots."""
    return Path(site_root) / "rootfs"


def ensure_root(store: ContentStore, layers: Sequence[str], parent: Path,
                mount_points: Iterable[str] = ()) -> Path:
    """The root directory of `layers` under `parent`, unpacked now unless it is already there.

    Raises:
        LayerError: a layer holds an unsafe member (nothing is left behind).
        DigestMismatchError: a layer's bytes do not hash to its digest.
        StoreError: a blob is missing or the disk is full.
    """
    dest = Path(parent) / root_key(layers)
    if dest.is_dir():
        return dest
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        fd = os.open(tmp, _DIR_FLAGS)
        try:
            for digest in layers:
                with store.open(digest) as blob:
                    apply_layer(fd, blob, digest)
            for mp in (*MOUNT_POINTS, *mount_points):
                _dir_at(fd, member_path(mp.lstrip("/")).parts, create=True, mode=0o755)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o755)  # noqa: S103 - a root file system: its own modes inside
        os.replace(tmp, dest)
        fsync_dir(parent)
    except OSError as e:
        raise StoreError(f"cannot unpack the runtime image into {parent}: {e.strerror or e}; "
                         "free disk space and run again") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def remove_unused(parent: Path, keep: Iterable[str]) -> list[Path]:
    """Remove every root (and leftover temp root) under `parent` whose key is not in `keep`."""
    wanted = set(keep)
    gone: list[Path] = []
    if not parent.is_dir():
        return gone
    for p in parent.iterdir():
        if p.name not in wanted and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def ensure_mount_point(root: Path, path: str) -> None:
    """Make the empty directory `path` in an unpacked root, never through a link: a
    mount point only some services need (the GPU driver's), made when one starts.

    Raises:
        LayerError: a component of `path` is a symlink or not a directory.
        StoreError: the directory cannot be made.
    """
    try:
        fd = os.open(root, _DIR_FLAGS)
        try:
            os.close(_dir_at(fd, member_path(path.lstrip("/")).parts, create=True))
        finally:
            os.close(fd)
    except OSError as e:
        raise StoreError(f"cannot make {path} in the image root {root}: {e.strerror or e}; "
                         "run the install again") from e


class _HashingReader:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.hasher.update(data)
        return data

    def drain(self) -> str:
        while self.read(CHUNK):
            pass
        return self.hasher.hexdigest()


def apply_layer(root_fd: int, blob: BinaryIO, digest: str) -> None:
    """Apply one layer (tar, optionally gzip) to the directory open as `root_fd`.

    Raises:
        LayerError: an unsafe member or an unreadable tar.
        DigestMismatchError: the blob does not hash to `digest`.
    """
    want = hex_of(digest)
    src = _HashingReader(blob)
    seen: set[tuple[str, ...]] = set()  # paths this layer wrote, kept by an opaque whiteout
    try:
        with tarfile.open(fileobj=src, mode="r|*") as tar:  # type: ignore[call-overload]
            for count, member in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise LayerError(f"layer {digest[:19]} has over {MAX_MEMBERS} members")
                _apply_member(root_fd, tar, member, seen)
    except tarfile.TarError as e:
        if src.drain() != want:
            raise DigestMismatchError(f"layer {digest[:19]} in the content store does not "
                                      "match its signed digest; install the bundle again") from e
        raise LayerError(f"layer {digest[:19]} is not a readable tar: {e}") from e
    if src.drain() != want:
        raise DigestMismatchError(f"layer {digest[:19]} in the content store does not match "
                                  "its signed digest; install the bundle again")


def _apply_member(root_fd: int, tar: tarfile.TarFile, m: tarfile.TarInfo,
                  seen: set[tuple[str, ...]]) -> None:
    if m.name.strip("/") in (".", "") and m.isdir() and not m.name.startswith("/"):
        return  # the layer's own root entry: the root directory stays as the engine made it
    rel = member_path(m.name)
    parts = rel.parts
    name = parts[-1]
    if name.startswith(WHITEOUT):
        _whiteout(root_fd, m.name, parts, seen)
        return
    if m.isdev() or m.isfifo():
        return  # an image has no business shipping device nodes; /dev is the launcher's
    parent = _dir_at(root_fd, parts[:-1], create=True, mode=0o755)
    try:
        seen.add(parts)
        mode = m.mode & 0o1777  # never setuid/setgid inside the service's root
        if m.isdir():
            existing = _lstat(parent, name)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                _remove(parent, name, existing)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=parent)
            _own(parent, name, m, mode)
            return
        _replace(parent, name)
        if m.issym():
            _check_link_inside(m.name, rel, m.linkname)
            os.symlink(m.linkname, name, dir_fd=parent)
            if _as_root():
                os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        elif m.islnk():
            target = member_path(m.linkname).parts
            try:
                tparent = _dir_at(root_fd, target[:-1], create=False)
            except FileNotFoundError:
                raise LayerError(f"layer member {m.name!r} is a hard link to "
                                 f"{m.linkname!r}, which is not in the image") from None
            try:
                st = _lstat(tparent, target[-1])
                if st is None or not stat.S_ISREG(st.st_mode):
                    raise LayerError(f"layer member {m.name!r} is a hard link to "
                                     f"{m.linkname!r}, which is not a file in the image")
                os.link(target[-1], name, src_dir_fd=tparent, dst_dir_fd=parent,
                        follow_symlinks=False)
            finally:
                os.close(tparent)
        elif m.isfile():
            _write_file(parent, name, tar, m, mode)
        else:
            raise LayerError(f"layer member {m.name!r} has an unknown type; the layer is refused")
    finally:
        os.close(parent)


def _whiteout(root_fd: int, raw: str, parts: tuple[str, ...],
              seen: set[tuple[str, ...]]) -> None:
    """Apply `.wh.NAME` (remove NAME) or `.wh..wh..opq` (empty the directory's lower part)."""
    name = parts[-1]
    target = name.removeprefix(WHITEOUT)
    if name != OPAQUE and (target in ("", ".", "..") or "/" in target):
        raise LayerError(f"layer member {raw!r} is a whiteout that escapes its directory; "
                         "the layer is refused")
    try:
        parent = _dir_at(root_fd, parts[:-1], create=False)
    except FileNotFoundError:
        return  # nothing below to hide
    try:
        if name == OPAQUE:
            _opaque(parent, parts[:-1], seen)
            return
        st = _lstat(parent, target)
        if st is not None:
            _remove(parent, target, st)
    finally:
        os.close(parent)


def _opaque(dir_fd: int, at: tuple[str, ...], seen: set[tuple[str, ...]]) -> None:
    """Remove what lower layers put in the directory; keep what this layer wrote."""
    for entry in os.listdir(dir_fd):
        path = (*at, entry)
        st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
        if path not in seen:
            _remove(dir_fd, entry, st)
        elif stat.S_ISDIR(st.st_mode) and any(p[:len(path)] == path and p != path for p in seen):
            sub = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _opaque(sub, path, seen)
            finally:
                os.close(sub)


def _check_link_inside(raw: str, rel: PurePosixPath, target: str) -> None:
    """Refuse a symlink whose target, read inside the root, climbs above it."""
    base = [] if target.startswith("/") else list(rel.parts[:-1])
    for part in PurePosixPath(target).parts:
        if part in ("/", "."):
            continue
        if part == "..":
            if not base:
                raise LayerError(f"layer member {raw!r} is a symlink to {target!r}, outside "
                                 "the image; the layer is refused")
            base.pop()
        else:
            base.append(part)


def _dir_at(root_fd: int, parts: Sequence[str], *, create: bool, mode: int = 0o755) -> int:
    """Open the directory `parts` below `root_fd` without following any symlink.

    Raises:
        LayerError: a component is a symlink or not a directory.
        FileNotFoundError: a component is missing and `create` is false.
    """
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, mode, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = "/".join(parts[:i + 1])
                raise LayerError(f"layer path {where!r} is a symlink or not a directory; "
                                 "writing below it could leave the root; the layer is "
                                 "refused") from e
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.listdir(sub):
            _remove(sub, entry, os.stat(entry, dir_fd=sub, follow_symlinks=False))
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def _replace(dir_fd: int, name: str) -> None:
    """Make room for a non-directory member: a later layer replaces what was there."""
    st = _lstat(dir_fd, name)
    if st is not None:
        _remove(dir_fd, name, st)


def _as_root() -> bool:
    """Whether members can be given their owners: only root can give a file away, so an
    unpack by another user (a rootless one, as in tests) leaves every file its own."""
    return os.geteuid() == 0


def _own(dir_fd: int, name: str, m: tarfile.TarInfo, mode: int) -> None:
    if _as_root():
        os.chown(name, m.uid, m.gid, dir_fd=dir_fd, follow_symlinks=False)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _write_file(dir_fd: int, name: str, tar: tarfile.TarFile, m: tarfile.TarInfo,
                mode: int) -> None:
    src = tar.extractfile(m)
    if src is None:
        raise LayerError(f"layer member {m.name!r} cannot be read")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        left = m.size
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise LayerError(f"layer member {m.name!r} is truncated")
            _write_all(fd, chunk)
            left -= len(chunk)
        if _as_root():
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, mode)  # after the chown, which clears setuid bits anyway
        os.utime(fd, (m.mtime, m.mtime))
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
