"""The runtime works with no network at all: a namespace that has only loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.offline import OFFLINE_VARS, go_offline
from tests.runtime.conftest import REPO, start_server

CLIENT = textwrap.dedent("""
    import socket, sys, time
    import numpy as np
    import tritonclient.http as triton
    from bundler.samples import mlp_reference

    try:  # no route out of this namespace
        socket.create_connection(("1.1.1.1", 80), timeout=2)
        sys.exit("outbound connection unexpectedly worked")
    except OSError:
        pass
    c = triton.InferenceServerClient(sys.argv[1])
    deadline = time.monotonic() + 60
    while True:
        try:
            if c.is_server_ready():
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            sys.exit("server never became ready")
        time.sleep(0.1)
    x = np.ones((2, 64), np.float32)
    inp = triton.InferInput("x", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    y = c.infer("mlp", [inp]).as_numpy("y")
    np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    print("offline-ok")
""")


def test_go_offline_sets_hub_variables(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    go_offline(tmp_path, env)
    assert all(env[k] == v for k, v in OFFLINE_VARS.items())
    assert env["TORCH_HOME"] == str(tmp_path / "torch")


@pytest.mark.slow
def test_inference_inside_a_loopback_only_namespace(onnx_models_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    ns = f"rt-offline-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        routes = subprocess.run(["ip", "netns", "exec", ns, "ip", "route", "show"],
                                capture_output=True, text=True, check=True).stdout
        assert "default" not in routes
        server = start_server(onnx_models_dir, tmp_path / "data", wait_ready=False,
                              prefix=["ip", "netns", "exec", ns])
        try:
            (tmp_path / "client.py").write_text(CLIENT)
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable,
                                str(tmp_path / "client.py"), server.hostport], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr + server.stderr()
            assert "offline-ok" in r.stdout
        finally:
            assert server.stop() == 0
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=True)
