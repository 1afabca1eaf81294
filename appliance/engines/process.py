"""The process engine: the runtime as supervised local processes, no container engine.

Each service runs from its verified runtime image: the image's layers are unpacked
from the content store into a root shared by the releases that use it
(`appliance.engines.rootfs`), and the service runs chrooted there as an
unprivileged user, with its model files (taken out of the weights layers,
`appliance.bundle.layers`, one directory per service under the release) bound
read-only at the image's model path. The host needs no Python. Each service gets
a systemd unit (written to `unit_dir`, enabled for the serving release only, so a
reboot brings back `current`) that confines it with `RootDirectory=` and friends;
while the installer runs, or where systemd is not PID 1,
`appliance.engines.supervise` keeps it running and confines each start itself
(`appliance.engines.confine`: mount namespace, chroot, user, limits).

`runtime_from="host"` runs `command` (default: this interpreter's `-m runtime`)
on the host instead, unconfined: for development and tests without an image.
The front door's HAProxy runs from the bundle's proxy image the same way
(`appliance.engines.procproxy`, `appliance.engines.proxyroot`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.bundle.layers import extract_model
from appliance.bundle.manifest import Manifest
from appliance.bundle.store import ContentStore
from appliance.engines import rootfs
from appliance.engines.forget import forget_process
from appliance.engines.gpulibs import DriverLookup, driver_in_root, host_driver
from appliance.engines.hardening import data_dir, service_limits
from appliance.engines.imageview import (
    ImageView,
    confine_args,
    image_config,
    image_env,
    image_user,
    model_path,
    unit_confinement,
)
from appliance.engines.procproxy import ProxyProcessMixin, proxy_source
from appliance.engines.proxyroot import ensure_proxy_root, proxy_root_key
from appliance.engines.supervise import (
    SUPERVISE_ARG,
    open_log,
    process_exists,
    self_command,
    start_detached,
    systemctl,
)
from appliance.errors import ApplianceError, EngineError, ImageLoadError, StoreError
from appliance.frontdoor.token import RUNTIME_TOKENS, TOKEN_DIR_IN_RUNTIME, own_runtime_tokens
from appliance.fsutil import atomic_write
from appliance.progress import Progress, ProgressFn, no_progress
from appliance.site.engine import (
    Launch,
    behind_front_door,
    launches,
    runtime_command,
    site_id,
)
from appliance.site.layout import Release, Site
from appliance.site.placement import Placement

DEFAULT_COMMAND = (sys.executable, "-m", "runtime", "--models", "{models}", "--port", "{port}",
                   "--data-dir", "{data}")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
STOP_TIMEOUT_S = 15.0
# The unprivileged user systemd runs the services as (made on first start when missing).
SERVICE_USER = "appliance-runtime"
LIMIT_NOFILE = 65536  # idle client connections and model files must not hit EMFILE
CRASH_LOOP = 3  # quick exits in a row after which a service counts as dead
RUNTIME_FROM = ("image", "host")


class ProcessEngine(ProxyProcessMixin):
    """Runs each service as `command` over its model directory, supervised; and the
    front door's HAProxy (`ProxyProcessMixin`)."""

    name = "process"

    def __init__(self, site: Site, *, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, unit_dir: Path = DEFAULT_UNIT_DIR,
                 use_systemd: bool | None = None, python: str = sys.executable,
                 runtime_from: str | None = None, proxy_from: str | None = None,
                 driver: DriverLookup = host_driver) -> None:
        """`runtime_from`: "image" (each service from its image's root), or "host" (run
        `command` with this host's interpreter); a `command` alone means "host".
        `proxy_from`: the front door's HAProxy from the bundle's proxy image ("image"), or
        the host's haproxy package ("host"); default APPLIANCE_PROXY_FROM, else "image".
        `driver` finds the host GPU driver's files a GPU service gets in its root.

        Raises:
            EngineError: an unknown `runtime_from` or `proxy_from`.
        """
        self.site = site
        self.runtime_from = runtime_from or ("host" if command is not None else "image")
        if self.runtime_from not in RUNTIME_FROM:
            raise EngineError(f"unknown runtime source {self.runtime_from!r}; use "
                              "--runtime-from image or --runtime-from host")
        self.command = list(DEFAULT_COMMAND if command is None else command)
        self.env = dict(env or {})
        self.unit_dir = Path(unit_dir)
        self.use_systemd = (Path("/run/systemd/system").is_dir() and
                            self.unit_dir == DEFAULT_UNIT_DIR) if use_systemd is None \
            else use_systemd
        self.python = python
        self.driver = driver
        self.tag = site_id(site.root)
        self.proxy_from = proxy_source(proxy_from)

    # -- engine protocol ------------------------------------------------------
    def ping(self) -> str:
        return f"process supervisor ({'systemd' if self.use_systemd else 'appliance'})"

    def gpu_runtime(self) -> bool:
        return True  # local processes see the driver directly

    def missing_driver_libraries(self) -> list[str]:
        """The GPU driver libraries a GPU service in its image root needs but this host
        lacks (none needed when the runtime runs on the host)."""
        return self.driver().missing() if self.runtime_from == "image" else []

    def load(self, manifest: Manifest, release: Release, store: ContentStore,
             progress: ProgressFn = no_progress) -> None:
        """Take each service's model files out of their verified weights layers, and unpack
        the image roots its services (and the front door's HAProxy) run from."""
        total = sum(manifest.model(m).weights_size for s in manifest.services for m in s.models)
        done = 0
        for svc in manifest.services:
            for name in svc.models:
                model = manifest.model(name)
                dest = self._models_dir(release, svc.name) / model.name / model.version
                if not dest.is_dir():
                    try:
                        extract_model(store, model.weights_digest, model.path, dest)
                    except StoreError as e:
                        raise ImageLoadError(f"model {name!r}: {e}") from e
                done += model.weights_size
                progress(Progress("load", done, total, f"model files of {name} ready"))
        if self.runtime_from == "image":
            for svc in manifest.services:
                if not rootfs.runtime_layers(manifest, svc.image):
                    raise ImageLoadError(
                        f"service {svc.name!r}: the bundle carries model files but no runtime "
                        "image to run them from (a weights-only bundle); install it with "
                        "--runtime-from host (the host's own Python runtime) or ask the vendor "
                        "for a bundle built with a runtime image")
                self._image_root(manifest, svc.image, store)
                progress(Progress("load", message=f"image root of {svc.name} ready"))
        if self.proxy_from == "image" and behind_front_door(manifest):
            ensure_proxy_root(self.site, manifest, store)
            progress(Progress("load", message="image root of the front door ready"))
        if self.runtime_from == "image" or self.proxy_from == "image":
            self._remove_unused_roots()

    def start(self, manifest: Manifest, release: Release, placement: Placement, slot: int,
              progress: ProgressFn = no_progress) -> dict[str, str]:
        """Write each service's unit and start it under supervision."""
        self.stop(release.sequence)
        urls = {}
        for launch in launches(manifest, placement, slot, door=behind_front_door(manifest)):
            if self.runtime_from == "image":
                view = self._image_view(manifest, release, launch)
                cmd = ["--confine", "--", *confine_args(view)]
                env: dict[str, str] = {}
                memory = service_limits(manifest, launch.service).memory_bytes
                self._write_unit(manifest, release, launch, [], {},
                                 unit_confinement(view, memory))
            else:
                cmd, env = self._command(release, launch)
                self._write_unit(manifest, release, launch, cmd, env)
            run = self._run_dir(release)
            run.mkdir(parents=True, exist_ok=True)
            open_log(run / f"{launch.service}.log").close()  # 0640 before anything writes
            if self.use_systemd:
                if self.runtime_from == "host":
                    self._own_data(launch, *self._service_ids())
                systemctl("daemon-reload")
                systemctl("start", self.unit_name(launch.release, launch.service))
            else:
                sup = [*self_command("appliance.engines.supervise", SUPERVISE_ARG, self.python),
                       "--foreground", "--pidfile", str(run / f"{launch.service}.pid"),
                       "--log", str(run / f"{launch.service}.log"),
                       *(cmd if cmd[:1] == ["--confine"] else ["--", *cmd])]
                try:
                    start_detached(sup, {**os.environ, **env}, run / f"{launch.service}.pid",
                                   run / f"{launch.service}.log")
                except EngineError as e:
                    raise EngineError(f"cannot start service {launch.service!r}: {e}") from e
            urls[launch.service] = f"http://127.0.0.1:{launch.port}"
            progress(Progress("start", message=f"{launch.service} started on port {launch.port}"))
        return urls

    def alive(self, sequence: int, service: str) -> bool:
        if self.use_systemd:
            r = subprocess.run(["systemctl", "is-active", "--quiet",
                                self.unit_name(sequence, service)], check=False)
            return r.returncode == 0
        if self._supervisor_pid(sequence, service) is None:
            return False
        crashes = self.site.releases_dir / str(sequence) / "run" / f"{service}.crashes"
        try:
            return int(crashes.read_text()) < CRASH_LOOP
        except (OSError, ValueError):
            return True

    def logs_tail(self, sequence: int, service: str, lines: int = 20) -> str:
        p = self.site.releases_dir / str(sequence) / "run" / f"{service}.log"
        try:
            return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sequence: int) -> None:
        """Stop every supervised service of the release and wait until they are gone."""
        run = self.site.releases_dir / str(sequence) / "run"
        if self.use_systemd:
            for unit in self.unit_dir.glob(f"appliance-{self.tag}-{sequence}-*.service"):
                systemctl("stop", unit.name)
        if not run.is_dir():
            return
        pids = []
        for pidfile in run.glob("*.pid"):
            pid = self._supervisor_pid(sequence, pidfile.stem)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if process_exists(p)]
            time.sleep(0.05)
        for p in pids:
            os.kill(p, signal.SIGKILL)

    def restart(self, sequence: int, service: str) -> None:
        """Kill the service's process; its supervisor (systemd or ours) starts it again.

        Raises:
            EngineError: nothing supervises it any more.
        """
        if self.use_systemd:
            systemctl("restart", self.unit_name(sequence, service))
            return
        if self._supervisor_pid(sequence, service) is None:
            raise EngineError(f"the supervisor of service {service!r} (release {sequence}) is "
                              f"not running; run `appliance rollback {sequence}` to start it")
        child = self.site.releases_dir / str(sequence) / "run" / f"{service}.child"
        try:
            os.kill(int(child.read_text().strip()), signal.SIGKILL)  # SIGKILL ends a stopped one
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot kill service {service!r} of release {sequence}: {e}") \
                from e

    def running(self) -> set[int]:
        out = set()
        if self.use_systemd:
            for unit in self.unit_dir.glob(f"appliance-{self.tag}-*-*.service"):
                seq, _, svc = unit.name.removesuffix(".service").removeprefix(
                    f"appliance-{self.tag}-").partition("-")
                if seq.isdigit() and self.alive(int(seq), svc):
                    out.add(int(seq))
            return out
        for rel in self.site.releases():
            run = rel.path / "run"
            names = [p.stem for p in run.glob("*.pid")] if run.is_dir() else []
            if any(self.alive(rel.sequence, n) for n in names):
                out.add(rel.sequence)
        return out

    def enable(self, sequence: int) -> None:
        """Enable `sequence`'s units for boot (multi-user.target.wants) and disable others."""
        wants = self.unit_dir / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        # release units only: the front door's and the watchdog's stay enabled
        for unit in self.unit_dir.glob(f"appliance-{self.tag}-[0-9]*-*.service"):
            link = wants / unit.name
            mine = unit.name.startswith(f"appliance-{self.tag}-{sequence}-")
            if mine and not link.is_symlink():
                tmp = wants / f".{unit.name}.tmp"
                tmp.unlink(missing_ok=True)
                os.symlink(f"../{unit.name}", tmp)
                os.replace(tmp, link)
            elif not mine and link.is_symlink():
                link.unlink()
        if self.use_systemd:
            systemctl("daemon-reload")

    def forget_site(self) -> list[str]:
        """Delete the site's release units; the rest lives under the site root."""
        return forget_process(self.unit_dir, self.tag, self.use_systemd)

    # -- helpers ----------------------------------------------------------------
    def unit_name(self, sequence: int, service: str) -> str:
        """The unit's name; it carries the site id, so two sites' units never collide."""
        return f"appliance-{self.tag}-{sequence}-{service}.service"

    def _data_dir(self, service: str) -> Path:
        return self.site.root / "runtime" / service

    def _service_ids(self) -> tuple[int, int]:
        """The service user's uid and gid, the user made first when missing.

        Raises:
            EngineError: the user cannot be made.
        """
        import pwd
        try:
            pw = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                "/usr/sbin/nologin", SERVICE_USER], capture_output=True,
                               check=False, timeout=60)
            if r.returncode != 0:
                raise EngineError(f"cannot create the service user {SERVICE_USER}: "
                                  f"{r.stderr.decode(errors='replace').strip()}; create it "
                                  "(useradd --system) and install again") from None
            pw = pwd.getpwnam(SERVICE_USER)
        return pw.pw_uid, pw.pw_gid

    def _own_data(self, launch: Launch, uid: int, gid: int) -> None:
        """Give the service's user its data directory."""
        data = self._data_dir(launch.service)
        data.mkdir(parents=True, exist_ok=True)
        for p in (data, *data.rglob("*")):
            if not p.is_symlink():
                os.chown(p, uid, gid)

    def _models_dir(self, release: Release, service: str) -> Path:
        return release.models_dir / service

    def _run_dir(self, release: Release) -> Path:
        return release.path / "run"

    def _command(self, release: Release, launch: Launch) -> tuple[list[str], dict[str, str]]:
        models = str(self._models_dir(release, launch.service))
        # logs and metrics history outlive releases: one directory per service, site-wide
        data = self._data_dir(launch.service)
        data.mkdir(parents=True, exist_ok=True)
        cmd = [a.format(models=models, port=launch.port, data=data) for a in self.command]
        env = self._service_env(launch)
        if launch.loopback_only:
            cmd = runtime_command(cmd, launch)
            ids = self._service_ids() if self.use_systemd else (os.getuid(), os.getgid())
            tokens = own_runtime_tokens(self.site.root, *ids)
            if tokens is not None:
                env["RUNTIME_TOKEN_FILE"] = str(tokens / RUNTIME_TOKENS)
        return cmd, env

    def _service_env(self, launch: Launch) -> dict[str, str]:
        """The service's environment: its GPU, release, name and GPU policy; never a hub."""
        gpu = "" if launch.gpu_index is None else (launch.gpu_uuid or str(launch.gpu_index))
        return {**self.env, "CUDA_VISIBLE_DEVICES": gpu, "APPLIANCE_RELEASE": str(launch.release),
                "APPLIANCE_SERVICE": launch.service, "RUNTIME_GPU_POLICY": launch.gpu_policy,
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def _write_unit(self, manifest: Manifest, release: Release, launch: Launch,
                    cmd: list[str], env: dict[str, str],
                    confinement: list[str] | None = None) -> Path:
        log = self._run_dir(release) / f"{launch.service}.log"
        host = [
            f"ExecStart={shlex.join(cmd)}",
            *(f'Environment="{k}={v}"' for k, v in sorted(env.items())),
            f"WorkingDirectory={release.path}",
            # Confinement: an unprivileged user that cannot gain privileges, bounded
            # memory and files, and a read-only view of the system but its data.
            f"User={SERVICE_USER}",
            f"Group={SERVICE_USER}",
            "NoNewPrivileges=yes",
            f"LimitNOFILE={LIMIT_NOFILE}",
            f"MemoryMax={service_limits(manifest, launch.service).memory_bytes}",
            "TasksMax=1024",
            "UMask=0027",
            "PrivateTmp=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            f"ReadWritePaths={self._data_dir(launch.service)}",
        ]
        lines = [
            "[Unit]",
            f"Description=Offline appliance {manifest.name} {manifest.version} "
            f"(release {launch.release}) service {launch.service}",
            "After=network.target",
            "",
            "[Service]",
            "Type=simple",
            "Restart=always",
            "RestartSec=2",
            *(host if confinement is None else confinement),
            f"StandardOutput=append:{log}",
            f"StandardError=append:{log}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        path = self.unit_dir / self.unit_name(launch.release, launch.service)
        atomic_write(path, "\n".join(lines).encode())
        return path

    def _image_root(self, manifest: Manifest, image_name: str, store: ContentStore) -> Path:
        """The unpacked root of the image's runtime layers (unpacked now if missing).

        Raises:
            ImageLoadError: a blob is missing, does not match, or holds an unsafe member.
        """
        img = manifest.image(image_name)
        layers = rootfs.runtime_layers(manifest, image_name)
        missing = [d for d in (img.config_digest, *layers) if not store.has(d)]
        if missing:
            raise ImageLoadError(
                f"image {img.reference}: blob {missing[0][:19]} is not in the content store; "
                "the process engine runs each service from its image: install a bundle that "
                "carries it (or run the host's own runtime with --runtime-from host)")
        cfg = image_config(store, img.config_digest)
        mounts = (model_path(list(cfg.get("Cmd") or [])), data_dir(cfg))
        try:
            return rootfs.ensure_root(store, layers, rootfs.roots_dir(self.site.root), mounts)
        except ApplianceError as e:
            raise ImageLoadError(f"image {img.reference}: {e}") from e

    def _remove_unused_roots(self) -> None:
        """Remove the image roots no release on this site uses any more."""
        keep: set[str] = set()
        for rel in self.site.releases():
            try:
                m = rel.manifest()
                keep.update(rootfs.root_key(rootfs.runtime_layers(m, s.image))
                            for s in m.services)
                keep.add(proxy_root_key(m) or "")  # the front door's, which may serve on
            except (ApplianceError, OSError, KeyError):
                return  # cannot tell what an unreadable release needs: keep everything
        rootfs.remove_unused(rootfs.roots_dir(self.site.root), keep)

    def _image_view(self, manifest: Manifest, release: Release, launch: Launch) -> ImageView:
        """What the service sees: its image root, model and data binds, user, command.

        Raises:
            EngineError: the image root is not unpacked (load did not run).
        """
        svc = next(s for s in manifest.services if s.name == launch.service)
        root = rootfs.roots_dir(self.site.root) / rootfs.root_key(
            rootfs.runtime_layers(manifest, svc.image))
        if not root.is_dir():
            raise EngineError(f"the image root of service {launch.service!r} is not unpacked "
                              f"({root}); run the install again")
        cfg = image_config(self.site.store, launch.image_id)
        uid, gid = image_user(cfg, root) or self._service_ids()
        self._own_data(launch, uid, gid)
        cmd = [str(a) for a in cfg.get("Cmd") or []]
        env = {**image_env(cfg), **self._service_env(launch), "RUNTIME_PORT": str(launch.port)}
        tokens = own_runtime_tokens(self.site.root, uid, gid) if launch.loopback_only else None
        if tokens is not None:
            env["RUNTIME_TOKEN_FILE"] = f"{TOKEN_DIR_IN_RUNTIME}/{RUNTIME_TOKENS}"
        driver: tuple[tuple[str, str], ...] = ()
        if launch.gpu_index is not None:  # the driver's libraries: CUDA's root lacks them
            env, driver = driver_in_root(root, env, self.driver)
        return ImageView(root, self._models_dir(release, launch.service), model_path(cmd),
                         self._data_dir(launch.service), data_dir(cfg), uid, gid,
                         str(cfg.get("WorkingDir") or "/"),
                         [*(cfg.get("Entrypoint") or []), *runtime_command(cmd, launch)],
                         env, gpu=launch.gpu_index is not None, nofile=LIMIT_NOFILE,
                         driver=driver, tokens=str(tokens or ""))

    def _supervisor_pid(self, sequence: int, service: str) -> int | None:
        """The pid of the release's supervisor for `service`, if it is really running."""
        pidfile = self.site.releases_dir / str(sequence) / "run" / f"{service}.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # a recycled pid belongs to someone else: only ours names this pidfile
        return pid if str(pidfile).encode() in cmdline and process_exists(pid) else None
