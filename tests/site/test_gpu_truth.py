"""The install tells the truth about devices, over the process engine and the real runtime.

The GPU probe is the recorded seam (a server with four L4s); the runtime below it asks
NVML for real and finds no GPU on this machine (or, on a GPU machine, a CPU-only
onnxruntime). A `gpu: required` service then fails the health step with one line naming
the likely cause, and the previous release keeps serving; `gpu: preferred` installs and
says it runs on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.site.bundlekit import Vendor, vendor
from tests.site.installkit import REPO, ready
from tests.site.releasekit import free_port_pair

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

FOUR_L4 = Path(__file__).parent / "gpu_states" / "four_l4.json"
NO_GPU = Path(__file__).parent / "gpu_states" / "none.json"
RUNTIME = f"{sys.executable} -m runtime --models {{models}} --port {{port}} --data-dir {{data}}"


def onnx_bundle(tmp: Path, v: Vendor, sequence: int, port: int, gpu: str) -> Path:
    from bundler.build import build_bundle
    from bundler.samples import make_mlp_onnx, mlp_reference
    from bundler.spec import load_spec
    work = tmp / f"spec-{sequence}"
    make_mlp_onnx(work / "models" / "mlp")
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    spec = {"name": "demo", "version": f"1.{sequence}.0", "sequence": sequence,
            "expires_days": 30, "platform": "linux/amd64",
            "models": [{"name": "mlp", "version": "1", "path": "models/mlp",
                        "gpu_memory_mib": 100,
                        "samples": [{"inputs": {"x": {"datatype": "FP32", "shape": [1, 64],
                                                      "data": x.ravel().tolist()}},
                                     "outputs": {"y": {"datatype": "FP32", "shape": [1, 10],
                                                       "data": mlp_reference(x).ravel()
                                                       .tolist()}},
                                     "tolerance": 1e-4}]}],
            "services": [{"name": "mlp", "models": ["mlp"], "port": port, "gpu": gpu}]}
    (work / "appliance.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / f"onnx-{sequence}.tar"
    build_bundle(load_spec(work / "appliance.yaml"), out, [v.key])
    return out


def test_gpu_required_without_cuda_fails_health_in_one_line_and_preferred_says_cpu(
        tmp_path: Path) -> None:
    v = vendor(tmp_path)
    port = free_port_pair()
    root, units = tmp_path / "site", tmp_path / "units"
    env = {**os.environ, "PYTHONPATH": str(REPO), "APPLIANCE_RUNTIME_COMMAND": RUNTIME}
    where = ["--root", str(root), "--engine", "process", "--unit-dir", str(units)]

    def appliance(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)

    def install(bundle: Path, gpus: Path) -> subprocess.CompletedProcess[str]:
        return appliance("install", str(bundle), "--yes", "--trust", str(v.root_path),
                         "--gpu-state", str(gpus), "--health-timeout", "60", *where)

    try:
        first = install(onnx_bundle(tmp_path, v, 1, port, "preferred"), NO_GPU)
        assert first.returncode == 0, first.stderr
        assert "release 1 is serving" in first.stdout
        assert "mlp runs on the CPU (gpu: preferred): no GPU on this server" in first.stdout
        assert "mlp: model mlp on cpu" in first.stdout

        second = install(onnx_bundle(tmp_path, v, 2, port, "required"), FOUR_L4)
        assert second.returncode != 0
        lines = [x for x in second.stderr.splitlines() if x.strip()]
        assert len(lines) == 1, second.stderr
        line = lines[0]
        assert line.startswith("error: release 2 failed at health: service 'mlp' requires a "
                               "GPU but model 'mlp' runs on the CPU: "), line
        assert line.endswith("release 1 keeps serving"), line
        # the likely cause from what the runtime saw: no NVML here, or a CPU-only image
        assert ("the runtime sees no GPU (NVML unavailable" in line
                or "its runtime image is the CPU variant" in line), line

        st = appliance("status", "--json", *where)
        doc = json.loads(st.stdout)
        assert st.returncode == 0 and doc["current"] == 1 and doc["ready"] == {"mlp": True}
        assert doc["devices"]["mlp"] == [{"model": "mlp", "device": "cpu",
                                          "cause": "no-gpu-visible",
                                          "detail": doc["devices"]["mlp"][0]["detail"]}]
        assert ready(doc["endpoints"]["mlp"])
        text = appliance("status", *where).stdout
        assert "model mlp on cpu (no GPU visible: " in text, text

        # preferred, placed on a GPU the runtime cannot use: serves, and says why on CPU
        third = install(onnx_bundle(tmp_path, v, 3, port, "preferred"), FOUR_L4)
        assert third.returncode == 0, third.stderr
        assert "release 3 is serving" in third.stdout
        assert ("mlp runs on the CPU (gpu: preferred): the runtime sees no GPU" in third.stdout
                or "mlp runs on the CPU (gpu: preferred): its runtime image is the CPU "
                   "variant" in third.stdout), third.stdout
    finally:
        from appliance.engines.process import ProcessEngine
        from appliance.site.layout import Site
        site = Site(root)
        eng = ProcessEngine(site, unit_dir=units, use_systemd=False)
        for rel in site.releases():
            eng.stop(rel.sequence)
