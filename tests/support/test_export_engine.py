"""The export asks a real engine (podman's Docker-compatible socket) for its version and
the running containers' output, which Docker keeps in no file of the site."""

from __future__ import annotations

import uuid

import pytest

from appliance.engines.docker import DockerEngine
from appliance.site.gpu import GpuReport
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from appliance.support.export import write_support_export
from appliance.support.verify import verify_export
from tests.enginekit import wait_for
from tests.site.releasekit import free_port_pair, release_manifest
from tests.site.test_docker_engine import PROBE, ready
from tests.support.kit import NO_GPU

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_export_holds_the_engine_version_and_the_running_containers_output(tmp_path,
                                                                             podman_url):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    m = release_manifest(site.store, 1, port, tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    eng = DockerEngine(site, base_url=podman_url, health_test=PROBE, stop_timeout_s=2)
    try:
        eng.load(m, rel, site.store)
        eng.start(m, rel, plan_placement(m, GpuReport(unavailable="test")), slot=0)
        wait_for(lambda: ready(port), 30, "the container to answer ready")
        wait_for(lambda: "listening" in eng.logs_tail(1, "mlp"), 10, "the container's output")
        out = tmp_path / "stick"
        out.mkdir()
        v = verify_export(write_support_export(site, out, engine=eng, gpu_probe=NO_GPU).path)
        assert f"healthd listening on {port}" in v.files["engine/1-mlp.log"].decode()
        engine = v.json("system.json")["engine"]
        assert engine["name"] == "docker" and "API" in engine["version"]
    finally:
        eng.stop(1)
        eng.client.images.remove(m.images[0].config_digest, force=True)  # every tag
        eng.close()
