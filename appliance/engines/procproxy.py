"""The front door's HAProxy on the process engine: a supervised local process.

HAProxy runs from the host's Debian package (`/usr/sbin/haproxy`, found by
`haproxy_command` alone, so that it can later run from the bundle's verified proxy
image instead). It starts as root only to read its configuration, certificate and
token map and to bind the services' ports; then it runs as the proxy's uid
(`uid`/`gid` in haproxy.cfg, `container.PROXY_UID`, the same user as in the proxy
image). Where systemd is PID 1 it is the unit `appliance-<site id>-frontdoor.service`
(`Restart=always`, confined like the service units); elsewhere our supervisor
(`appliance.engines.supervise`) restarts it when it dies. The unit file is written and
enabled either way, so a reboot brings the front door back.

    <site>/frontdoor-proc/    haproxy.pid (the supervisor), haproxy.child, haproxy.log
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from appliance.errors import EngineError, FrontDoorError, ProxyMissingError
from appliance.frontdoor import site as files_of
from appliance.frontdoor.container import PROXY_UID, ProxyContainer
from appliance.fsutil import atomic_write
from appliance.site.layout import Site

HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_ENV = "APPLIANCE_HAPROXY"  # another haproxy binary (tests: a host without one)
PACKAGE = "haproxy"  # the Debian package that carries it
PROC_DIR = "frontdoor-proc"
STOP_TIMEOUT_S = 15.0
CHECK_TIMEOUT_S = 30.0
# What root in the front door's unit may still do: read its files, bind, drop to its uid.
UNIT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE", "CAP_DAC_OVERRIDE",
                     "CAP_SYS_RESOURCE")


def haproxy_command() -> list[str]:
    """The command that runs HAProxy here, flags to be appended: today the host's Debian
    package. The one place that decides which HAProxy runs (later: from the bundle's
    verified proxy image).

    Raises:
        ProxyMissingError: HAProxy is not installed.
    """
    binary = Path(os.environ.get(HAPROXY_ENV) or HAPROXY)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ProxyMissingError(
            f"the front door needs HAProxy and {binary} is missing: install Debian's "
            f"'{PACKAGE}' package (apt-get install {PACKAGE}) and run again")
    return [str(binary)]


def serve_command(config: Path) -> list[str]:
    """HAProxy over `config` in the foreground: one process, no master (the supervisor
    or systemd restarts it).

    Raises:
        ProxyMissingError: HAProxy is not installed.
    """
    return [*haproxy_command(), "-db", "-f", str(config)]


def haproxy_version() -> str:
    """A one-line description of the HAProxy that would run, for preflight.

    Raises:
        ProxyMissingError: HAProxy is not installed or does not run.
    """
    cmd = haproxy_command()
    try:
        r = subprocess.run([*cmd, "-v"], capture_output=True, text=True, timeout=30,
                           check=False)
    except OSError as e:
        raise ProxyMissingError(f"{cmd[0]} does not run ({e.strerror}): reinstall Debian's "
                                f"'{PACKAGE}' package and run again") from e
    first = (r.stdout.splitlines() or ["?"])[0]
    version = first.split(" - ")[0].replace("HAProxy version", "HAProxy").strip()
    return f"{version} ({shlex.join(cmd)})"


class ProcessProxy:
    """One site's HAProxy as a supervised process (and its systemd unit)."""

    def __init__(self, site: Site, tag: str, unit_dir: Path, use_systemd: bool,
                 python: str, env: dict[str, str] | None = None) -> None:
        self.site, self.tag, self.unit_dir = site, tag, unit_dir
        self.use_systemd, self.python = use_systemd, python
        self.env = dict(env or {})
        self.dir = site.root / PROC_DIR
        self.pidfile = self.dir / "haproxy.pid"
        self.log = self.dir / "haproxy.log"

    @property
    def unit_name(self) -> str:
        """The unit's name; it carries the site id, so two sites' proxies never collide."""
        return f"appliance-{self.tag}-frontdoor.service"

    def logs_hint(self) -> str:
        """Where a person reads HAProxy's log."""
        if self.use_systemd:
            return f"{self.log} (or journalctl -u {self.unit_name})"
        return str(self.log)

    def ensure(self, spec: ProxyContainer, restart: bool = False) -> bool:
        """Run HAProxy over `spec.conf_dir`'s configuration: left alone when it runs (its
        supervisor keeps it running), else started; restarted when `restart`. True when
        (re)started.

        Raises:
            ProxyMissingError: HAProxy is not installed.
            FrontDoorError: HAProxy refuses the rendered configuration.
            EngineError: its supervisor could not be started.
        """
        cmd = serve_command(spec.conf_dir / files_of.CONFIG)
        self._check_config(cmd)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.write_unit(spec, cmd)
        self._enable()
        if self.use_systemd:
            _systemctl("daemon-reload")
            if not restart and self.alive():
                return False
            _systemctl("restart", self.unit_name)
            return True
        if self.supervisor_pid() is not None:
            if not restart:
                return False
            self._stop_supervisor()
        sup = [self.python, "-m", "appliance.engines.supervise", "--pidfile",
               str(self.pidfile), "--log", str(self.log), "--", *cmd]
        r = subprocess.run(sup, env={**os.environ, **self.env}, capture_output=True,
                           timeout=60, check=False)
        if r.returncode != 0:
            raise EngineError("cannot start the front door's supervisor: "
                              f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        return True

    def alive(self) -> bool:
        """Whether HAProxy's supervisor (systemd's unit, or ours) runs."""
        if self.use_systemd:
            r = subprocess.run(["systemctl", "is-active", "--quiet", self.unit_name],
                               check=False, timeout=60)
            return r.returncode == 0
        return self.supervisor_pid() is not None

    def stop(self) -> None:
        """Stop HAProxy and remove its unit (the site itself is being removed)."""
        if self.use_systemd:
            subprocess.run(["systemctl", "disable", "--now", self.unit_name],
                           capture_output=True, check=False, timeout=60)
        self._stop_supervisor()
        (self.unit_dir / "multi-user.target.wants" / self.unit_name).unlink(missing_ok=True)
        (self.unit_dir / self.unit_name).unlink(missing_ok=True)

    def write_unit(self, spec: ProxyContainer, cmd: list[str]) -> Path:
        """Write the systemd unit that runs `cmd` confined; return its path."""
        lines = [
            "[Unit]",
            f"Description=Offline appliance front door (HAProxy) of {self.site.root}",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={shlex.join(cmd)}",
            "WorkingDirectory=/",
            "Restart=always",
            "RestartSec=2",
            # Confinement as the service units have it, but for the user: HAProxy starts
            # as root to read its files and bind the ports, then runs as PROXY_UID; root
            # in here holds only the capabilities for that (DAC_OVERRIDE: the certificate
            # and the socket's directory belong to PROXY_UID; ProtectSystem still keeps
            # all but that directory read-only).
            f"CapabilityBoundingSet={' '.join(UNIT_CAPABILITIES)}",
            "NoNewPrivileges=yes",
            f"LimitNOFILE={spec.nofile}",
            f"MemoryMax={spec.memory_bytes}",
            f"TasksMax={spec.pids_limit}",
            "UMask=0027",
            "PrivateTmp=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            f"ReadWritePaths={spec.run_dir}",
            "KillSignal=SIGUSR1",  # HAProxy's soft stop: finish requests, then exit
            "TimeoutStopSec=30",
            f"StandardOutput=append:{self.log}",
            f"StandardError=append:{self.log}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        path = self.unit_dir / self.unit_name
        atomic_write(path, "\n".join(lines).encode())
        return path

    def supervisor_pid(self) -> int | None:
        """The pid of HAProxy's supervisor, if it is really running."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # a recycled pid belongs to someone else: only ours names this pidfile
        return pid if str(self.pidfile).encode() in cmdline and _exists(pid) else None

    def child_pid(self) -> int | None:
        """The pid of the running HAProxy under our supervisor, if any."""
        try:
            pid = int(self.pidfile.with_suffix(".child").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _exists(pid) else None

    def _check_config(self, cmd: list[str]) -> None:
        r = subprocess.run([*cmd, "-c", "-q"], capture_output=True, text=True,
                           timeout=CHECK_TIMEOUT_S, check=False)
        if r.returncode != 0:
            why = " ".join((r.stderr or r.stdout).split())[-300:]
            raise FrontDoorError(f"HAProxy refuses the front door's configuration "
                                 f"({cmd[-1]}): {why}")

    def _enable(self) -> None:
        wants = self.unit_dir / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / self.unit_name
        if not link.is_symlink():
            tmp = wants / f".{self.unit_name}.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(f"../{self.unit_name}", tmp)
            os.replace(tmp, link)

    def _stop_supervisor(self) -> None:
        pid = self.supervisor_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exists(pid):
            os.kill(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _systemctl(*args: str) -> None:
    r = subprocess.run(["systemctl", *args], capture_output=True, check=False, timeout=60)
    if r.returncode != 0:
        raise EngineError(f"systemctl {' '.join(args)} failed: "
                          f"{r.stderr.decode(errors='replace').strip()}")


class ProxyProcessMixin:
    """The process engine's side of `appliance.site.door.ProxyHost`."""

    site: Site
    tag: str
    unit_dir: Path
    use_systemd: bool
    python: str
    env: dict[str, str]

    proxy_in_container = False  # HAProxy reads the front door's files at their host paths

    @property
    def proxy_uid(self) -> int | None:
        """The proxy's uid when the installer is root (HAProxy starts as root, reads its
        files, binds, then runs as it); None otherwise (it runs as the installer)."""
        return PROXY_UID if os.geteuid() == 0 else None

    def _proxy(self) -> ProcessProxy:
        return ProcessProxy(self.site, self.tag, self.unit_dir, self.use_systemd, self.python,
                            self.env)

    def proxy_name(self) -> str:
        """The front door's unit on this site."""
        return self._proxy().unit_name

    def proxy_logs(self) -> str:
        """Where HAProxy's log is."""
        return self._proxy().logs_hint()

    def ensure_proxy(self, spec: ProxyContainer, restart: bool = False) -> bool:
        """Run HAProxy supervised (see `ProcessProxy.ensure`).

        Raises:
            ProxyMissingError: HAProxy is not installed.
            FrontDoorError: HAProxy refuses the configuration.
            EngineError: it could not be started.
        """
        return self._proxy().ensure(spec, restart)

    def stop_proxy(self) -> None:
        """Stop this site's HAProxy and remove its unit (the site is being removed)."""
        self._proxy().stop()

    def proxy_preflight(self) -> str:
        """The HAProxy that would run, for preflight.

        Raises:
            ProxyMissingError: HAProxy is not installed.
        """
        return haproxy_version()
