"""`make gpu-check DEVICE=cpu`: the GPU check's dry run, every step on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.enginekit import need

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_passes_every_step_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    make = need("make")
    out = tmp_path / "table.md"
    r = subprocess.run(
        [make, "-s", "gpu-check", "DEVICE=cpu", f"PYTHON={sys.executable}",
         f"GPU_WHEELS={tmp_path / 'no-wheels'}",
         f"GPU_CHECK_ARGS=--seconds 2 --soak 4 --out {out}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = out.read_text()
    for step in ("NVML probe", "placement", "install (process engine)", "answers vs CPU",
                 "throughput", "memory, batch 1..32", "whole check"):
        assert f"| {step} |" in table
    assert "FAIL" not in table
    assert "cnn: CPU" in table  # placed by the installer, not assumed
    assert "concurrency 32" in table


def test_gpu_check_on_a_machine_without_a_gpu_fails_naming_why(tmp_path):
    pytest.importorskip("torch")
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cuda",
         "--out", str(tmp_path / "t.md")], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    if "FAIL" not in r.stdout and r.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert r.returncode == 1
    assert "FAIL NVML probe" in r.stdout


def test_a_wheels_directory_over_its_64_mib_budget_is_refused_in_one_line(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("numpy\n")
    with (wheels / "huge-1.0-py3-none-any.whl").open("wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: its size is what counts
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu",
                        "--wheels", str(wheels), "--out", str(tmp_path / "t.md")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and not (tmp_path / "t.md").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "65.0 MiB, over the 64 MiB budget" in lines[0], r.stderr
