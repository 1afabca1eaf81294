"""The real runtime image (`make runtime-image`) through the docker engine: a bundle with
an ONNX model and signed samples installs on podman and dockerd 20.10 and passes the gate.

Skipped unless out/runtime-image.tar exists (or $APPLIANCE_RUNTIME_IMAGE names one):
building that image takes minutes, so the default suite uses a tiny image instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance.engines.docker import DockerEngine
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan
from tests.enginekit import wait_for
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
        name = eng.container_name(1, "mlp")
        c = eng.client.containers.get(name)
        # the image's own HEALTHCHECK on both engines: podman keeps an image loaded from the
        # OCI layout without one, so the engine takes it from the signed config blob
        test = c.attrs["Config"]["Healthcheck"]["Test"]
        assert test == ["CMD", "python", "/opt/appliance/healthcheck.py"]
        if "podman" in engine_url:  # podman stored it whole: its own run passes
            out = subprocess.run(["podman", "--url", engine_url, "healthcheck", "run", name],
                                 capture_output=True, text=True, check=False, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
        else:  # dockerd runs the check itself
            wait_for(lambda: eng.client.api.inspect_container(name)["State"]["Health"]
                     ["Status"] == "healthy", 60, "docker to call the service healthy")
    finally:
        for rel in site.releases():
            eng.stop(rel.sequence)
            for img in rel.manifest().images:
                eng.client.images.remove(img.config_digest, force=True)  # every tag
        eng.close()
