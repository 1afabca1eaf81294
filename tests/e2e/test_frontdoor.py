"""Clients keep one HTTPS address for the life of the site: installs, updates and rollbacks
through the front door, on podman, under a steady load whose every answer is checked.

Bundles carry the proxy image (`frontdoor_image`) beside the slim runtime image; the
installer is the headless CLI as a subprocess, exactly as a field engineer runs it.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.doorkit import Vendor, appliance, free_port, install, no_gpu, steady_load
from tests.e2e.kit import cli_env
from tests.enginekit import need, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]
@pytest.fixture(scope="module")
def images() -> tuple[Path, Path]:
    """The slim runtime image and the proxy image (built once, then cached by inputs)."""
    need("podman")
    from images.build import build_runtime_image
    from images.proxy import build_proxy_image
    return build_runtime_image("slim").archive, build_proxy_image().archive


@pytest.fixture
def site(tmp_path: Path, podman_url: str, images: tuple[Path, Path]
         ) -> Iterator[tuple[Vendor, Path, str]]:
    vendor = Vendor(tmp_path, images, free_port())
    root = tmp_path / "site"
    no_gpu(tmp_path)
    yield vendor, root, podman_url
    from appliance.engines.docker import DockerEngine
    from appliance.site.layout import Site
    eng = DockerEngine(Site(root), base_url=podman_url)
    for seq in eng.running():
        eng.stop(seq)
    eng.stop_proxy()
    eng.close()


def test_an_update_a_broken_update_and_a_rollback_through_the_front_door_fail_no_request(
        site):
    vendor, root, url = site
    first = vendor.build(1, seed=0)
    out = install(vendor, root, url, first)
    assert "https://" in out and f":{vendor.port}" in out and "shown this once" in out
    status = json.loads(appliance(root, url, "status", "--json").stdout)
    assert status["urls"]["mlp"].endswith(f":{vendor.port}") and status["fingerprint"]

    load = steady_load(root, vendor.port).start()
    try:
        install(vendor, root, url, vendor.build(2, seed=1, base=first))      # (a) update
        broken = appliance(root, url, "install", str(vendor.build(3, seed=2, base=first,
                                                                   broken=True)),
                            "--yes", "--gpu-state", str(vendor.work / "no-gpu.json"),
                            "--health-timeout", "60")                        # (b) broken
        assert broken.returncode == 7, broken.stdout[-2000:] + broken.stderr[-2000:]
        r = appliance(root, url, "rollback")                                 # (c) rollback
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    finally:
        report = load.stop()
    assert report.sent > 100, report.summary()
    assert report.failures == [], report.summary()
    assert report.reconnects == 0, report.summary()
    assert json.loads(appliance(root, url, "status", "--json").stdout)["current"] == 1


def test_the_front_door_needs_the_token_and_speaks_only_https(site):
    import http.client
    vendor, root, url = site
    install(vendor, root, url, vendor.build(1, seed=0))
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
    # the runtime itself listens on loopback only: no LAN address reaches it
    record = json.loads((root / "releases" / "1" / "release.json").read_text())
    port = int(record["endpoints"]["mlp"].rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split()
    assert listening and all(f.endswith(f":{port}") for f in listening[3::5]), listening
    assert {f.rsplit(":", 1)[0] for f in listening[3::5]} == {"127.0.0.1"}, listening
    runtime_asks_for_the_token(root, url, port)


def runtime_asks_for_the_token(root: Path, url: str, port: int) -> None:
    """Release 1's runtime asks for the site token itself (on loopback, around the door),
    read from a read-only mount, never from its environment."""
    import http.client

    from appliance.engines.docker import DockerEngine
    from appliance.site.layout import Site
    token = (root / "token").read_text().strip()
    direct = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for headers, want in (({}, 401), ({"Authorization": f"Bearer {token}"}, 200)):
            direct.request("GET", "/v2/models/mlp", headers=headers)
            r = direct.getresponse()
            r.read()
            assert r.status == want
    finally:
        direct.close()
    eng = DockerEngine(Site(root), base_url=url)
    try:
        attrs = eng.client.containers.get(eng.container_name(1, "mlp")).attrs
    finally:
        eng.close()
    [mount] = [m for m in attrs["Mounts"] if m["Destination"] == "/run/appliance-token"]
    assert mount["Source"] == str(root / "runtime-token") and mount["RW"] is False
    env = attrs["Config"]["Env"]
    assert "RUNTIME_TOKEN_FILE=/run/appliance-token/tokens" in env
    assert not any(token in e for e in env)


def test_on_docker_20_10_the_runtime_reads_the_token_from_a_read_only_mount(
        tmp_path: Path, dockerd_url: str, images: tuple[Path, Path]) -> None:
    from appliance.engines.docker import DockerEngine
    from appliance.site.layout import Site
    vendor = Vendor(tmp_path, images, free_port())
    root = tmp_path / "site"
    no_gpu(tmp_path)
    try:
        install(vendor, root, dockerd_url, vendor.build(1, seed=0))
        record = json.loads((root / "releases" / "1" / "release.json").read_text())
        runtime_asks_for_the_token(root, dockerd_url,
                                   int(record["endpoints"]["mlp"].rsplit(":", 1)[1]))
    finally:
        eng = DockerEngine(Site(root), base_url=dockerd_url)
        for seq in eng.running():
            eng.stop(seq)
        eng.stop_proxy()
        eng.close()


def test_a_good_canary_is_promoted_and_a_failing_one_rolled_back_with_no_failed_request(site):
    vendor, root, url = site
    first = vendor.build(1, seed=0)
    install(vendor, root, url, first)
    load = steady_load(root, vendor.port).start()
    try:
        out = install(vendor, root, url, vendor.build(2, seed=1, base=first), "--canary",
                       "30%:6s")
        assert "canary within bounds" in out, out[-2000:]
        assert json.loads(appliance(root, url, "status", "--json").stdout)["current"] == 2

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
    status = json.loads(appliance(root, url, "status", "--json").stdout)
    assert status["current"] == 2 and all(status["ready"].values())
    assert report.sent > 100 and report.failures == [], report.summary()


def test_an_installer_killed_mid_canary_leaves_the_old_release_all_the_traffic(site):
    import os
    import signal

    from appliance.frontdoor import config
    from appliance.frontdoor.runtime_api import ProxyApi
    vendor, root, url = site
    first = vendor.build(1, seed=0)
    install(vendor, root, url, first)
    api = ProxyApi(root / "frontdoor-run" / "admin.sock")
    backend = config.backend_name("mlp")
    serving = next(s for s, st in api.servers(backend).items() if st.weight > 0 and st.up)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "install", str(vendor.build(2, seed=1, base=first)),
         "--yes", "--root", str(root), "--engine", "docker", "--docker-host", url,
         "--gpu-state", str(vendor.work / "no-gpu.json"), "--canary", "30%:10m"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = steady_load(root, vendor.port).start()
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
    assert json.loads(appliance(root, url, "status", "--json").stdout)["current"] == 1


def test_while_the_main_runtime_is_down_its_fallback_answers_marked(site):
    import os
    import signal

    from appliance.engines.docker import DockerEngine
    from appliance.frontdoor.runtime_api import ProxyApi
    from appliance.site.layout import Site
    vendor, root, url = site
    first = vendor.build(1, seed=0, fallback=True)
    out = install(vendor, root, url, first)
    assert "falls back to mlp-cpu" in out, out[-2000:]
    eng = DockerEngine(Site(root), base_url=url)
    load = steady_load(root, vendor.port).start()
    try:
        wait_for(lambda: load.served("main") > 50, 60, "the main runtime to answer")
        pid = eng.client.containers.get(eng.container_name(1, "mlp")).attrs["State"]["Pid"]
        os.kill(pid, signal.SIGKILL)  # a crash: the engine's restart policy brings it back
        wait_for(lambda: load.served("fallback") > 50, 60, "the fallback to answer")
        back = load.served("main")
        wait_for(lambda: load.served("main") > back + 50, 180,
                 "the main runtime to take its traffic back")
        failed = len(load.report.failures)
        # an update moves the fallback to the new release's too, failing nothing
        install(vendor, root, url, vendor.build(2, seed=1, base=first, fallback=True))
        assert len(load.report.failures) == failed, load.report.summary()
        api = ProxyApi(root / "frontdoor-run" / "admin.sock")
        record = json.loads((root / "releases" / "2" / "release.json").read_text())
        assert api.servers("fb_mlp")["fallback"].address == \
            record["endpoints"]["mlp-cpu"].removeprefix("http://")
    finally:
        report = load.stop()
        eng.close()
    # Only a request inside the main runtime at the instant it was killed can fail:
    # HAProxy 2.6 does not resend one whose connection was reset (docs/frontdoor.md).
    assert len(report.failures) <= 8, report.summary()
    assert report.served_by["fallback"] > 50 and report.served_by["main"] > 100
    status = json.loads(appliance(root, url, "status", "--json").stdout)
    assert status["fallback_answers"]["mlp"] >= report.served_by["fallback"]
