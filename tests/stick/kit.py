"""Helpers for the stick tests: a bare Debian root entered with util-linux, and a vendor."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from signing import PrivateKey, TrustRoot

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("APPLIANCE_STICK_CACHE", str(REPO / ".cache" / "stick")))
BARE_SUITE = "bullseye"
BARE_GLIBC = "2.31"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class Vendor:
    key: PrivateKey
    root: TrustRoot
    root_path: Path


def make_vendor(tmp: Path) -> Vendor:
    key = PrivateKey.generate()
    root = TrustRoot.create([key.public_key], names={key.key_id: "test vendor"})
    path = tmp / "root.json"
    path.write_bytes(root.to_json())
    return Vendor(key, root, path)


def need_root_tools() -> None:
    """Skip unless this runs as root with debootstrap, unshare and chroot (CI has them)."""
    if os.geteuid() != 0:
        pytest.skip("the bare root needs root (debootstrap, chroot)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/setup-system installs debootstrap)")


def ensure_bare_root() -> Path:
    """A Debian bullseye minbase root (no python3, glibc 2.31), cached under .cache/stick."""
    digest = hashlib.sha256(f"v1 {BARE_SUITE} minbase {MIRROR}".encode()).hexdigest()[:12]
    root = CACHE / f"bare-{BARE_SUITE}-{digest}"
    if (root / ".ready").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bare-", dir=CACHE))
    try:
        proc = subprocess.run(["debootstrap", "--variant=minbase", BARE_SUITE, str(work), MIRROR],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.fail(f"debootstrap {BARE_SUITE} failed: {proc.stdout[-800:]}{proc.stderr}")
        (work / ".ready").write_text(f"{BARE_SUITE} {MIRROR}\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(work, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def in_bare_root(root: Path, argv: Sequence[str], *, cwd: str = "/",
                 env: Sequence[str] = (), timeout: float = 300,
                 binds: Sequence[tuple[Path, str]] = (),
                 pid_namespace: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `argv` chrooted into `root` in a fresh mount and PID namespace (util-linux only).

    /proc, /dev and each (host directory, directory in the root) of `binds` are mounted
    inside the namespaces, so they vanish with the command. Without `pid_namespace`,
    what the command leaves running (a supervised service) outlives it, with host pids.
    """
    inner = f'cd {cwd} && exec "$@"'
    mounts = "".join(f" && mount --bind {shlex.quote(str(src))} \"$0\"{shlex.quote(dst)}"
                     for src, dst in binds)
    return subprocess.run(
        ["unshare", "--mount", *(["--pid"] if pid_namespace else []), "--fork",
         f"--mount-proc={root}/proc",
         "/bin/sh", "-c", f'mount --rbind /dev "$0/dev"{mounts} && exec chroot "$0" "$@"',
         str(root),
         "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
         "TERM=dumb", *env, "/bin/sh", "-c", inner, "sh", *argv],
        capture_output=True, text=True, timeout=timeout, check=False)
