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
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from appliance.fsutil import atomic_write

SUPERVISE_ARG = "__supervise"  # the frozen installer's hidden argv forms of our modules
CONFINE_ARG = "__confine"
MAX_BACKOFF_S = 30.0
HEALTHY_RUN_S = 60.0
STOP_GRACE_S = 10.0


def self_command(module: str, hidden: str, python: str = sys.executable) -> list[str]:
    """How this program runs one of its own modules as a process: `python -m module`, or,
    from the frozen installer (which has no `-m`), itself with the module's hidden argument."""
    if getattr(sys, "frozen", False):
        return [sys.executable, hidden]
    return [python, "-m", module]


def open_log(path: Path) -> BinaryIO:
    """Open the service's log for appending, readable by owner and group only (0640):
    the runtime's output may name the site's hosts and models."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    os.fchmod(fd, 0o640)  # a log left by an older version may be 0644
    return os.fdopen(fd, "ab")


def supervise(command: list[str], pidfile: Path, log: Path,
              ready: Callable[[], None] = lambda: None) -> int:
    """Run `command` until SIGTERM, restarting it when it exits; return 0."""
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
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
            atomic_write(pidfile.with_suffix(".child"), f"{child.pid}\n".encode())
            while True:
                try:
                    child.wait(timeout=STOP_GRACE_S if stopping else None)
                    break
                except subprocess.TimeoutExpired:
                    child.kill()
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
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command to supervise")
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

        return supervise(command, args.pidfile, args.log, ready)
    return supervise(command, args.pidfile, args.log)


if __name__ == "__main__":
    sys.exit(main())
