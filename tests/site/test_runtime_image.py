"""The real runtime image (`make runtime-image`) through the docker engine: a bundle with
an ONNX model and signed samples installs on podman and dockerd 20.10 and passes the gate.

Skipped unless out/runtime-image.tar exists (or $APPLIANCE_RUNTIME_IMAGE names one):
building that image takes minutes, so the default suite uses a tiny image instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.engines.docker import DockerEngine
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan
from tests.site.bundlekit import vendor
from tests.site.installkit import REPO, ready
from tests.site.releasekit import free_port_pair
from tests.site.test_real_runtime import onnx_bundle

pytestmark = [pytest.mark.engine, pytest.mark.slow]
IMAGE = Path(os.environ.get("APPLIANCE_RUNTIME_IMAGE", REPO / "out" / "runtime-image.tar"))


def test_runtime_image_installs_and_passes_the_gate(tmp_path, engine_url):
    if not IMAGE.is_file():
        pytest.skip(f"{IMAGE} not built (make runtime-image)")
    v = vendor(tmp_path)
    port = free_port_pair()
    site = Site(tmp_path / "site")
    eng = DockerEngine(site, base_url=engine_url, stop_timeout_s=5)
    bundle = onnx_bundle(tmp_path, v, 1, port, runtime_archive=IMAGE)
    try:
        r = InstallPlan(InstallOptions(
            bundle=bundle, site=site, engine=eng, trust=v.root_path, health_timeout_s=120,
            gpu_probe=RecordedProbe(GpuReport(unavailable="no GPU in tests")))).run()
        assert ready(r.endpoints["mlp"])
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        # the image's own check where the engine kept it (dockerd); podman stores OCI configs,
        # which have no health check, so ours (python urllib against the slot port) stands in
        test = c.attrs["Config"]["Healthcheck"]["Test"]
        assert test[:2] == ["CMD", "python"]
    finally:
        for rel in site.releases():
            eng.stop(rel.sequence)
            for img in rel.manifest().images:
                eng.client.images.remove(img.reference, force=True)
        eng.close()
