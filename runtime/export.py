"""Log export: one archive of logs, metrics history, system and release info, and a sha256
list, written under a temporary name and renamed, so a stick pulled mid-write never holds a
file that looks complete. Export only reads the appliance's files; it deletes none of them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import socket
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.errors import ExportError, GpuUnavailableError
from runtime.gpu import GpuSource, NvmlSource

PACKAGES = ("offline-appliance", "onnxruntime", "onnxruntime-gpu", "torch", "numpy", "uvicorn",
            "nvidia-ml-py", "psutil")


def system_info(data_dir: Path, gpu: GpuSource | None = None) -> dict[str, Any]:
    """What an engineer needs to know about the box, without secrets."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(), "platform": platform.platform(),
        "machine": platform.machine(), "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(), "pid": os.getpid(),
    }
    try:
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
        info["boot_time"] = psutil.boot_time()
        du = psutil.disk_usage(str(data_dir))
        info["data_disk"] = {"total": du.total, "free": du.free}
    except (ImportError, OSError):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info["packages"] = versions
    try:
        info["gpus"] = [vars(d) for d in (gpu or NvmlSource()).devices()]
    except GpuUnavailableError as e:
        info["gpus"] = []
        info["gpu_note"] = str(e)
    return info


def release_info(data_dir: Path, models_dir: Path | None) -> dict[str, Any]:
    """The release the box runs: the site's release.json if present and every model.json."""
    info: dict[str, Any] = {"release_env": os.environ.get("APPLIANCE_RELEASE")}
    release = data_dir / "release.json"
    if release.is_file():
        try:
            info["release"] = json.loads(release.read_text())
        except (OSError, ValueError) as e:
            info["release_error"] = f"{release}: {e}"
    models = []
    if models_dir is not None and models_dir.is_dir():
        for p in sorted(models_dir.glob("*/*/model.json")):
            try:
                models.append(json.loads(p.read_text()))
            except (OSError, ValueError) as e:
                models.append({"path": str(p), "error": str(e)})
    info["models"] = models
    return info


def _collect(data_dir: Path) -> Iterator[tuple[str, Path]]:
    for sub in ("logs", "history"):
        d = data_dir / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file() and not p.is_symlink() and not p.name.startswith("."):
                    yield f"{sub}/{p.name}", p


def write_export(
    data_dir: Path, dest: Path, *, models_dir: Path | None = None,
    gpu: GpuSource | None = None, now: float | None = None,
) -> Path:
    """Write the export archive into directory `dest` and return its path.

    Raises:
        ExportError: `dest` is not a writable directory or the write failed (nothing that
            looks complete is left behind).
    """
    if not dest.is_dir():
        raise ExportError(f"export target {dest} is not a directory; mount the stick or create it")
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"appliance-logs-{socket.gethostname()}-{stamp}"
    final = dest / f"{name}.tar.gz"
    tmp = dest / f".{name}.tar.gz.partial"
    sums: list[str] = []

    def add(tar: tarfile.TarFile, arcname: str, data: bytes, mtime: float) -> None:
        ti = tarfile.TarInfo(f"{name}/{arcname}")
        ti.size, ti.mtime, ti.mode = len(data), int(mtime), 0o644
        tar.addfile(ti, io.BytesIO(data))
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {arcname}")

    try:
        with tmp.open("wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                for arcname, path in _collect(data_dir):
                    try:
                        data, mtime = path.read_bytes(), path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # rotated away while we listed
                    add(tar, arcname, data, mtime)
                add(tar, "system.json", _dump(system_info(data_dir, gpu)), now)
                add(tar, "release.json", _dump(release_info(data_dir, models_dir)), now)
                add(tar, "SHA256SUMS", ("\n".join(sums) + "\n").encode(), now)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write export to {dest}: {e.strerror or e}; check space "
                          "and that the stick is writable") from e
    return final


def _dump(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()
