"""The docker engine against real podman (compat socket) and dockerd 20.10."""

from __future__ import annotations

import urllib.request
import uuid

import pytest

from appliance.engines.base import launches
from appliance.engines.docker import DockerEngine
from appliance.errors import EngineUnavailableError
from appliance.gpu import GpuInfo, GpuReport
from appliance.placement import plan_placement
from appliance.site import Site
from tests.enginekit import wait_for
from tests.site.releasekit import free_port_pair, release_manifest

pytestmark = pytest.mark.engine
PROBE = ["CMD", "/healthd", "--probe", "{path}", "--port", "{port}"]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_unreachable_engine_is_named_with_what_to_do(tmp_path):
    eng = DockerEngine(Site(tmp_path), base_url=f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(EngineUnavailableError, match=r"does not answer .*start docker"):
        eng.ping()
    eng.close()


@pytest.mark.slow
def test_load_streams_images_from_store_and_checks_ids_then_runs(tmp_path, engine_url):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    m = release_manifest(site.store, 1, port, tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    assert "API" in eng.ping()
    events = []
    eng.load(m, rel, site.store, events.append)
    img = m.images[0]
    assert eng.image_id(img.reference) == img.config_digest
    assert events[-1].message.endswith(img.config_digest[:19])
    assert any(e.total and e.done == e.total for e in events)  # bytes streamed, all of them
    # second load finds the right id and streams nothing
    events.clear()
    eng.load(m, rel, site.store, events.append)
    assert not any(e.message == "streaming images" for e in events)

    placement = plan_placement(m, GpuReport(unavailable="test"))
    urls = eng.start(m, rel, placement, slot=1)
    assert urls == {"mlp": f"http://127.0.0.1:{port + 100}"}
    try:
        wait_for(lambda: ready(port + 100), 30, "the container to answer ready")
        assert eng.alive(1, "mlp") and eng.running() == {1}
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        attrs = c.attrs
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert attrs["Config"]["Healthcheck"]["Test"] == [
            "CMD", "/healthd", "--probe", "/v2/health/ready", "--port", str(port + 100)]
        assert attrs["Config"]["Cmd"][-2:] == ["--port", str(port + 100)]
        assert attrs["Config"]["Labels"]["io.appliance.release"] == "1"
        eng.stop(1)
        assert eng.running() == set()
        assert not eng.alive(1, "mlp")
    finally:
        eng.stop(1)
        eng.client.images.remove(img.reference, force=True)
        eng.close()


def test_gpu_placement_asks_the_engine_for_that_device(tmp_path):
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 1000)], "required")])
    report = GpuReport([GpuInfo(0, "L4", "GPU-aa", 23000, 1000), GpuInfo(1, "L4", "GPU-bb",
                                                                         23000, 20000)])
    launch = launches(m, plan_placement(m, report), slot=0)[0]
    spec = DockerEngine(Site(tmp_path)).container_spec(launch, {"Cmd": ["python", "-m",
                                                                       "runtime", "--port",
                                                                       "8000"]})
    (req,) = spec["device_requests"]
    assert req["DeviceIDs"] == ["GPU-bb"] and req["Capabilities"] == [["gpu"]]
    assert "NVIDIA_VISIBLE_DEVICES" not in spec["environment"]
    assert spec["command"] == ["python", "-m", "runtime", "--port", "8000"]


def test_cpu_placement_hides_gpus_from_the_container(tmp_path):
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    launch = launches(m, plan_placement(m, GpuReport()), slot=1)[0]
    spec = DockerEngine(Site(tmp_path)).container_spec(launch, {"Cmd": ["serve"]})
    assert "device_requests" not in spec
    assert spec["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert spec["command"] == ["serve", "--port", "8100"]
    assert spec["healthcheck"]["test"][-1].endswith("'http://127.0.0.1:8100/v2/health/ready', "
                                                    "timeout=4)")


def test_image_own_health_check_is_kept_with_our_timings(tmp_path):
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    launch = launches(m, plan_placement(m, GpuReport()), slot=0)[0]
    own = ["CMD", "python", "/opt/appliance/healthcheck.py"]
    spec = DockerEngine(Site(tmp_path)).container_spec(
        launch, {"Cmd": ["serve"], "Healthcheck": {"Test": own, "Interval": 1}})
    assert spec["healthcheck"]["test"] == own
    assert spec["healthcheck"]["retries"] == 3
