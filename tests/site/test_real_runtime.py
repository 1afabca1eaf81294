"""The process engine over the real runtime (`python -m runtime`) and a real ONNX model:
the signed samples are answered within tolerance, and a wrong expectation rolls back."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import yaml

from appliance.engines.process import ProcessEngine
from appliance.errors import AcceptanceError
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan
from tests.site.bundlekit import vendor
from tests.site.installkit import REPO, ready
from tests.site.releasekit import free_port_pair

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def onnx_bundle(tmp, v, sequence: int, port: int, shift: float = 0.0, runtime_archive=None):
    from bundler.build import build_bundle
    from bundler.samples import make_mlp_onnx, mlp_reference
    from bundler.spec import load_spec
    work = tmp / f"spec-{sequence}"
    make_mlp_onnx(work / "models" / "mlp")
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    y = mlp_reference(x) + shift
    spec = {"name": "demo", "version": f"1.{sequence}.0", "sequence": sequence,
            "expires_days": 30, "platform": "linux/amd64",
            "models": [{"name": "mlp", "version": "1", "path": "models/mlp",
                        "samples": [{"inputs": {"x": {"datatype": "FP32", "shape": [1, 64],
                                                      "data": x.ravel().tolist()}},
                                     "outputs": {"y": {"datatype": "FP32", "shape": [1, 10],
                                                       "data": y.ravel().tolist()}},
                                     "tolerance": 1e-4}]}],
            "services": [{"name": "mlp", "models": ["mlp"], "port": port}]}
    if runtime_archive is not None:
        spec["runtime_image"] = {"archive": str(runtime_archive)}
    (work / "appliance.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / f"onnx-{sequence}.tar"
    build_bundle(load_spec(work / "appliance.yaml"), out, [v.key])
    return out


def test_real_runtime_passes_the_gate_and_a_wrong_sample_rolls_back(tmp_path):
    v = vendor(tmp_path)
    port = free_port_pair()
    site = Site(tmp_path / "site")
    eng = ProcessEngine(site, env={"PYTHONPATH": str(REPO)}, unit_dir=tmp_path / "units",
                        use_systemd=False, python=sys.executable, runtime_from="host")

    def install(bundle):
        return InstallPlan(InstallOptions(
            bundle=bundle, site=site, engine=eng, trust=v.root_path, health_timeout_s=60,
            gpu_probe=RecordedProbe(GpuReport(unavailable="no GPU in tests")))).run()

    try:
        r = install(onnx_bundle(tmp_path, v, 1, port))
        assert ready(r.endpoints["mlp"])
        assert (site.root / "runtime" / "mlp").is_dir()
        with pytest.raises(AcceptanceError, match=r"worst: model 'mlp' sample 0 output y\[\d\]"):
            install(onnx_bundle(tmp_path, v, 2, port, shift=0.01))
        current = site.current()
        assert current is not None and current.sequence == 1 and ready(r.endpoints["mlp"])
    finally:
        for rel in site.releases():
            eng.stop(rel.sequence)
