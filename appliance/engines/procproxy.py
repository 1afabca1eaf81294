"""The front door's HAProxy on the process engine: a supervised local process.

By default HAProxy runs from the bundle's verified proxy image, confined as the
runtime is (`appliance.engines.proxyroot`): the rendered configuration is the
container one, and the host needs no haproxy package. `proxy_from="host"` (the
APPLIANCE_PROXY_FROM=host environment variable; for development) runs the host's
Debian package instead (`/usr/sbin/haproxy`, or APPLIANCE_HAPROXY): it starts as root
only to read its files and bind the ports, then runs as the proxy's uid (`uid`/`gid` in
haproxy.cfg). Where systemd is PID 1 it is the unit `appliance-<site id>-frontdoor.service`
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
from dataclasses import replace
from pathlib import Path

from appliance.bundle.manifest import Manifest
from appliance.engines.imageview import ImageView, confine_args, unit_confinement
from appliance.engines.proxyroot import check_image_ref, proxy_view, refuse_low_ports, serve_args
from appliance.engines.supervise import (
    CONFINE_ARG,
    SUPERVISE_ARG,
    process_exists,
    self_command,
    start_detached,
    systemctl,
)
from appliance.errors import EngineError, FrontDoorError, ProxyMissingError
from appliance.frontdoor import site as files_of
from appliance.frontdoor.container import PROXY_UID, ProxyContainer
from appliance.fsutil import atomic_write
from appliance.site.layout import Site

HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_ENV = "APPLIANCE_HAPROXY"  # another host haproxy binary (with APPLIANCE_PROXY_FROM=host)
PACKAGE = "haproxy"  # the Debian package that carries it
PROXY_FROM_ENV = "APPLIANCE_PROXY_FROM"  # "host": the host's package (development)
PROXY_FROM = ("image", "host")
PROC_DIR = files_of.PROC_DIR
STOP_TIMEOUT_S = 15.0
CHECK_TIMEOUT_S = 30.0
# What root in the front door's unit may still do: read its files, bind, drop to its uid.
UNIT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE", "CAP_DAC_OVERRIDE",
                     "CAP_SYS_RESOURCE")


def proxy_source(proxy_from: str | None = None) -> str:
    """Where the process engine's HAProxy comes from: `proxy_from`, else
    APPLIANCE_PROXY_FROM, else "image" (the bundle's proxy image).

    Raises:
        EngineError: an unknown source.
    """
    source = proxy_from or os.environ.get(PROXY_FROM_ENV) or "image"
    if source not in PROXY_FROM:
        raise EngineError(f"unknown proxy source {source!r} in {PROXY_FROM_ENV}; use "
                          f"{PROXY_FROM_ENV}=image (the bundle's proxy image) or host")
    return source


def haproxy_command() -> list[str]:
    """The command that runs the host's HAProxy (`proxy_from="host"`), flags to be appended.

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
                 python: str, env: dict[str, str] | None = None,
                 proxy_from: str | None = None) -> None:
        """`proxy_from`: "image" (the bundle's proxy image, confined) or "host" (the host's
        haproxy package); default APPLIANCE_PROXY_FROM, else "image".

        Raises:
            EngineError: an unknown `proxy_from`.
        """
        self.site, self.tag, self.unit_dir = site, tag, unit_dir
        self.use_systemd, self.python = use_systemd, python
        self.env = dict(env or {})
        self.proxy_from = proxy_source(proxy_from)
        self.dir = site.root / PROC_DIR
        self.pidfile = self.dir / "haproxy.pid"
        self.log = self.dir / files_of.PROC_LOG

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
            ProxyMissingError: no installed release carries the proxy image (or, from the
                host, HAProxy is not installed).
            ProxyConfigError: a port under 1024 (HAProxy runs unprivileged).
            ImageLoadError: the proxy image's root cannot be unpacked.
            FrontDoorError: HAProxy refuses the rendered configuration.
            EngineError: its supervisor could not be started.
        """
        if self.proxy_from == "image":
            refuse_low_ports(spec.ports)
            view = proxy_view(self.site, spec, *serve_args())
            self._check_image_config(view)
            supervised = ["--confine", "--", *confine_args(view)]
            unit = self._image_unit(spec, view)
        else:
            cmd = serve_command(spec.conf_dir / files_of.CONFIG)
            self._check_config(cmd)
            supervised = ["--", *cmd]
            unit = self._host_unit(spec, cmd)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.write_unit(unit)
        self._enable()
        if self.proxy_from == "image":
            self._drop_foreign_socket(spec, view.uid)
        if self.use_systemd:
            systemctl("daemon-reload")
            if not restart and self.alive():
                return False
            systemctl("restart", self.unit_name)
            return True
        if self.supervisor_pid() is not None:
            if not restart:
                return False
            self._stop_supervisor()
        sup = [*self_command("appliance.engines.supervise", SUPERVISE_ARG, self.python),
               "--foreground", "--pidfile", str(self.pidfile), "--log", str(self.log),
               *supervised]
        try:
            start_detached(sup, {**os.environ, **self.env}, self.pidfile, self.log)
        except EngineError as e:
            raise EngineError(f"cannot start the front door's supervisor: {e}") from e
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

    def write_unit(self, service: list[str]) -> Path:
        """Write the systemd unit whose `[Service]` section is `service`; return its path."""
        lines = [
            "[Unit]",
            f"Description=Offline appliance front door (HAProxy) of {self.site.root}",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            *service,
            "Restart=always",
            "RestartSec=2",
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

    @staticmethod
    def _image_unit(spec: ProxyContainer, view: ImageView) -> list[str]:
        """HAProxy confined by systemd as our supervisor confines it: the image's root, the
        front door's directories at their container paths, the image's user, and no
        capability at all (its ports are 1024 or more)."""
        return [*unit_confinement(view, spec.memory_bytes), "CapabilityBoundingSet=",
                "AmbientCapabilities="]

    def _host_unit(self, spec: ProxyContainer, cmd: list[str]) -> list[str]:
        """The host's HAProxy, as root only to read its files, bind and drop to its uid."""
        return [
            f"ExecStart={shlex.join(cmd)}",
            "WorkingDirectory=/",
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
        ]

    def supervisor_pid(self) -> int | None:
        """The pid of HAProxy's supervisor, if it is really running."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # a recycled pid belongs to someone else: only ours names this pidfile
        return pid if str(self.pidfile).encode() in cmdline and process_exists(pid) else None

    def child_pid(self) -> int | None:
        """The pid of the running HAProxy under our supervisor, if any."""
        try:
            pid = int(self.pidfile.with_suffix(".child").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_exists(pid) else None

    def _check_config(self, cmd: list[str]) -> None:
        r = subprocess.run([*cmd, "-c", "-q"], capture_output=True, text=True,
                           timeout=CHECK_TIMEOUT_S, check=False)
        if r.returncode != 0:
            why = " ".join((r.stderr or r.stdout).split())[-300:]
            raise FrontDoorError(f"HAProxy refuses the front door's configuration "
                                 f"({cmd[-1]}): {why}")

    def _check_image_config(self, view: ImageView) -> None:
        """`haproxy -c` over the rendered configuration, confined as HAProxy will run."""
        check = replace(view, argv=[view.argv[0], "-c", "-q", *view.argv[1:]])
        cmd = [*self_command("appliance.engines.confine", CONFINE_ARG, self.python),
               *confine_args(check)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                           check=False)
        if r.returncode != 0:
            why = " ".join((r.stderr or r.stdout).split())[-300:]
            raise FrontDoorError(f"HAProxy refuses the front door's configuration "
                                 f"({view.models / files_of.CONFIG}): {why}")

    def _drop_foreign_socket(self, spec: ProxyContainer, uid: int) -> None:
        """Stop the proxy whose runtime API socket another user owns (the host's HAProxy
        made it as root) and remove the socket: HAProxy as `uid` cannot take it over
        (the kernel's protected hard links refuse the link it keeps the old one by)."""
        sock = spec.run_dir / files_of.SOCKET
        try:
            owner = sock.lstat().st_uid
        except FileNotFoundError:
            return
        if owner == uid:
            return
        if self.use_systemd:
            systemctl("stop", self.unit_name)
        self._stop_supervisor()
        sock.unlink(missing_ok=True)

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
        while process_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_exists(pid):
            os.kill(pid, signal.SIGKILL)



class ProxyProcessMixin:
    """The process engine's side of `appliance.site.door.ProxyHost`."""

    site: Site
    tag: str
    unit_dir: Path
    use_systemd: bool
    python: str
    env: dict[str, str]

    proxy_from: str

    @property
    def proxy_in_container(self) -> bool:
        """Whether HAProxy reads the front door's files at their container paths (from the
        proxy image) or at their host paths (the host's package)."""
        return self.proxy_from == "image"

    @property
    def proxy_uid(self) -> int | None:
        """From the host's package, the proxy's uid when the installer is root (HAProxy
        starts as root, reads its files, binds, then runs as it); None otherwise (from the
        image it starts as the image's user; unprivileged, it runs as the installer)."""
        return PROXY_UID if self.proxy_from == "host" and os.geteuid() == 0 else None

    def _proxy(self) -> ProcessProxy:
        return ProcessProxy(self.site, self.tag, self.unit_dir, self.use_systemd, self.python,
                            self.env, self.proxy_from)

    def proxy_name(self) -> str:
        """The front door's unit on this site."""
        return self._proxy().unit_name

    def proxy_logs(self) -> str:
        """Where HAProxy's log is."""
        return self._proxy().logs_hint()

    def ensure_proxy(self, spec: ProxyContainer, restart: bool = False) -> bool:
        """Run HAProxy supervised (see `ProcessProxy.ensure`).

        Raises:
            ProxyMissingError: the proxy image (or the host's HAProxy) is missing.
            FrontDoorError: HAProxy refuses the configuration or a port.
            ImageLoadError: the proxy image's root cannot be unpacked.
            EngineError: it could not be started.
        """
        return self._proxy().ensure(spec, restart)

    def stop_proxy(self) -> None:
        """Stop this site's HAProxy and remove its unit (the site is being removed)."""
        self._proxy().stop()

    def proxy_preflight(self, manifest: Manifest) -> str:
        """The HAProxy that would run for `manifest`, for preflight.

        Raises:
            ProxyMissingError: the bundle carries no proxy image (or, from the host,
                HAProxy is not installed; from the image, this is not root).
            ProxyConfigError: a service's port is under 1024 (from the image).
        """
        if self.proxy_from == "image":
            if os.geteuid() != 0:
                raise ProxyMissingError(
                    "the front door's HAProxy runs confined from the bundle's proxy image, "
                    "which takes root: run the installer as root (for development, "
                    f"{PROXY_FROM_ENV}=host runs the host's haproxy package instead)")
            return check_image_ref(manifest)
        return haproxy_version()
