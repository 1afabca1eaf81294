"""The runtime works with no network at all: a namespace that has only loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.offline import OFFLINE_VARS, go_offline
from tests.runtime.conftest import REPO, start_server


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
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                                "tests.offline_client", server.hostport], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr + server.stderr()
            assert "offline-ok" in r.stdout
        finally:
            assert server.stop() == 0
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=True)
