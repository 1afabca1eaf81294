"""The headline of the process engine: the executable installs on the bare bullseye root
(no python3, no haproxy, no container engine) and the service runs from its image's own
root, behind the front door's HAProxy from the proxy image's.

The runtime's Python, numpy and onnxruntime come from the signed runtime image in
the bundle, HAProxy from its signed proxy image, both unpacked into the site; the host
gives only Linux, util-linux and root.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundler.stick import EXECUTABLE_NAME, ROOT_NAME, write_stick
from tests.e2e.doorkit import free_port
from tests.e2e.kit import infer
from tests.enginekit import wait_for
from tests.image.fixtures import proxy_image_tar, runtime_image, runtime_image_tar  # noqa: F401
from tests.site.installkit import ready
from tests.site.releasekit import free_port_pair
from tests.stick.kit import in_bare_root, make_vendor
from tests.stick.test_tui_install import mlp_bundle

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.stick, pytest.mark.slow]


def check_answers(url: str) -> None:
    from bundler.samples import mlp_reference
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    np.testing.assert_allclose(infer(url, "mlp", x), mlp_reference(x), rtol=1e-4, atol=1e-5)


def stop_supervisor(pidfile: Path) -> None:
    """SIGTERM the supervisor the executable left (its pidfile holds a host pid)."""
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(
        f"/proc/{pid}/status").read_text(), 30, "the supervisor to stop")


def test_executable_installs_with_the_process_engine_on_the_bare_root_and_survives_kill(
        bare_root: Path, installer_executable: Path, runtime_image_tar: Path,  # noqa: F811
        tmp_path: Path) -> None:
    assert not (bare_root / "usr/bin/python3").exists()
    v = make_vendor(tmp_path)
    port = free_port_pair()
    bundle = mlp_bundle(tmp_path, v, f"bareproc{secrets.token_hex(3)}", port, runtime_image_tar)
    inside = f"/tmp/stick-{uuid.uuid4().hex[:8]}"
    host = bare_root / inside.lstrip("/")
    write_stick(host, bundle=bundle, trust_root=v.root_path, executable=installer_executable,
                keys=[v.key])
    site = f"{inside}/site"
    pidfile = host / "site/releases/1/run/mlp.pid"
    try:
        r = in_bare_root(
            bare_root, [f"./{EXECUTABLE_NAME}", "install", bundle.name, "--trust", ROOT_NAME,
                        "--yes", "--root", site, "--engine", "process",
                        "--unit-dir", f"{inside}/units"],
            cwd=inside, timeout=600, pid_namespace=False)
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
        status = in_bare_root(bare_root, [f"./{EXECUTABLE_NAME}", "status", "--json",
                                          "--root", site], cwd=inside)
        assert status.returncode == 0, status.stderr
        url = json.loads(status.stdout)["endpoints"]["mlp"]
        check_answers(url)

        child = pidfile.with_suffix(".child")
        pid = int(child.read_text())
        uid_line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if x.startswith("Uid:"))
        assert uid_line.split()[1:] == ["10001"] * 4
        [root] = (host / "site" / "rootfs").iterdir()
        assert os.path.samefile(f"/proc/{pid}/root", root)

        os.kill(pid, signal.SIGKILL)  # the service dies; its supervisor brings it back
        wait_for(lambda: child.exists() and int(child.read_text()) != pid, 30, "a restart")
        wait_for(lambda: ready(url), 120, "the restarted runtime to answer ready")
        check_answers(url)
    finally:
        stop_supervisor(pidfile)
        shutil.rmtree(host, ignore_errors=True)


def https_status(host_root: Path, site: str, port: int, path: str, token: str | None,
                 body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """GET (or POST `body` to) `path` on the front door's stable port over TLS, trusting
    the site's CA as the installer wrote it in the root, with the token when given."""
    door = json.loads((host_root / site.lstrip("/") / "frontdoor/door.json").read_text())
    ctx = ssl.create_default_context(cafile=str(host_root / door["ca_file"].lstrip("/")))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if body is None:
            conn.request("GET", path, headers=headers)
        else:
            conn.request("POST", path, body=json.dumps(body),
                         headers={**headers, "Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data.startswith(b"{") else {})
    finally:
        conn.close()


def test_executable_serves_the_front_door_from_the_proxy_image_on_the_bare_root(
        bare_root: Path, installer_executable: Path, runtime_image_tar: Path,  # noqa: F811
        proxy_image_tar: Path, tmp_path: Path) -> None:  # noqa: F811
    """A bundle with a front door installs on a root with no haproxy, no python3 and no
    container engine, with no --engine: HAProxy runs from the bundle's proxy image and
    answers over HTTPS, with the token, at the service's stable port."""
    for absent in ("usr/bin/python3", "usr/sbin/haproxy"):
        assert not (bare_root / absent).exists(), absent
    v = make_vendor(tmp_path)
    port = free_port()
    bundle = mlp_bundle(tmp_path, v, f"baredoor{secrets.token_hex(3)}", port, runtime_image_tar,
                        proxy_image_tar)
    inside = f"/tmp/stick-{uuid.uuid4().hex[:8]}"
    host = bare_root / inside.lstrip("/")
    write_stick(host, bundle=bundle, trust_root=v.root_path, executable=installer_executable,
                keys=[v.key])
    site = f"{inside}/site"
    pidfiles = [host / "site/releases/1/run/mlp.pid", host / "site/frontdoor-proc/haproxy.pid"]
    try:
        r = in_bare_root(
            bare_root, [f"./{EXECUTABLE_NAME}", "install", bundle.name, "--trust", ROOT_NAME,
                        "--yes", "--root", site, "--unit-dir", f"{inside}/units"],
            cwd=inside, timeout=600, pid_namespace=False)
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
        # no --engine: a server with no container engine at all gets the process engine
        assert "engine: process supervisor" in r.stdout, r.stdout[-1500:]
        assert "https://" in r.stdout and f":{port}" in r.stdout, r.stdout[-1500:]
        token = (host / "site/token").read_text().strip()
        assert https_status(bare_root, site, port, "/v2/models/mlp", token)[0] == 200
        assert https_status(bare_root, site, port, "/v2/models/mlp", None)[0] == 401
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
        status, answer = https_status(bare_root, site, port, "/v2/models/mlp/infer", token, {
            "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                        "data": x.ravel().tolist()}]})
        assert status == 200, answer
        from bundler.samples import mlp_reference
        np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]).reshape(1, 10),
                                   mlp_reference(x), rtol=1e-4, atol=1e-5)

        # HAProxy is the proxy image's, confined as its unprivileged user
        pid = int(pidfiles[1].with_suffix(".child").read_text())
        roots = [p for p in (host / "site/rootfs").iterdir() if (p / "usr/sbin/haproxy").exists()]
        assert len(roots) == 1 and os.path.samefile(f"/proc/{pid}/root", roots[0])
        status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        uid_line = next(x for x in status_lines if x.startswith("Uid:"))
        assert uid_line.split()[1:] == ["10002"] * 4
        assert "NoNewPrivs:\t1" in status_lines
    finally:
        for pidfile in pidfiles:
            stop_supervisor(pidfile)
        shutil.rmtree(host, ignore_errors=True)
