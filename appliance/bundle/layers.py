"""Take a model's files out of a verified weights layer, refusing anything unsafe.

The process engine runs the runtime over plain files, so the model directory
(`models/<name>/<version>/...`) comes out of its layer blob in the content
store. Members are read one by one (never `extractall`): only regular files
and directories are written; a link, device, FIFO, absolute path, `..`
component or whiteout anywhere in the layer refuses the whole layer. Files are
created with O_EXCL|O_NOFOLLOW in a temp directory that is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from appliance.bundle.store import ContentStore
from appliance.errors import LayerError, StoreError
from appliance.fsutil import fsync_dir

CHUNK = 1024 * 1024
MAX_MEMBERS = 100_000


def member_path(name: str) -> PurePosixPath:
    """The safe relative path of a tar member name.

    Raises:
        LayerError: absolute, empty, or containing `..`.
    """
    if name.startswith("/"):
        raise LayerError(f"layer member {name!r} has an absolute path; the layer is refused")
    p = PurePosixPath(name.removeprefix("./"))
    if ".." in p.parts:
        raise LayerError(f"layer member {name!r} climbs out with '..'; the layer is refused")
    if not p.parts or p.parts == (".",):
        raise LayerError(f"layer member {name!r} has an empty path; the layer is refused")
    return p


def extract_model(store: ContentStore, layer_digest: str, model_path: str, dest: Path) -> int:
    """Write the files under `model_path` of the layer to `dest`; return the bytes written.

    `dest` is replaced as a whole (a temp directory renamed into place), so a
    crash leaves either no directory or a complete one.

    Raises:
        LayerError: an unsafe member, or the layer has no `model_path/model.json`.
        StoreError: the blob is missing or the disk is full.
    """
    prefix = member_path(model_path)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    written = 0
    try:
        with store.open(layer_digest) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for count, member in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise LayerError(f"layer {layer_digest[:19]} has over {MAX_MEMBERS} members")
                rel = _check(member)
                if rel is None or not _under(rel, prefix):
                    continue
                target = tmp.joinpath(*rel.parts[len(prefix.parts):])
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise LayerError(f"layer member {member.name!r} cannot be read")
                written += _write_new(target, src, member.size)
        if not (tmp / "model.json").is_file():
            raise LayerError(f"layer {layer_digest[:19]} has no {model_path}/model.json; "
                             "the bundle was not made by the appliance bundler")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except tarfile.TarError as e:
        raise LayerError(f"layer {layer_digest[:19]} is not a readable tar: {e}") from e
    except OSError as e:
        raise StoreError(f"cannot write model files to {dest}: {e.strerror}; "
                         "free disk space and run again") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return written


def _check(member: tarfile.TarInfo) -> PurePosixPath | None:
    """Refuse unsafe members; return the path of a file or directory."""
    rel = member_path(member.name)
    if member.issym() or member.islnk():
        raise LayerError(f"layer member {member.name!r} is a link; the layer is refused")
    if member.isdev() or member.isfifo():
        raise LayerError(f"layer member {member.name!r} is a device or FIFO; refused")
    if rel.name.startswith(".wh."):
        raise LayerError(f"layer member {member.name!r} is a whiteout; a weights layer "
                         "must only add files")
    if not (member.isfile() or member.isdir()):
        raise LayerError(f"layer member {member.name!r} is not a file or directory; refused")
    return rel


def _under(rel: PurePosixPath, prefix: PurePosixPath) -> bool:
    return rel.parts[: len(prefix.parts)] == prefix.parts


def _write_new(target: Path, src: object, size: int) -> int:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    done = 0
    with os.fdopen(fd, "wb") as out:
        while done < size:
            chunk = src.read(min(CHUNK, size - done))  # type: ignore[attr-defined]
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return done
