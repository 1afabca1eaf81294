"""Clients keep one HTTPS address for the life of the site: installs, updates and rollbacks
through the front door, on podman, under a steady load whose every answer is checked.

Bundles carry the proxy image (`frontdoor_image`) beside the slim runtime image; the
installer is the headless CLI as a subprocess, exactly as a field engineer runs it.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.site.layout import runtime_port
from bundler.samples import make_mlp_onnx
from signing import PrivateKey, TrustRoot
from tests.e2e.kit import NO_GPU, cli_env
from tests.enginekit import need, wait_for
from tests.frontdoor.load import SteadyLoad

pytestmark = [pytest.mark.engine, pytest.mark.slow]
SIZES = (64, 32, 10)  # the load generator's body is x [1, 64]; answers are y [1, 10]


@pytest.fixture(scope="module")
def images() -> tuple[Path, Path]:
    """The slim runtime image and the proxy image (built once, then cached by inputs)."""
    need("podman")
    from images.build import build_runtime_image
    from images.proxy import build_proxy_image
    return build_runtime_image("slim").archive, build_proxy_image().archive


def _free_port() -> int:
    """A service port in 10000-19999 whose runtime ports (2xxxx, 3xxxx) are free too."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(10000, 20000)
        try:
            for q in (p, runtime_port(p, 0), runtime_port(p, 1)):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", q))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port found")


class Vendor:
    """Signs bundles of one ONNX service with a front door."""

    def __init__(self, work: Path, images: tuple[Path, Path], port: int) -> None:
        self.work, self.images, self.port = work, images, port
        self.key = PrivateKey.generate()
        self.root = work / "root.json"
        self.root.write_bytes(TrustRoot.create([self.key.public_key]).to_json())
        self.key_path = work / "vendor.key"
        self.key_path.write_bytes(self.key.to_pem())
        self.key_path.chmod(0o600)

    def build(self, sequence: int, seed: int, base: Path | None = None,
              broken: bool = False) -> Path:
        d = self.work / f"spec-{sequence}"
        make_mlp_onnx(d / "models" / "mlp", sizes=SIZES, seed=seed)
        if broken:  # signed and well formed, but the runtime cannot load it
            (d / "models" / "mlp" / "model.onnx").write_bytes(b"not an onnx model")
        spec: dict[str, Any] = {
            "name": "door", "version": f"1.{sequence}.0", "sequence": sequence,
            "expires_days": 30, "platform": "linux/amd64",
            "runtime_image": {"archive": str(self.images[0])},
            "frontdoor_image": {"archive": str(self.images[1])},
            "models": [{"name": "mlp", "version": "1", "path": "models/mlp",
                        "max_batch_size": 8, "max_queue_delay_ms": 1}],
            "services": [{"name": "mlp", "models": ["mlp"], "port": self.port,
                          "gpu": "preferred"}],
        }
        (d / "appliance.yaml").write_text(yaml.safe_dump(spec))
        out = self.work / f"door-{sequence}.tar"
        cmd = [sys.executable, "-m", "appliance", "bundle", "build", "-f",
               str(d / "appliance.yaml"), "-o", str(out), "--key", str(self.key_path)]
        if base is not None:
            cmd += ["--base", str(base)]
        r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return out


@pytest.fixture
def site(tmp_path: Path, podman_url: str, images: tuple[Path, Path]
         ) -> Iterator[tuple[Vendor, Path, str]]:
    vendor = Vendor(tmp_path, images, _free_port())
    root = tmp_path / "site"
    (tmp_path / "no-gpu.json").write_text(json.dumps(NO_GPU))
    yield vendor, root, podman_url
    from appliance.engines.docker import DockerEngine
    from appliance.site.layout import Site
    eng = DockerEngine(Site(root), base_url=podman_url)
    for seq in eng.running():
        eng.stop(seq)
    eng.stop_proxy()
    eng.close()


def _appliance(root: Path, engine_url: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *cmd, "--root", str(root),
                           "--engine", "docker", "--docker-host", engine_url],
                          env=cli_env(), capture_output=True, text=True, timeout=600,
                          check=False)


def _install(vendor: Vendor, root: Path, url: str, bundle: Path, *extra: str) -> str:
    r = _appliance(root, url, "install", str(bundle), "--yes", "--trust", str(vendor.root),
                   "--gpu-state", str(vendor.work / "no-gpu.json"), "--health-timeout", "180",
                   *extra)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return r.stdout


def _load(root: Path, port: int) -> SteadyLoad:
    door = json.loads((root / "frontdoor" / "door.json").read_text())
    ctx = ssl.create_default_context(cafile=door["ca_file"])
    token = (root / "token").read_text().strip()
    return SteadyLoad("127.0.0.1", port, "/v2/models/mlp/infer", rate=150, connections=8,
                      headers={"Authorization": f"Bearer {token}"}, ssl_context=ctx)


def test_an_update_a_broken_update_and_a_rollback_through_the_front_door_fail_no_request(
        site):
    vendor, root, url = site
    first = vendor.build(1, seed=0)
    out = _install(vendor, root, url, first)
    assert "https://" in out and f":{vendor.port}" in out and "shown this once" in out
    status = json.loads(_appliance(root, url, "status", "--json").stdout)
    assert status["urls"]["mlp"].endswith(f":{vendor.port}") and status["fingerprint"]

    load = _load(root, vendor.port).start()
    try:
        _install(vendor, root, url, vendor.build(2, seed=1, base=first))      # (a) update
        broken = _appliance(root, url, "install", str(vendor.build(3, seed=2, base=first,
                                                                   broken=True)),
                            "--yes", "--gpu-state", str(vendor.work / "no-gpu.json"),
                            "--health-timeout", "60")                        # (b) broken
        assert broken.returncode == 7, broken.stdout[-2000:] + broken.stderr[-2000:]
        r = _appliance(root, url, "rollback")                                 # (c) rollback
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    finally:
        report = load.stop()
    assert report.sent > 100, report.summary()
    assert report.failures == [], report.summary()
    assert report.reconnects == 0, report.summary()
    assert json.loads(_appliance(root, url, "status", "--json").stdout)["current"] == 1


def test_the_front_door_needs_the_token_and_speaks_only_https(site):
    import http.client
    vendor, root, url = site
    _install(vendor, root, url, vendor.build(1, seed=0))
    door = json.loads((root / "frontdoor" / "door.json").read_text())
    ctx = ssl.create_default_context(cafile=door["ca_file"])
    conn = http.client.HTTPSConnection("127.0.0.1", vendor.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/v2/models/mlp")
        r = conn.getresponse()
        assert r.status == 401 and "error" in json.loads(r.read())
        conn.request("GET", "/v2/health/ready")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    finally:
        conn.close()
    plain = http.client.HTTPConnection("127.0.0.1", vendor.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/v2/health/ready")
            plain.getresponse().read()
    finally:
        plain.close()
    # the runtime itself listens on loopback only
    record = json.loads((root / "releases" / "1" / "release.json").read_text())
    assert all(u.startswith("http://127.0.0.1:") for u in record["endpoints"].values())


def test_a_good_canary_is_promoted_and_a_failing_one_rolled_back_with_no_failed_request(site):
    vendor, root, url = site
    first = vendor.build(1, seed=0)
    _install(vendor, root, url, first)
    load = _load(root, vendor.port).start()
    try:
        out = _install(vendor, root, url, vendor.build(2, seed=1, base=first), "--canary",
                       "30%:6s")
        assert "canary within bounds" in out, out[-2000:]
        assert json.loads(_appliance(root, url, "status", "--json").stdout)["current"] == 2

        # release 3 is held to a bound no canary of 15 s can meet (a million requests):
        # it must be rolled back, its share drained, and release 2 keep serving
        third = vendor.build(3, seed=2, base=first)
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "install", str(third), "--yes", "--root",
             str(root), "--engine", "docker", "--docker-host", url, "--gpu-state",
             str(vendor.work / "no-gpu.json"), "--canary", "30%:15s",
             "--canary-bounds", "min=1000000"],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        text, _ = proc.communicate(timeout=600)
    finally:
        report = load.stop()
    assert proc.returncode == 7, text[-3000:]
    assert "the canary was rolled back" in text and "too little traffic" in text, text[-2000:]
    status = json.loads(_appliance(root, url, "status", "--json").stdout)
    assert status["current"] == 2 and all(status["ready"].values())
    assert report.sent > 100 and report.failures == [], report.summary()


def test_an_installer_killed_mid_canary_leaves_the_old_release_all_the_traffic(site):
    import os
    import signal

    from appliance.frontdoor import config
    from appliance.frontdoor.runtime_api import ProxyApi
    vendor, root, url = site
    first = vendor.build(1, seed=0)
    _install(vendor, root, url, first)
    api = ProxyApi(root / "frontdoor-run" / "admin.sock")
    backend = config.backend_name("mlp")
    serving = next(s for s, st in api.servers(backend).items() if st.weight > 0 and st.up)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "install", str(vendor.build(2, seed=1, base=first)),
         "--yes", "--root", str(root), "--engine", "docker", "--docker-host", url,
         "--gpu-state", str(vendor.work / "no-gpu.json"), "--canary", "30%:10m"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = _load(root, vendor.port).start()
    try:
        canary = root / "frontdoor" / "canary.json"
        wait_for(lambda: proc.poll() is None and canary.exists() and any(
            st.weight > 0 and st.up for s, st in api.servers(backend).items() if s != serving),
            timeout=300, what="the canary to take its share")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        wait_for(lambda: not canary.exists(), timeout=30, what="the guard to end the canary")
        stats = api.servers(backend)
        assert stats[serving].weight > 0 and stats[serving].up
        assert all(st.weight == 0 or not st.status.startswith("UP")
                   for s, st in stats.items() if s != serving), stats
    finally:
        report = load.stop()
        if proc.poll() is None:
            proc.kill()
    assert report.failures == [], report.summary()
    assert json.loads(_appliance(root, url, "status", "--json").stdout)["current"] == 1
