"""The build root: Debian bullseye with CPython 3.11 built from Debian's source package.

PyInstaller bundles the build host's libpython and shared libraries, so the
executable needs at least the glibc it was built against. Building inside a
bullseye root (glibc 2.31) makes that the floor; CPython 3.11 is built there
from bookworm's `python3.11` source package, fetched with the host's apt (there is
no bullseye binary of it). The root is cached by a digest of its recipe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from installer_exe.errors import InstallerBuildError, ToolMissingError

SUITE = "bullseye"
GLIBC_FLOOR = "2.31"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "build-essential", "binutils", "dpkg-dev", "xz-utils", "libssl-dev", "zlib1g-dev",
    "libffi-dev", "libbz2-dev", "liblzma-dev", "uuid-dev",
)
PYTHON = "/opt/python3.11/bin/python3.11"
BUILD_PYTHON_SCRIPT = Path(__file__).with_name("build-python.sh")
_READY = ".ready"
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def recipe_digest(mirror: str = DEFAULT_MIRROR) -> str:
    """A digest of everything that decides the build root's content."""
    h = hashlib.sha256("\n".join(["v1", SUITE, "minbase", mirror, *PACKAGES]).encode())
    h.update(BUILD_PYTHON_SCRIPT.read_bytes())
    return h.hexdigest()


def ensure_build_root(cache: Path, *, mirror: str | None = None, log: bool = False) -> Path:
    """Return the cached build root, debootstrapping it and building CPython when missing.

    Raises:
        ToolMissingError: debootstrap, unshare or chroot is not installed.
        InstallerBuildError: not root, debootstrap failed, or CPython did not build.
    """
    mirror = mirror or os.environ.get("DEBIAN_MIRROR", DEFAULT_MIRROR)
    root = cache / f"buildroot-{SUITE}-{recipe_digest(mirror)[:12]}"
    if (root / _READY).exists():
        return root
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            raise ToolMissingError(f"{tool} is not installed: apt-get install debootstrap "
                                   "util-linux coreutils")
    if os.geteuid() != 0:
        raise InstallerBuildError("the build root needs root (debootstrap, chroot): run "
                                  "`make installer` as root")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="buildroot-", dir=cache))
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(work), mirror],
            what=f"debootstrap {SUITE} from {mirror} (set DEBIAN_MIRROR to a reachable mirror)",
            log=log)
        fetch_python_source(work / "opt" / "src", mirror, log=log)
        shutil.copy2(BUILD_PYTHON_SCRIPT, work / "build-python.sh")
        in_root(work, ["/bin/sh", "/build-python.sh"],
                what="building CPython 3.11 from Debian's source package in the build root",
                log=log)
        (work / "build-python.sh").unlink()
        (work / _READY).write_text(f"{SUITE} {mirror}\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(work, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def fetch_python_source(dest: Path, mirror: str, *, log: bool = False) -> None:
    """Download bookworm's `python3.11` source package into `dest` with the host's apt,
    from a sources list of our own (the host's configuration is not touched), so the
    build root needs no network: under a busy test run its resolver was seen to fail.

    Raises:
        InstallerBuildError: apt could not fetch the source package.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="python-src-") as tmp:
        t = Path(tmp)
        (t / "sources.list").write_text(f"deb-src {mirror} bookworm main\n")
        (t / "lists" / "partial").mkdir(parents=True)
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={t / 'sources.list'}",
               "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={t / 'lists'}",
               "-o", "APT::Sandbox::User=root", "-o", "Acquire::Retries=5"]
        run([*apt, "update"], what=f"fetching the source index of {mirror}", log=log)
        run(["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(dest), *apt, "source",
             "--download-only", "python3.11"],
            what="fetching the python3.11 source package", log=log)


def in_root(root: Path, argv: Sequence[str], *, what: str, log: bool = False,
            env: Sequence[str] = ()) -> str:
    """Run `argv` chrooted into `root`, in its own mount and PID namespace (util-linux).

    The namespaces end with the command, so /proc and /dev mounted for it never
    outlive it, even when the build is killed.

    Raises:
        InstallerBuildError: the command failed (the tail of its output is in the message).
    """
    script = 'mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"'
    return run(["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root}/proc",
                "/bin/sh", "-c", script, str(root), "/usr/bin/env", "-i", _PATH,
                "HOME=/root", "LC_ALL=C.UTF-8", *env, *argv], what=what, log=log)


def run(argv: Sequence[str], *, what: str, log: bool = False) -> str:
    """Run a host tool; its output goes to the terminal when `log`, else into the error.

    Raises:
        InstallerBuildError: non-zero exit.
    """
    proc = subprocess.run(list(argv), stdout=None if log else subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout or "").strip()[-1500:]
        raise InstallerBuildError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout or ""
