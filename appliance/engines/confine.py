"""Start one service confined to its image root, where systemd is not there to do it.

`confine --root R --ro SRC:DST --rw SRC:DST --user UID:GID --nofile N [--gpu]
[--driver SRC:DST ...] [--tokens DIR] --workdir W --env K=V ... -- ARGV...` runs as
root and then becomes ARGV:

- a new mount namespace (unshare(CLONE_NEWNS) through libc: only the stdlib, so
  it runs the same from the frozen installer), nothing propagating back;
- R bind-mounted read-only as `/` (chroot), the model directory read-only at the
  image's model path, the data directory read-write, `/proc`, a tmpfs `/tmp`,
  and a tmpfs `/dev` holding only null, zero, random, urandom (and the NVIDIA
  nodes with `--gpu`);
- with `--driver`, a read-only tmpfs at /usr/local/nvidia holding the host
  driver's files, each bound read-only (`appliance.engines.gpulibs`);
- with `--tokens`, a tmpfs `/run` with the site's runtime token directory bound
  read-only at /run/appliance-token (`appliance.frontdoor.token`);
- then the unprivileged user (groups dropped), no-new-privileges, RLIMIT_NOFILE,
  and exec with exactly the given environment.

The supervisor (`supervise --confine`) does this in the service's child between
fork and exec, so the pid it records is the runtime's own and no second program
(nor, from the frozen installer, its unpacking bootloader) sits in between.
`python -m appliance.engines.confine ARGS` does the same by hand.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import glob
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from appliance.engines.gpulibs import DRIVER_DIR
from appliance.errors import ConfineError
from appliance.frontdoor.token import TOKEN_DIR_IN_RUNTIME

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
BASE_DEVICES = ("null", "zero", "random", "urandom")
GPU_DEVICES = ("/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
               "/dev/nvidia-modeset")


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def preload() -> None:
    """Load libc now (the supervisor does, before the children it confines need it)."""
    _libc()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise ConfineError(f"{what}: {os.strerror(err)}")


def mount(libc: ctypes.CDLL, src: str | None, dst: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    """mount(2), raising ConfineError with what failed."""
    rc = libc.mount(src.encode() if src else None, dst.encode(),
                    fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                    data.encode() if data else None)
    _check(rc, f"mount {src or fstype} on {dst}")


def bind(libc: ctypes.CDLL, src: str, dst: str, *, readonly: bool) -> None:
    """Bind `src` at `dst`; read-only binds are remounted so (a bind ignores MS_RDONLY)."""
    mount(libc, src, dst, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    mount(libc, None, dst, None, flags)


def inside(root: str, path: str) -> str:
    """The host path of `path` inside the root (a mount point the unpacker made)."""
    return os.path.join(root, path.lstrip("/"))


def build_namespace(root: str, binds: Sequence[tuple[str, str, bool]], gpu: bool,
                    driver: Sequence[tuple[str, str]] = (), tokens: str = "") -> None:
    """Make the service's view of the file system in a new mount namespace.

    Raises:
        ConfineError: a mount failed (the namespace dies with this process).
    """
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing we mount may propagate back to the host. Already chrooted (as on a stick's
    # bare root), "/" is no mount point (EINVAL): whoever chrooted us made the namespace
    # private (util-linux unshare does by default).
    if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0 \
            and ctypes.get_errno() != errno.EINVAL:
        _check(-1, "making the mount namespace private")
    bind(libc, root, root, readonly=True)
    for src, dst, readonly in binds:
        target = inside(root, dst)
        if not os.path.isdir(target) or os.path.islink(target):
            raise ConfineError(f"mount point {dst} is missing in the image root")
        bind(libc, src, target, readonly=readonly)
    bind_driver(libc, root, driver)
    if tokens:
        bind_tokens(libc, root, tokens)
    mount(libc, "proc", inside(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    tmp = inside(root, "/tmp")  # noqa: S108 - the service's own /tmp, inside its root
    mount(libc, "tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=1g")
    dev = inside(root, "/dev")
    mount(libc, "tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    nodes = [f"/dev/{n}" for n in BASE_DEVICES]
    if gpu:
        nodes += sorted({p for pat in GPU_DEVICES for p in glob.glob(pat)})
    for node in nodes:
        target = os.path.join(dev, os.path.basename(node))
        with open(target, "w"):
            pass
        mount(libc, node, target, None, MS_BIND)
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    mount(libc, "tmpfs", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "mode=1777,size=64m")
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(to, os.path.join(dev, name))
    mount(libc, None, dev, None, MS_REMOUNT | MS_NOSUID | MS_NOEXEC | MS_RDONLY)


def bind_tokens(libc: ctypes.CDLL, root: str, tokens: str) -> None:
    """A tmpfs at the root's /run (the shared root stays untouched) with the token
    directory bound read-only at TOKEN_DIR_IN_RUNTIME.

    Raises:
        ConfineError: the root has no /run directory, or a mount failed.
    """
    run = inside(root, "/run")
    if not os.path.isdir(run) or os.path.islink(run):
        raise ConfineError("mount point /run is missing in the image root")
    mount(libc, "tmpfs", run, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=1m")
    target = inside(root, TOKEN_DIR_IN_RUNTIME)
    os.mkdir(target, 0o755)
    bind(libc, tokens, target, readonly=True)


def bind_driver(libc: ctypes.CDLL, root: str, files: Sequence[tuple[str, str]]) -> None:
    """Bind each host driver file read-only at its path under DRIVER_DIR, in a tmpfs
    made read-only afterwards (the shared image root is never written).

    Raises:
        ConfineError: the mount point is missing, a path leaves DRIVER_DIR, or a mount failed
            (a host file that is gone is left out).
    """
    if not files:
        return
    top = inside(root, DRIVER_DIR)
    # the image's own links must not move the tmpfs anywhere but where it belongs
    if not os.path.isdir(top) or os.path.realpath(top) != top:
        raise ConfineError(f"mount point {DRIVER_DIR} is missing in the image root")
    mount(libc, "tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for src, dst in files:
        rel = os.path.normpath(dst)
        if not rel.startswith(f"{DRIVER_DIR}/") or ".." in rel.split("/"):
            raise ConfineError(f"driver file {dst} is not under {DRIVER_DIR}")
        if not os.path.isfile(src):
            # gone since the unit was written (a driver upgrade dropped it): start without
            # it, and the runtime says what CUDA lacks, as the unit's "-" binds do
            continue
        target = inside(root, rel)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        with open(target, "w"):
            pass
        bind(libc, src, target, readonly=True)
    mount(libc, None, top, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY)


def drop_privileges(uid: int, gid: int, nofile: int) -> None:
    """Become uid:gid with no supplementary groups, no-new-privileges and RLIMIT_NOFILE."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE (a container): as far as allowed
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _pair(text: str) -> tuple[str, str]:
    src, sep, dst = text.partition(":")
    if not sep or not src or not dst.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not SRC:/DST")
    return src, dst


@dataclass(frozen=True)
class Confinement:
    """The parsed launcher arguments: where and as whom the service runs, and what."""

    root: str
    binds: list[tuple[str, str, bool]]  # (host directory, path inside, read-only)
    uid: int
    gid: int
    nofile: int
    gpu: bool
    workdir: str
    env: dict[str, str]
    argv: list[str]
    driver: tuple[tuple[str, str], ...] = ()  # (host driver file, path inside)
    tokens: str = ""  # the site's runtime token directory, bound read-only


def parse(argv: Sequence[str]) -> Confinement:
    """Parse the launcher's arguments (see the module docstring); exits 2 on bad ones."""
    ap = argparse.ArgumentParser(prog="confine")
    ap.add_argument("--root", required=True)
    ap.add_argument("--ro", type=_pair, action="append", default=[])
    ap.add_argument("--rw", type=_pair, action="append", default=[])
    ap.add_argument("--user", required=True)
    ap.add_argument("--nofile", type=int, default=65536)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--driver", type=_pair, action="append", default=[])
    ap.add_argument("--tokens", default="")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command to run")
    uid, _, gid = args.user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        ap.error(f"--user {args.user!r} is not UID:GID")
    return Confinement(str(Path(args.root).resolve()),
                       [(s, d, True) for s, d in args.ro] + [(s, d, False) for s, d in args.rw],
                       int(uid), int(gid or uid), args.nofile, args.gpu, args.workdir,
                       dict(e.partition("=")[::2] for e in args.env), command,
                       tuple(args.driver), args.tokens)


def enter(c: Confinement) -> None:
    """Confine this process (namespace, chroot, user, limits); the caller then execs.

    Raises:
        ConfineError: a step failed (or this is not root).
        OSError: chroot, chdir or the user change failed.
    """
    if os.geteuid() != 0:
        raise ConfineError("the process engine's launcher must run as root")
    build_namespace(c.root, c.binds, c.gpu, c.driver, c.tokens)
    os.chroot(c.root)
    os.chdir("/")
    drop_privileges(c.uid, c.gid, c.nofile)
    os.chdir(c.workdir)


def enter_or_exit(c: Confinement) -> None:
    """`enter`, for a child between fork and exec: on failure say why in one line on
    stderr (the service's log) and exit 1, which its supervisor counts as a crash."""
    try:
        enter(c)
    except (ConfineError, OSError, ValueError) as e:
        os.write(2, f"confine: cannot start {c.argv[0]!r} in {c.root}: {e}\n".encode())
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Confine, then exec the service; return 1 (with one line on stderr) if that fails."""
    c = parse(sys.argv[1:] if argv is None else argv)
    enter_or_exit(c)
    try:
        os.execvpe(c.argv[0], c.argv, c.env)  # noqa: S606 - the service itself, no shell
    except OSError as e:
        print(f"confine: cannot start {c.argv[0]!r} in {c.root}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
