"""The watchdog that comes with an install: a systemd timer where systemd runs the host,
else one line saying how to run it (cron), recorded in the site for `appliance status`.

Neither engine restarts a runtime that lives but answers nothing (Docker never
restarts an unhealthy container, and this project starts podman's without
`--health-on-failure`; the process engine's supervisor sees a live process), so
every install on them sets up `appliance watchdog --once` every `EVERY_S`
seconds. The timer's service is a oneshot; the watchdog keeps how long each
service has been unready in the site (`appliance.site.watchdog.STATE_FILE`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from appliance.errors import ApplianceError, SiteError
from appliance.fsutil import atomic_write
from appliance.site.engine import site_id
from appliance.site.watchdog import STATE_FILE

SYSTEMD_UNIT_DIR = Path("/etc/systemd/system")
UNIT_DIR_ENV = "APPLIANCE_UNIT_DIR"  # where units go when no --unit-dir is given (tests)
RECORD_FILE = "watchdog.json"
EVERY_S = 15
# The engines whose hung runtimes nothing else restarts.
WATCHDOG_ENGINES = ("docker", "process")
Mode = Literal["timer", "manual", "none", "failed"]


@dataclass(frozen=True)
class WatchdogSetup:
    """How this site's watchdog runs, as the install left it."""

    mode: Mode
    line: str  # one line for a person: what runs, or the command to run
    command: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)  # paths of the service and the timer
    systemctl: bool = False  # enabled through systemctl (systemd is PID 1)

    @classmethod
    def read(cls, root: Path) -> WatchdogSetup | None:
        """The record the last install wrote, or None (a site from before this record)."""
        try:
            raw = json.loads((Path(root) / RECORD_FILE).read_text())
            return cls(**raw)
        except (OSError, ValueError, TypeError):
            return None


def systemd_is_pid1() -> bool:
    """Whether systemd runs this host (sd_booted: /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def unit_names(root: Path) -> tuple[str, str]:
    """The watchdog's service and timer names for the site at `root`."""
    base = f"appliance-{site_id(root)}-watchdog"
    return f"{base}.service", f"{base}.timer"


def program(root: Path) -> list[str]:
    """How the watchdog's units start the appliance command line on this host.

    From the stick's executable: a copy of it in the site (`bin/`), since the stick is
    unplugged once the install is done.
    """
    if not getattr(sys, "frozen", False):
        return [sys.executable, "-m", "appliance"]
    exe = Path(sys.executable)
    dest = Path(root) / "bin" / exe.name
    src = exe.stat()
    # copy2 keeps the mtime: the same size and mtime is the same executable
    if not dest.exists() or (dest.stat().st_size, dest.stat().st_mtime_ns) != (
            src.st_size, src.st_mtime_ns):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        shutil.copy2(exe, tmp)
        os.replace(tmp, dest)
    return [str(dest)]


def watchdog_command(root: Path, engine: str, *, docker_host: str | None = None,
                     engine_unit_dir: Path | None = None, unhealthy_s: float | None = None,
                     prefix: list[str] | None = None) -> list[str]:
    """`appliance watchdog --once` for this site and engine (what the timer or cron runs)."""
    cmd = [*(prefix or program(root)), "watchdog", "--once", "--root", str(root),
           "--engine", engine]
    if unhealthy_s is not None:
        cmd += ["--unhealthy", str(unhealthy_s)]
    if docker_host:
        cmd += ["--docker-host", docker_host]
    if engine_unit_dir is not None and Path(engine_unit_dir) != SYSTEMD_UNIT_DIR:
        cmd += ["--unit-dir", str(engine_unit_dir)]
    return cmd


def write_units(root: Path, command: list[str], unit_dir: Path) -> list[Path]:
    """Write the watchdog's oneshot service and its timer, and enable the timer by its
    `timers.target.wants` link (what `systemctl enable` makes); return the unit paths."""
    service, timer = unit_names(root)
    svc_path, timer_path = unit_dir / service, unit_dir / timer
    atomic_write(svc_path, "\n".join([
        "[Unit]", f"Description=Offline appliance watchdog for {root}",
        "After=network.target docker.service podman.socket",
        f"ConditionPathExists={root}", "",
        "[Service]", "Type=oneshot", f"ExecStart={shlex.join(command)}",
        "NoNewPrivileges=yes", ""]).encode())
    atomic_write(timer_path, "\n".join([
        "[Unit]", f"Description=Run the appliance watchdog for {root} every {EVERY_S} s", "",
        "[Timer]", "OnBootSec=1min", f"OnUnitActiveSec={EVERY_S}s", "AccuracySec=1s",
        f"Unit={service}", "",
        "[Install]", "WantedBy=timers.target", ""]).encode())
    wants = unit_dir / "timers.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / timer
    if not link.is_symlink() or os.readlink(link) != str(timer_path):
        tmp = wants / f".{timer}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(timer_path)
        os.replace(tmp, link)
    return [svc_path, timer_path]


def _systemctl(*args: str) -> None:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SiteError(f"systemctl {' '.join(args)} failed: "
                        f"{(proc.stderr or proc.stdout).strip()[:300]}")


def set_up(root: Path, engine: str, *, unit_dir: Path | None = None,
           docker_host: str | None = None, engine_unit_dir: Path | None = None,
           unhealthy_s: float | None = None, systemd: bool | None = None,
           systemctl: Callable[..., None] = _systemctl) -> WatchdogSetup:
    """Set up this site's watchdog where its engine needs one and record how it runs.

    Units go to `unit_dir` (else $APPLIANCE_UNIT_DIR, else /etc/systemd/system);
    systemctl enables the timer only where systemd is PID 1 and the units are where
    systemd reads them. Where systemd is not PID 1, no unit is written: the record and
    the returned line say how to run the watchdog (a cron line).

    Raises:
        SiteError: a unit or the record could not be written, or systemctl refused.
    """
    root = Path(root)
    if engine not in WATCHDOG_ENGINES:
        setup = WatchdogSetup("none", f"watchdog: not needed on the {engine} engine")
        return _record(root, setup)
    cmd = watchdog_command(root, engine, docker_host=docker_host,
                           engine_unit_dir=engine_unit_dir, unhealthy_s=unhealthy_s)
    env_dir = os.environ.get(UNIT_DIR_ENV)
    target = Path(unit_dir or env_dir or SYSTEMD_UNIT_DIR)
    pid1 = systemd_is_pid1() if systemd is None else systemd
    if not pid1 and target == SYSTEMD_UNIT_DIR:
        cron = f"* * * * * root {shlex.join(cmd)}"
        return _record(root, WatchdogSetup(
            "manual", "watchdog: not running (systemd is not PID 1 here); run it every "
                      f"minute from cron, e.g. in /etc/cron.d/appliance: {cron}", cmd))
    try:
        paths = write_units(root, cmd, target)
    except OSError as e:
        raise SiteError(f"cannot write the watchdog's units to {target}: {e}") from e
    _, timer = unit_names(root)
    use_systemctl = pid1 and target == SYSTEMD_UNIT_DIR
    if use_systemctl:
        systemctl("daemon-reload")
        systemctl("enable", "--now", timer)
    return _record(root, WatchdogSetup(
        "timer", f"watchdog: systemd timer {timer} runs it every {EVERY_S} s"
                 + ("" if use_systemctl else f" (enabled in {target}, not started: "
                                             "systemd does not read that directory)"),
        cmd, [str(p) for p in paths], use_systemctl))


def remove(root: Path, *, systemctl: Callable[..., None] = _systemctl) -> list[Path]:
    """Disable and delete the watchdog's units and the record; return what was removed.

    Raises:
        SiteError: systemctl refused to disable the timer.
    """
    root = Path(root)
    setup = WatchdogSetup.read(root)
    removed: list[Path] = []
    if setup is not None and setup.units:
        service, timer = unit_names(root)
        if setup.systemctl:
            systemctl("disable", "--now", timer)
        unit_dir = Path(setup.units[0]).parent
        for p in (unit_dir / "timers.target.wants" / timer, unit_dir / timer,
                  unit_dir / service):
            if p.is_symlink() or p.exists():
                p.unlink()
                removed.append(p)
        if setup.systemctl:
            systemctl("daemon-reload")
    record = root / RECORD_FILE
    if record.exists():
        record.unlink()
        removed.append(record)
    return removed


def status_line(root: Path, now: float | None = None) -> str:
    """One line for `appliance status`: how the watchdog runs, and whether it still does."""
    setup = WatchdogSetup.read(root)
    if setup is None:
        return ("watchdog: not set up by the install (a site from before it did); "
                f"set it up with: appliance watchdog --write-unit --root {root}")
    if setup.mode == "timer":
        missing = [p for p in setup.units if not Path(p).exists()]
        if missing:
            return f"watchdog: NOT SET UP, {missing[0]} is gone; run the install again " \
                   f"or: appliance watchdog --write-unit --root {root}"
    try:
        checked = float(json.loads((Path(root) / STATE_FILE).read_text())["checked_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return setup.line + ("; it has not run yet" if setup.mode in ("timer", "manual")
                             else "")
    return f"{setup.line}; last check {max(0, round((now or time.time()) - checked))} s ago"


def _record(root: Path, setup: WatchdogSetup) -> WatchdogSetup:
    try:
        atomic_write(root / RECORD_FILE, json.dumps(asdict(setup), indent=1).encode() + b"\n")
    except OSError as e:
        raise SiteError(f"cannot record the watchdog in {root}: {e}") from e
    return setup


def set_up_quietly(root: Path, engine: object, unit_dir: Path | None,
                   say: Callable[[str], None]) -> WatchdogSetup:
    """`set_up` for the install plan: never fails the install (the release already serves);
    a failure becomes the line the install shows."""
    name = str(getattr(engine, "name", ""))
    # The engine's own socket and unit directory, so the watchdog drives the same engine.
    host = getattr(engine, "base_url", None)
    engine_units = getattr(engine, "unit_dir", None)
    try:
        setup = set_up(root, name, unit_dir=unit_dir or engine_units,
                       docker_host=host if isinstance(host, str) else None,
                       engine_unit_dir=engine_units)
    except (ApplianceError, OSError) as e:
        setup = WatchdogSetup("failed", f"watchdog: NOT SET UP: {e}; set it up with: "
                                        f"appliance watchdog --write-unit --root {root}")
    say(setup.line)
    return setup
