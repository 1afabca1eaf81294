"""The headline of the process engine: the executable installs on the bare bullseye root
(no python3, no container engine) and the service runs from its image's own root.

The runtime's Python, numpy and onnxruntime come from the signed runtime image in
the bundle, unpacked into the site; the host gives only Linux, util-linux and root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import uuid
from pathlib import Path

import numpy as np
import pytest

from bundler.stick import EXECUTABLE_NAME, ROOT_NAME, write_stick
from tests.e2e.kit import infer
from tests.enginekit import wait_for
from tests.image.fixtures import runtime_image, runtime_image_tar  # noqa: F401
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
