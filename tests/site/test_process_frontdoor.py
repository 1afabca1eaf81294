"""The front door on the process engine: HAProxy from the bundle's real proxy image
(out/proxy-image.tar, `make proxy-image`), unpacked, confined and supervised, in front
of real runtimes run as local processes, with real TLS and the site token. No container
engine: the runtime's image is a stand-in (the runtime runs from this interpreter,
--runtime-from host), and the host's haproxy package is never used (APPLIANCE_HAPROXY
names a missing file throughout); the installer is the headless CLI as a subprocess, as
a field engineer runs it."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.engines import rootfs
from appliance.engines.process import ProcessEngine
from appliance.engines.procproxy import PROC_DIR, ProcessProxy
from appliance.frontdoor.container import CONF_IN_CONTAINER, PROXY_UID, RUN_IN_CONTAINER
from appliance.site.door import lan_address
from appliance.site.doorops import rotate_token
from appliance.site.engine import site_id
from appliance.site.layout import Site, runtime_port
from tests.bundle.runtimes import docker_archive
from tests.e2e.doorkit import Vendor, free_port, no_gpu, steady_load
from tests.e2e.kit import cli_env
from tests.enginekit import need, wait_for
from tests.image.fixtures import proxy_image_tar  # noqa: F401
from tests.site.installkit import runtime_status

pytestmark = pytest.mark.slow
# The host's haproxy package must play no part: the front door runs from the image.
NO_HOST_HAPROXY = {"APPLIANCE_HAPROXY": "/nonexistent/haproxy"}


@dataclass
class ProcDoor:
    """A site on the process engine and the vendor that signs its bundles."""

    vendor: Vendor
    root: Path
    units: Path

    def cli(self, *cmd: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        # the stand-in images have no runtime in their root: the host's runs
        return subprocess.run([sys.executable, "-m", "appliance", *cmd, "--root", str(self.root),
                               "--engine", "process", "--unit-dir", str(self.units),
                               "--runtime-from", "host"],
                              env={**cli_env(), **NO_HOST_HAPROXY, **(env or {})},
                              capture_output=True, text=True, timeout=600, check=False)

    def install(self, bundle: Path, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        return self.cli("install", str(bundle), "--yes", "--trust", str(self.vendor.root),
                        "--gpu-state", str(self.vendor.work / "no-gpu.json"),
                        "--health-timeout", "60", *extra, env=env)

    def engine(self) -> ProcessEngine:
        return ProcessEngine(Site(self.root), unit_dir=self.units, use_systemd=False,
                             proxy_from="image")

    def proxy(self) -> ProcessProxy:
        return ProcessProxy(Site(self.root), site_id(self.root), self.units, False,
                            sys.executable, proxy_from="image")

    def proxy_root(self) -> Path:
        """The proxy image's unpacked root (the one root that holds HAProxy)."""
        [root] = [p for p in rootfs.roots_dir(self.root).iterdir()
                  if (p / "usr/sbin/haproxy").exists()]
        return root

    def get(self, path: str, token: bool | str = True) -> int:
        """The status of GET `path` on the stable HTTPS port (with the site's token, or
        the one given)."""
        door = json.loads((self.root / "frontdoor" / "door.json").read_text())
        ctx = ssl.create_default_context(cafile=door["ca_file"])
        conn = http.client.HTTPSConnection("127.0.0.1", self.vendor.port, context=ctx,
                                           timeout=10)
        bearer = token if isinstance(token, str) else self.token()
        headers = {"Authorization": f"Bearer {bearer}"} if token else {}
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def token(self) -> str:
        return (self.root / "token").read_text().strip()

    def runtime_url(self, release: int = 1) -> str:
        """The release's runtime on loopback, behind the door."""
        record = json.loads((self.root / "releases" / str(release) / "release.json").read_text())
        return str(record["endpoints"]["mlp"])

    def served_by(self) -> str:
        """Who answered GET /v2/models/mlp at the stable port: "main" or the fallback."""
        door = json.loads((self.root / "frontdoor" / "door.json").read_text())
        ctx = ssl.create_default_context(cafile=door["ca_file"])
        conn = http.client.HTTPSConnection("127.0.0.1", self.vendor.port, context=ctx,
                                           timeout=10)
        try:
            conn.request("GET", "/v2/models/mlp",
                         headers={"Authorization": f"Bearer {self.token()}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            return resp.getheader("X-Appliance-Served-By", "main")
        finally:
            conn.close()


def _serves(door: ProcDoor) -> bool:
    try:
        return door.get("/v2/models/mlp") == 200
    except OSError:
        return False


@pytest.fixture
def door(tmp_path: Path, proxy_image_tar: Path) -> Iterator[ProcDoor]:  # noqa: F811
    images = (docker_archive(tmp_path / "runtime.tar"), proxy_image_tar)
    vendor = Vendor(tmp_path, images, free_port())
    no_gpu(tmp_path)
    # a short root: HAProxy's runtime API socket path must fit a sockaddr_un
    d = ProcDoor(vendor, tmp_path / "s", tmp_path / "units")
    yield d
    eng = d.engine()
    for seq in eng.running():
        eng.stop(seq)
    eng.stop_proxy()


@pytest.fixture
def serving(door: ProcDoor) -> ProcDoor:
    """Release 1 installed behind the front door."""
    r = door.install(door.vendor.build(1, seed=0))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "https://" in r.stdout and f":{door.vendor.port}" in r.stdout, r.stdout[-2000:]
    return door


def test_process_door_answers_https_with_the_token_only(serving: ProcDoor):
    door = serving
    assert door.get("/v2/models/mlp") == 200
    assert door.get("/v2/models/mlp", token=False) == 401
    assert door.get("/v2/health/ready", token=False) == 200  # probes need no token
    plain = http.client.HTTPConnection("127.0.0.1", door.vendor.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/v2/health/ready")
            plain.getresponse().read()
    finally:
        plain.close()
    # HAProxy serves as the proxy's unprivileged user, not as root
    child = door.proxy().child_pid()
    assert child is not None
    uids = next(x for x in Path(f"/proc/{child}/status").read_text().splitlines()
                if x.startswith("Uid:")).split()[1:]
    assert uids == [str(PROXY_UID)] * 4, uids


def test_process_door_token_rotates_at_host_paths(serving: ProcDoor):
    old = serving.token()
    runtime = serving.runtime_url()
    assert runtime_status(runtime) == 401  # around the proxy the runtime asks for it too
    assert runtime_status(runtime, old) == 200
    new = rotate_token(Site(serving.root), finish=False)  # HAProxy names its map by host path
    for tok in (new, old):  # both at the door and at the runtime while clients move
        assert serving.get("/v2/models/mlp", token=tok) == 200
        assert runtime_status(runtime, tok) == 200
    rotate_token(Site(serving.root), finish=True)
    assert serving.get("/v2/models/mlp", token=old) == 401
    # the runtime looks at its token file at most once a second (runtime/auth.py)
    wait_for(lambda: runtime_status(runtime, old) == 401, 5, "the runtime to drop the old token")
    assert serving.get("/v2/models/mlp", token=new) == 200
    assert runtime_status(runtime, new) == 200


def test_process_door_runtime_listens_on_loopback_only(serving: ProcDoor):
    record = json.loads((serving.root / "releases" / "1" / "release.json").read_text())
    url = record["endpoints"]["mlp"]
    port = runtime_port(serving.vendor.port, 0)
    assert url == f"http://127.0.0.1:{port}"
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split()
    assert {f.rsplit(":", 1)[0] for f in listening[3::5]} == {"127.0.0.1"}, listening
    lan = lan_address()
    if lan.count(".") != 3 or lan.startswith("127."):
        pytest.skip(f"this host has no non-loopback IPv4 address ({lan!r}) to try")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((lan, port), timeout=5).close()
    with socket.create_connection((lan, serving.vendor.port), timeout=5):
        pass  # while the stable port answers there


def test_process_door_unit_is_written_and_stays_enabled(serving: ProcDoor):
    name = f"appliance-{site_id(serving.root)}-frontdoor.service"
    text = (serving.units / name).read_text()
    lines = text.splitlines()
    conf, run = serving.root / "frontdoor", serving.root / "frontdoor-run"
    # systemd confines it as our supervisor does: the image's root, the front door's
    # directories at their container paths, the image's user, no capability at all
    for line in (f"ExecStart=/usr/sbin/haproxy -db -f {CONF_IN_CONTAINER}/haproxy.cfg",
                 f"RootDirectory={serving.proxy_root()}", "MountAPIVFS=yes",
                 f"BindReadOnlyPaths={conf}:{CONF_IN_CONTAINER}",
                 f"BindPaths={run}:{RUN_IN_CONTAINER}", f"User={PROXY_UID}",
                 f"Group={PROXY_UID}", "CapabilityBoundingSet=", "AmbientCapabilities=",
                 "NoNewPrivileges=yes", "PrivateDevices=yes", "Restart=always",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "UMask=0027",
                 "KillSignal=SIGUSR1", "WantedBy=multi-user.target"):
        assert line in lines, line
    for prefix in ("LimitNOFILE=", "MemoryMax=", "TasksMax="):
        assert any(x.startswith(prefix) for x in lines), prefix
    cfg = (conf / "haproxy.cfg").read_text()
    assert f"uid {PROXY_UID}" not in cfg  # it starts as its user: nothing to drop
    # HAProxy reads the front door's files where the container has them
    assert f"crt {CONF_IN_CONTAINER / 'site.pem'} " in cfg
    assert f"stats socket {RUN_IN_CONTAINER / 'admin.sock'} " in cfg
    wants = serving.units / "multi-user.target.wants"
    serving.engine().enable(1)  # enabling a release leaves the front door enabled
    assert os.readlink(wants / name) == f"../{name}"
    assert any(p.name.startswith(f"appliance-{site_id(serving.root)}-1-")
               for p in wants.iterdir())


def test_process_door_haproxy_runs_in_the_proxy_image_root_with_no_privilege(
        serving: ProcDoor):
    """The HAProxy serving is the image's, chrooted into its root, as uid 10002 with no
    capability and no-new-privileges, with the container's open-files limit."""
    child = serving.proxy().child_pid()
    assert child is not None
    assert os.path.samefile(f"/proc/{child}/root", serving.proxy_root())
    # the image's binary, not the host's package (even where the host has one)
    assert os.path.samefile(f"/proc/{child}/exe", serving.proxy_root() / "usr/sbin/haproxy")
    status = dict(x.split(":", 1) for x in
                  Path(f"/proc/{child}/status").read_text().splitlines() if ":" in x)
    assert status["Uid"].split() == [str(PROXY_UID)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(PROXY_UID)] * 4, status["Gid"]
    assert status["Groups"].split() == []
    assert status["NoNewPrivs"].strip() == "1"
    for caps in ("CapEff", "CapPrm", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    limits = Path(f"/proc/{child}/limits").read_text()
    nofile = next(x for x in limits.splitlines() if x.startswith("Max open files")).split()
    want = str(min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    assert nofile[3:5] == [want, want], nofile
    # its configuration and runtime API are bound in, read-only and read-write
    mounts = Path(f"/proc/{child}/mountinfo").read_text().splitlines()
    conf = next(x.split() for x in mounts if x.split()[4] == str(CONF_IN_CONTAINER))
    run = next(x.split() for x in mounts if x.split()[4] == str(RUN_IN_CONTAINER))
    assert "ro" in conf[5].split(",") and "rw" in run[5].split(","), (conf, run)
    assert (serving.root / "frontdoor-run" / "admin.sock").is_socket()


def test_process_door_comes_back_after_sigkill(serving: ProcDoor):
    proxy = serving.proxy()
    first = proxy.child_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: (c := proxy.child_pid()) is not None and c != first, 30,
             "the supervisor to start HAProxy again")
    wait_for(lambda: _serves(serving), 30, "the restarted HAProxy to serve")
    assert serving.get("/v2/models/mlp", token=False) == 401
    assert "restarting" in (serving.root / PROC_DIR / "haproxy.log").read_text()


def test_process_door_update_broken_update_rollback_fail_no_request(serving: ProcDoor):
    door = serving
    first = door.vendor.work / "door-1.tar"
    load = steady_load(door.root, door.vendor.port).start()
    try:
        r = door.install(door.vendor.build(2, seed=1, base=first))             # update
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        broken = door.install(door.vendor.build(3, seed=2, base=first, broken=True))
        assert broken.returncode == 7, broken.stdout[-2000:] + broken.stderr[-2000:]
        back = door.cli("rollback")                                            # to 1
        assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-2000:]
    finally:
        report = load.stop()
    assert report.sent > 100, report.summary()
    assert report.failures == [], report.summary()
    assert report.reconnects == 0, report.summary()
    status = json.loads(door.cli("status", "--json").stdout)
    assert status["current"] == 1 and all(status["ready"].values()), status
    assert door.engine().running() == {1}
    assert json.loads((door.root / "frontdoor" / "door.json").read_text())["sequence"] == 1


def test_process_door_from_the_host_package_without_haproxy_is_one_preflight_line(
        door: ProcDoor):
    """The host's package runs only when asked for; then a host without it is one line."""
    missing = door.vendor.work / "no-haproxy"
    r = door.install(door.vendor.build(1, seed=0), env={"APPLIANCE_PROXY_FROM": "host",
                                                        "APPLIANCE_HAPROXY": str(missing)})
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"front door: the front door needs HAProxy and {missing} is missing: install " \
           "Debian's 'haproxy' package (apt-get install haproxy)" in lines[0], lines
    assert not (door.root / "current").exists()
    assert not (door.root / PROC_DIR).exists()


def test_process_door_port_under_1024_is_one_preflight_line(door: ProcDoor):
    (door.vendor.work / "low").mkdir()
    low = Vendor(door.vendor.work / "low", door.vendor.images, 443)
    no_gpu(low.work)
    r = ProcDoor(low, door.root, door.units).install(low.build(1, seed=0))
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "port 443 is under 1024 and the front door's HAProxy runs unprivileged" \
           in lines[0], lines
    assert not (door.root / "current").exists()
    assert not (door.root / PROC_DIR).exists()


def test_process_door_canary_is_promoted_with_no_failed_request(serving: ProcDoor):
    door = serving
    load = steady_load(door.root, door.vendor.port).start()
    try:
        r = door.install(door.vendor.build(2, seed=1, base=door.vendor.work / "door-1.tar"),
                         "--canary", "30%:6s")
    finally:
        report = load.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "canary within bounds" in r.stdout, r.stdout[-2000:]
    assert json.loads(door.cli("status", "--json").stdout)["current"] == 2
    assert report.sent > 100 and report.failures == [], report.summary()


def test_process_door_fallback_answers_while_the_main_runtime_hangs(door: ProcDoor):
    r = door.install(door.vendor.build(1, seed=0, fallback=True))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    child = int((door.root / "releases" / "1" / "run" / "mlp.child").read_text())
    assert door.served_by() == "main"
    os.kill(child, signal.SIGSTOP)  # alive but answering nothing: its health check fails
    try:
        wait_for(lambda: door.served_by() == "fallback", 30, "the fallback to answer")
    finally:
        os.kill(child, signal.SIGCONT)
    wait_for(lambda: door.served_by() == "main", 30, "the main runtime to answer again")


def test_process_door_moves_from_the_host_package_to_the_proxy_image(door: ProcDoor):
    """A site whose front door ran the host's package (APPLIANCE_PROXY_FROM=host) serves
    from the proxy image after the next install, on the container paths."""
    haproxy = need("haproxy")
    r = door.install(door.vendor.build(1, seed=0), env={"APPLIANCE_PROXY_FROM": "host",
                                                        "APPLIANCE_HAPROXY": haproxy})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    first = door.proxy().child_pid()
    assert first is not None and os.path.samefile(f"/proc/{first}/exe", haproxy)
    record = door.root / "frontdoor" / "door.json"
    assert json.loads(record.read_text())["proxy_conf"] == str(door.root / "frontdoor")
    r = door.install(door.vendor.build(2, seed=1, base=door.vendor.work / "door-1.tar"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    child = door.proxy().child_pid()
    assert child is not None and child != first
    assert os.path.samefile(f"/proc/{child}/root", door.proxy_root())
    assert json.loads(record.read_text())["proxy_conf"] == str(CONF_IN_CONTAINER)
    assert door.get("/v2/models/mlp") == 200
    assert door.get("/v2/models/mlp", token=False) == 401
