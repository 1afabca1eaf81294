"""The host driver's user-space files a GPU service needs inside its image root.

A container engine gets these from the NVIDIA container toolkit, which binds the
driver's libraries for the `compute,utility` capabilities into each container.
The process engine runs a service chrooted in its image's root, which holds CUDA
and cuDNN (from the runtime image) but never the driver's own libraries: they
must match the kernel module, so they come from the host. This module finds them
(the host's `ldconfig -p`, and the toolkit's own list where it is installed) and
says where each goes inside the root: a read-only directory of their own,
`/usr/local/nvidia/lib64`, put first on the service's LD_LIBRARY_PATH (the
place NVIDIA's CUDA images look too), and `nvidia-smi` in `/usr/local/nvidia/bin`.
The root itself is never written: the launcher and the systemd unit mount a
small read-only tmpfs there and bind each file into it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.engines.rootfs import ensure_mount_point

# Where the driver's files appear inside the root (a mount point every root has).
DRIVER_DIR = "/usr/local/nvidia"
DRIVER_LIB_DIR = f"{DRIVER_DIR}/lib64"
DRIVER_BIN_DIR = f"{DRIVER_DIR}/bin"
# libnvidia-container's utility and compute libraries (src/nvc_info.c), by prefix:
# what `--gpus` with NVIDIA_DRIVER_CAPABILITIES=compute,utility gives a container.
DRIVER_LIBRARIES = (
    "libnvidia-ml.so", "libnvidia-cfg.so", "libnvidia-nscq.so",
    "libcuda.so", "libcudadebugger.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
    "libnvidia-ptxjitcompiler.so", "libnvidia-fatbinaryloader.so", "libnvidia-allocator.so",
    "libnvidia-compiler.so", "libnvidia-pkcs11.so", "libnvidia-pkcs11-openssl3.so",
    "libnvidia-nvvm.so", "libnvidia-tileiras.so",
)
# Without these CUDA does not start (libcuda JIT-compiles PTX with the other two) and
# NVML cannot report: the names ONNX Runtime, torch and nvidia-ml-py open.
REQUIRED_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1",
                      "libnvidia-nvvm.so.4")
DRIVER_BINARIES = ("nvidia-smi",)
# `ldconfig -p` lines: "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")
# 64-bit ABI tags ldconfig prints for this machine's libraries
_ABI64 = ("x86-64", "AArch64", "64bit")


@dataclass(frozen=True)
class DriverFiles:
    """The host driver's libraries (by the name the loader asks for) and binaries."""

    libraries: Mapping[str, Path] = field(default_factory=dict)
    binaries: Mapping[str, Path] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The required libraries the host lacks, in REQUIRED_LIBRARIES order."""
        return [name for name in REQUIRED_LIBRARIES if name not in self.libraries]

    def binds(self) -> list[tuple[str, str]]:
        """(host path, path inside the root) for each file. The host path is the soname
        link ldconfig keeps, not the versioned file behind it: a bind follows the link
        when the service starts, so a unit written today binds the upgraded driver's
        files after the upgrade's reboot."""
        out = [(str(p), f"{DRIVER_LIB_DIR}/{name}") for name, p in sorted(self.libraries.items())]
        out += [(str(p), f"{DRIVER_BIN_DIR}/{name}") for name, p in sorted(self.binaries.items())]
        return out


# The one seam: how the host's driver files are found (tests pass a fake driver).
DriverLookup = Callable[[], DriverFiles]


def _wanted(name: str) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in DRIVER_LIBRARIES)


def parse_ldconfig(text: str) -> dict[str, Path]:
    """The 64-bit driver libraries in `ldconfig -p` output, by name (first one wins,
    as the loader's cache order)."""
    out: dict[str, Path] = {}
    for line in text.splitlines():
        m = _LDCONFIG_LINE.match(line)
        if m is None:
            continue
        name, abi, path = m.groups()
        if _wanted(name) and any(tag in abi for tag in _ABI64) and name not in out:
            out[name] = Path(path)
    return out


def soname_aliases(paths: Iterable[str]) -> dict[str, Path]:
    """Driver libraries from a list of host files (the toolkit's `list --libraries`,
    which names versioned files such as libcuda.so.550.54.15), under the soname the
    loader asks for (libcuda.so.1) as well as their own name."""
    out: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw.strip())
        if not p.is_absolute() or not _wanted(p.name):
            continue
        out.setdefault(p.name, p)
        for req in REQUIRED_LIBRARIES:
            if p.name.startswith(req.rsplit(".", 1)[0] + "."):
                link = p.parent / req  # the soname link beside it, where there is one
                out.setdefault(req, link if link.is_file() else p)
    return out


def driver_from(ldconfig: str, toolkit: Iterable[str] = (), path_env: str = "") -> DriverFiles:
    """The driver's files from `ldconfig -p` output, the toolkit's list, and PATH."""
    libs = {**soname_aliases(toolkit), **parse_ldconfig(ldconfig)}
    libs = {n: p for n, p in libs.items() if p.is_file()}
    bins = {}
    for name in DRIVER_BINARIES:
        found = shutil.which(name, path=path_env or None)
        if found:
            bins[name] = Path(found)
    return DriverFiles(libs, bins)


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout if r.returncode == 0 else ""


def host_driver() -> DriverFiles:
    """This host's driver files: ldconfig's cache, the toolkit's list where installed."""
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    cli = shutil.which("nvidia-container-cli")
    toolkit = _run([cli, "list", "--libraries"]).splitlines() if cli else []
    return driver_from(_run([ldconfig, "-p"]) if ldconfig else "", toolkit,
                       os.environ.get("PATH", ""))


def driver_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the driver's directory first on LD_LIBRARY_PATH and its bin on PATH."""
    out = dict(env)
    libs = [DRIVER_LIB_DIR, *[d for d in out.get("LD_LIBRARY_PATH", "").split(":") if d]]
    out["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(libs))
    path = [d for d in out.get("PATH", "").split(":") if d] or ["/usr/local/bin", "/usr/bin",
                                                                "/bin"]
    out["PATH"] = ":".join(dict.fromkeys([*path, DRIVER_BIN_DIR]))
    return out



def driver_in_root(root: Path, env: Mapping[str, str],
                   lookup: DriverLookup) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """A GPU service's environment and driver binds for its image root (the mount
    point made there when missing); unchanged, with no binds, on a host without them.

    Raises:
        LayerError: the root's path to the mount point is a symlink.
        StoreError: the mount point cannot be made.
    """
    files = lookup()
    binds = tuple(files.binds())
    if not binds:
        return dict(env), ()
    ensure_mount_point(root, DRIVER_DIR)
    return driver_env(env), binds
