"""`make demo` ends serving: endpoint, a curl line that works, and one real answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.kit import cli_env


def _demo(out: Path, *args: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([sys.executable, "-m", "appliance", "demo", "--out", str(out), *args],
                       env=env or cli_env(), capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return r.stdout


def _check_serving(stdout: str, engine: str) -> None:
    assert f"serving      release 1 with the {engine} engine" in stdout, stdout[-2000:]
    assert "matches the numpy reference of the model" in stdout
    curl = re.search(r"try it       (curl .*)", stdout)
    assert curl, stdout[-2000:]
    r = subprocess.run(curl.group(1), shell=True, capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 0 and '"outputs"' in r.stdout, r.stdout + r.stderr


def test_demo_with_the_process_engine_serves_and_answers(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    try:
        _check_serving(_demo(out, "--engine", "process"), "process")
    finally:
        assert "stopped the demo" in _demo(out, "--stop")


@pytest.mark.slow
@pytest.mark.engine
def test_demo_with_a_container_engine_serves_and_answers(tmp_path: Path, podman_url: str,
                                                         runtime_archive: Path) -> None:
    out = tmp_path / "demo"
    env = {**cli_env(), "DOCKER_HOST": podman_url}
    try:
        stdout = _demo(out, "--engine", "docker", env=env)
        _check_serving(stdout, "docker")
        assert "engine       docker: Podman" in stdout
        # the first install is behind the front door: HTTPS and a token, curl line included
        assert "behind the front door (HTTPS, token)" in stdout, stdout[-2000:]
        assert re.search(r"try it       curl -s --cacert \S+ -H \"Authorization: Bearer",
                         stdout), stdout[-2000:]
    finally:
        assert "stopped the demo" in _demo(out, "--stop", env=env)
