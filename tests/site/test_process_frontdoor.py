"""The front door on the process engine: the host's HAProxy, supervised, in front of real
runtimes run as local processes, with real TLS and the site token. No container engine:
bundles carry stand-in images (the process engine runs the runtime from this
interpreter and HAProxy from the haproxy package); the installer is the headless CLI as
a subprocess, as a field engineer runs it."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.engines.process import ProcessEngine
from appliance.engines.procproxy import PROC_DIR, ProcessProxy
from appliance.frontdoor.container import PROXY_UID
from appliance.site.door import lan_address
from appliance.site.doorops import rotate_token
from appliance.site.engine import site_id
from appliance.site.layout import Site, runtime_port
from tests.bundle.runtimes import docker_archive, proxy_docker_archive
from tests.e2e.doorkit import Vendor, free_port, no_gpu, steady_load
from tests.e2e.kit import cli_env
from tests.enginekit import need, wait_for

pytestmark = pytest.mark.slow


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
                              env={**cli_env(), **(env or {})}, capture_output=True, text=True,
                              timeout=600, check=False)

    def install(self, bundle: Path, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        return self.cli("install", str(bundle), "--yes", "--trust", str(self.vendor.root),
                        "--gpu-state", str(self.vendor.work / "no-gpu.json"),
                        "--health-timeout", "60", *extra, env=env)

    def engine(self) -> ProcessEngine:
        return ProcessEngine(Site(self.root), unit_dir=self.units, use_systemd=False)

    def proxy(self) -> ProcessProxy:
        return ProcessProxy(Site(self.root), site_id(self.root), self.units, False,
                            sys.executable)

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


def _serves(door: ProcDoor) -> bool:
    try:
        return door.get("/v2/models/mlp") == 200
    except OSError:
        return False


@pytest.fixture
def door(tmp_path: Path) -> Iterator[ProcDoor]:
    need("haproxy")
    images = (docker_archive(tmp_path / "runtime.tar"),
              proxy_docker_archive(tmp_path / "proxy.tar"))
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
    new = rotate_token(Site(serving.root), finish=False)  # HAProxy names its map by host path
    assert serving.get("/v2/models/mlp", token=new) == 200
    assert serving.get("/v2/models/mlp", token=old) == 200
    rotate_token(Site(serving.root), finish=True)
    assert serving.get("/v2/models/mlp", token=old) == 401
    assert serving.get("/v2/models/mlp", token=new) == 200


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
    conf = serving.root / "frontdoor" / "haproxy.cfg"
    assert f"ExecStart=/usr/sbin/haproxy -db -f {conf}" in text
    for line in ("Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "UMask=0027", "LimitNOFILE=",
                 "MemoryMax=", "TasksMax=", f"ReadWritePaths={serving.root / 'frontdoor-run'}",
                 "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_NET_BIND_SERVICE ",
                 "WantedBy=multi-user.target"):
        assert line in text, line
    cfg = conf.read_text()
    assert f"uid {PROXY_UID}" in cfg  # root only to read and bind
    # HAProxy reads the front door's files where the host has them (no container mounts)
    assert f"crt {serving.root / 'frontdoor' / 'site.pem'} " in cfg
    assert f"stats socket {serving.root / 'frontdoor-run' / 'admin.sock'} " in cfg
    wants = serving.units / "multi-user.target.wants"
    serving.engine().enable(1)  # enabling a release leaves the front door enabled
    assert os.readlink(wants / name) == f"../{name}"
    assert any(p.name.startswith(f"appliance-{site_id(serving.root)}-1-")
               for p in wants.iterdir())


def test_process_door_starts_with_only_the_unit_capabilities(serving: ProcDoor):
    """HAProxy as the unit starts it (systemd's CapabilityBoundingSet, emulated with
    util-linux's setpriv): it binds, serves and drops to its uid with no more."""
    setpriv = need("setpriv")
    unit = (serving.units / f"appliance-{site_id(serving.root)}-frontdoor.service").read_text()
    caps = next(x for x in unit.splitlines() if x.startswith("CapabilityBoundingSet="))
    bounding = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in caps.split("=")[1].split())
    serving.engine().stop_proxy()
    cmd = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart="))[10:])
    proc = subprocess.Popen([setpriv, f"--bounding-set=-all,{bounding}", *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is None and _serves(serving), 30,
                 "HAProxy under the unit's capabilities to serve")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status  # none left after the drop
    finally:
        proc.kill()
        out = proc.communicate(timeout=30)[0]
    assert b"ALERT" not in out, out[-1000:]


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


def test_process_door_without_haproxy_is_one_preflight_line(door: ProcDoor):
    missing = door.vendor.work / "no-haproxy"
    r = door.install(door.vendor.build(1, seed=0), env={"APPLIANCE_HAPROXY": str(missing)})
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"front door: the front door needs HAProxy and {missing} is missing: install " \
           "Debian's 'haproxy' package (apt-get install haproxy)" in lines[0], lines
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
    record = json.loads((door.root / "frontdoor" / "door.json").read_text())
    ctx = ssl.create_default_context(cafile=record["ca_file"])

    def served_by() -> str:
        conn = http.client.HTTPSConnection("127.0.0.1", door.vendor.port, context=ctx,
                                           timeout=10)
        try:
            conn.request("GET", "/v2/models/mlp",
                         headers={"Authorization": f"Bearer {door.token()}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            return resp.getheader("X-Appliance-Served-By", "main")
        finally:
            conn.close()

    assert served_by() == "main"
    os.kill(child, signal.SIGSTOP)  # alive but answering nothing: its health check fails
    try:
        wait_for(lambda: served_by() == "fallback", 30, "the fallback to answer")
    finally:
        os.kill(child, signal.SIGCONT)
    wait_for(lambda: served_by() == "main", 30, "the main runtime to answer again")
