"""A small process supervisor: keeps one command running until told to stop.

`python -m appliance.engines.supervise --pidfile P --log L -- CMD...` (from the frozen
installer: `appliance-installer __supervise ...`) detaches
(fork, new session), writes its pid to P once running, restarts CMD when it
exits (with backoff), and on SIGTERM stops CMD and removes P. The process
engine uses it where systemd is not running the units it wrote.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from functools import partial
from pathlib import Path
from typing import BinaryIO

from appliance.engines.confine import Confinement, enter_or_exit, parse, preload
from appliance.errors import EngineError
from appliance.fsutil import LOG_CAP_BYTES, atomic_write, cap_log

SUPERVISE_ARG = "__supervise"  # the frozen installer's hidden argv forms of our modules
CONFINE_ARG = "__confine"
MAX_BACKOFF_S = 30.0
HEALTHY_RUN_S = 60.0
STOP_GRACE_S = 10.0
LOG_CHECK_S = 30.0  # how often the supervisor looks at its log's size


def self_command(module: str, hidden: str, python: str = sys.executable) -> list[str]:
    """How this program runs one of its own modules as a process: `python -m module`, or,
    from the frozen installer (which has no `-m`), itself with the module's hidden argument."""
    if getattr(sys, "frozen", False):
        return [sys.executable, hidden]
    return [python, "-m", module]


def host_library_path(env: MutableMapping[str, str], bundled: str | None = None) -> None:
    """Take the one-file executable's own library directory off `env`'s LD_LIBRARY_PATH.

    Its bootloader puts the unpacked directory (`sys._MEIPASS`) first there so that the
    frozen Python finds its bundled libraries; the dynamic loader reads the variable once,
    at start. A host program started from the executable (podman, haproxy, systemctl)
    would otherwise load those libraries (our libz, libssl, libbz2 of the build root's
    glibc era) instead of its own, and may fail on a missing symbol version. The
    bootloader kept the caller's value as LD_LIBRARY_PATH_ORIG.
    """
    bundled = bundled if bundled is not None else getattr(sys, "_MEIPASS", None)
    if "LD_LIBRARY_PATH_ORIG" in env:
        env["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH_ORIG"]
        return
    kept = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d and d != bundled]
    if kept:
        env["LD_LIBRARY_PATH"] = ":".join(kept)
    else:
        env.pop("LD_LIBRARY_PATH", None)


def open_log(path: Path) -> BinaryIO:
    """Open the service's log for appending, readable by owner and group only (0640):
    the runtime's output may name the site's hosts and models."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    os.fchmod(fd, 0o640)  # a log left by an older version may be 0644
    return os.fdopen(fd, "ab")


def start_detached(argv: list[str], env: Mapping[str, str], pidfile: Path, log: Path,
                   timeout: float = 60.0) -> None:
    """Start the supervisor `argv` (given `--foreground`) in a session of its own and
    return once it has written its pidfile.

    It is spawned rather than forked off a daemonizing parent because the frozen
    installer is a one-file executable: its bootloader deletes the unpacked program
    when its own child exits, so the supervisor must be that child for its whole life,
    and must unpack its own copy rather than share (and outlive) the installer's.

    Raises:
        EngineError: it exited or wrote no pidfile in time (its log says why).
    """
    env = dict(env)
    if getattr(sys, "frozen", False):
        for key in [k for k in env if k.startswith("_PYI_") or k == "_MEIPASS2"]:
            del env[key]
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
        host_library_path(env)
        env.pop("LD_LIBRARY_PATH_ORIG", None)
    pidfile.unlink(missing_ok=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    with open_log(log) as out:
        try:
            pid = os.posix_spawn(argv[0], argv, env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 2)])
        except OSError as e:
            raise EngineError(f"cannot start the supervisor {argv[0]}: {e}") from e
        finally:
            os.close(devnull)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pidfile.exists():
            return
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise EngineError(f"the supervisor exited with {os.waitstatus_to_exitcode(status)} "
                              f"before it started; see {log}")
        time.sleep(0.05)
    raise EngineError(f"the supervisor wrote no pidfile in {timeout:.0f} s; see {log}")


def supervise(command: list[str], pidfile: Path, log: Path,
              ready: Callable[[], None] = lambda: None,
              confinement: Confinement | None = None, log_cap: int = LOG_CAP_BYTES,
              log_check_s: float = LOG_CHECK_S) -> int:
    """Run `command` until SIGTERM, restarting it when it exits; return 0.

    With `confinement`, each start enters it between fork and exec (and `command` is
    its argv, run with its environment only). Every `log_check_s` the log is kept
    under `log_cap` (`fsutil.cap_log`: the older part moves to LOG.1).
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(_signo: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    atomic_write(pidfile, f"{os.getpid()}\n".encode())
    ready()
    backoff = 1.0
    quick = 0
    try:
        while not stopping:
            started = time.monotonic()
            with open_log(log) as out:
                if confinement is None:
                    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT)
                else:  # single-threaded here, so preexec_fn is safe
                    child = subprocess.Popen(
                        confinement.argv, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, env=confinement.env, close_fds=True,
                        preexec_fn=partial(enter_or_exit, confinement))
            atomic_write(pidfile.with_suffix(".child"), f"{child.pid}\n".encode())
            while True:
                try:
                    child.wait(timeout=STOP_GRACE_S if stopping else log_check_s)
                    break
                except subprocess.TimeoutExpired:
                    if stopping:
                        child.kill()
                    else:
                        cap_log(log, log_cap)
            if stopping:
                break
            with open_log(log) as out:
                out.write(f"supervise: exited with {child.returncode}; restarting\n".encode())
            # quick exits in a row tell the installer this is a crash loop, not a slow start
            quick = 0 if time.monotonic() - started > HEALTHY_RUN_S else quick + 1
            atomic_write(pidfile.with_suffix(".crashes"), f"{quick}\n".encode())
            backoff = 1.0 if time.monotonic() - started > HEALTHY_RUN_S else min(
                backoff * 2, MAX_BACKOFF_S)
            deadline = time.monotonic() + backoff
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)  # woken early by SIGTERM via the stopping flag
    finally:
        for suffix in (".child", ".crashes"):
            pidfile.with_suffix(suffix).unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse flags, detach, supervise."""
    ap = argparse.ArgumentParser(prog="python -m appliance.engines.supervise")
    ap.add_argument("--pidfile", type=Path, required=True)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--foreground", action="store_true")
    ap.add_argument("--confine", action="store_true",
                    help="the command is the launcher's arguments (appliance.engines.confine)")
    ap.add_argument("--log-cap", type=int, default=LOG_CAP_BYTES, metavar="BYTES",
                    help="keep the log under this size (the older part moves to LOG.1)")
    ap.add_argument("--log-check", type=float, default=LOG_CHECK_S, metavar="SECONDS")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command to supervise")
    caps = {"log_cap": args.log_cap, "log_check_s": args.log_check}
    confinement = None
    if args.confine:
        confinement = parse(command)
        command = confinement.argv
        preload()  # load libc before any fork: later, the frozen program may be gone
    if not args.foreground:
        r, w = os.pipe()
        if os.fork() > 0:
            os.close(w)
            os.read(r, 1)  # wait until the daemon is running, then let the caller go
            return 0
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

        def ready() -> None:
            os.write(w, b"1")
            os.close(w)

        return supervise(command, args.pidfile, args.log, ready, confinement, **caps)
    return supervise(command, args.pidfile, args.log, confinement=confinement, **caps)


if __name__ == "__main__":
    sys.exit(main())


def process_exists(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def systemctl(*args: str) -> None:
    """Run `systemctl ARGS`.

    Raises:
        EngineError: it failed; its own words say why.
    """
    r = subprocess.run(["systemctl", *args], capture_output=True, check=False, timeout=60)
    if r.returncode != 0:
        raise EngineError(f"systemctl {' '.join(args)} failed: "
                          f"{r.stderr.decode(errors='replace').strip()}")
