"""The docker engine against real podman (compat socket) and dockerd 20.10."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.engines.docker import DockerEngine, sequence_reference
from appliance.errors import EngineUnavailableError, ImageLoadError
from appliance.progress import Progress
from appliance.site.engine import launches
from appliance.site.gpu import GpuReport
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from modelcontract import GpuState
from tests.enginekit import need, podman_service, wait_for
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
def test_load_takes_images_from_store_and_checks_ids_then_runs(tmp_path, engine_url):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    m = release_manifest(site.store, 1, port, tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    assert "API" in eng.ping()
    events: list[Progress] = []
    eng.load(m, rel, site.store, events.append)
    img = m.images[0]
    assert eng.image_id(img.reference) == img.config_digest
    assert events[-1].message.endswith(img.config_digest[:19])
    assert any(e.total and e.done == e.total for e in events)  # bytes streamed, all of them
    # second load finds the right id and streams nothing
    events.clear()
    eng.load(m, rel, site.store, events.append)
    assert not any(e.total for e in events)

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
        eng.client.images.remove(img.config_digest, force=True)  # every tag
        eng.close()


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_damaged_store_blob_is_named_not_blamed_on_the_engine(tmp_path, engine_url, damage):
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 1, free_port_pair(), tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    layer = site.store.path(m.images[0].layers[-1])
    if damage == "missing":
        layer.unlink()
    else:
        data = bytearray(layer.read_bytes())
        data[len(data) // 2] ^= 1
        layer.write_bytes(bytes(data))
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    try:
        with pytest.raises(ImageLoadError, match=r"cannot read the images from the store: "
                           r"(blob|stored blob) sha256:\w+ (is not in the store|no longer "
                           r"matches)"):
            eng.load(m, rel, site.store)
        assert eng.image_id(m.images[0].reference) is None
    finally:
        eng.close()


@pytest.mark.parametrize("site_dir", ["site", "Site [2]"])
def test_podman_loads_in_place_from_the_store(tmp_path, podman_url, site_dir):
    """podman reads the store's blobs through a layout of hard links: no upload, no spool.

    A site path that cannot become an image name (capitals, spaces) goes through a link.
    """
    site = Site(tmp_path / site_dir)
    site.ensure()
    m = release_manifest(site.store, 1, free_port_pair(), tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    eng = DockerEngine(site, base_url=podman_url)
    img = m.images[0]
    links_before = set(Path("/run").glob("appliance-load-*"))
    events: list[Progress] = []
    try:
        eng.load(m, rel, site.store, events.append)
        assert eng.image_id(img.config_digest) == img.config_digest
        assert any(e.message == f"podman load {img.reference} from the store" for e in events)
        assert not any("streaming" in e.message for e in events)
        assert events[-2].done == events[-2].total > 0
        assert all(e.done <= e.total for e in events)
        names = [t for i in eng.client.images.list() for t in i.tags]
        assert not [n for n in names if "oci-" in n or "appliance-load-" in n]
        names = eng.client.images.get(img.config_digest).tags  # ours only
        ours = (img.reference, sequence_reference(img.reference, 1))
        assert len(names) == 2 and all(n.endswith(ours) for n in names), names
        assert list(site.store.tmp.iterdir()) == []
        assert set(Path("/run").glob("appliance-load-*")) == links_before
    finally:
        eng.client.images.remove(img.config_digest, force=True)
        eng.close()


def test_podman_with_its_own_storage_flags_is_loaded_in_place(tmp_path):
    """A socket started with --root/--runroot and a driver of its own (vfs here): the CLI
    reaches the same storage, taking the driver from the storage's database."""
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 1, free_port_pair(), tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    img = m.images[0]
    podman = need("podman")  # skips, with the reason, where podman is not installed
    storage = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))  # podman: runroot < 50 chars
    flags = ["--root", str(storage / "root"), "--runroot", str(storage / "run")]
    try:
        with podman_service(storage=storage) as url:
            eng = DockerEngine(site, base_url=url)
            try:
                cli = eng.podman_cli()
                assert cli is not None and cli[1:] == flags
                events: list[Progress] = []
                eng.load(m, rel, site.store, events.append)
                assert any(e.message == f"podman load {img.reference} from the store"
                           for e in events)
                assert eng.image_id(img.config_digest) == img.config_digest
                assert eng.client.info()["Driver"] == "vfs"
            finally:
                eng.close()
    finally:
        subprocess.run([podman, *flags, "system", "reset", "-f"], capture_output=True,
                       check=False)
        shutil.rmtree(storage, ignore_errors=True)


def test_a_store_where_links_cannot_be_made_is_streamed_instead(tmp_path, podman_url):
    """The store's temp area on another filesystem (here a tmpfs mounted over it): no
    hard links, so the images go through the socket as for Docker."""
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 1, free_port_pair(), tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    site.store.ensure()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(site.store.tmp)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    eng = DockerEngine(site, base_url=podman_url)
    img = m.images[0]
    try:
        events: list[Progress] = []
        eng.load(m, rel, site.store, events.append)
        (fallback,) = [e for e in events if "could not load" in e.message]
        assert "Invalid cross-device link" in fallback.message
        assert fallback.message.endswith("; streaming it instead")
        assert any(e.message == "streaming images" for e in events)
        assert eng.image_id(img.config_digest) == img.config_digest
        assert list(site.store.tmp.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(site.store.tmp)], capture_output=True, check=False)
        eng.client.images.remove(img.config_digest, force=True)
        eng.close()


def test_podman_checks_every_blob_it_reads_from_the_store(tmp_path, podman_url):
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 1, free_port_pair(), tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    layer = m.images[0].layers[-1]
    data = bytearray(site.store.path(layer).read_bytes())
    data[len(data) // 2] ^= 1
    site.store.path(layer).write_bytes(bytes(data))
    eng = DockerEngine(site, base_url=podman_url)
    events: list[Progress] = []
    try:
        with pytest.raises(ImageLoadError, match=r"stored blob sha256:\w+ no longer matches"):
            eng.load(m, rel, site.store, events.append)
        (refused,) = [e for e in events if "could not load" in e.message]
        assert f"Digest did not match, expected {layer}" in refused.message
        assert refused.message.endswith("; streaming it instead")
        assert eng.image_id(m.images[0].config_digest) is None
        assert list(site.store.tmp.iterdir()) == []
    finally:
        eng.close()


def test_only_a_local_podman_is_loaded_in_place(tmp_path, podman_url, dockerd_url):
    site = Site(tmp_path)
    eng = DockerEngine(site, base_url=podman_url)
    cli = eng.podman_cli()
    assert cli is not None and cli[1::2] == ["--root", "--runroot"]
    eng.close()
    eng = DockerEngine(site, base_url=dockerd_url)
    assert eng.podman_cli() is None
    eng.close()
    eng = DockerEngine(site, base_url="tcp://127.0.0.1:1")
    assert eng.podman_cli() is None


class _BusyOnce:
    """A container whose engine fails the first removal with a server error, as podman
    4.3 does while its clean-up still holds the container's mount (not reproducible on
    demand, so the engine's answer is played back here)."""

    name = "busy"

    def __init__(self, failures: int, status: int = 500) -> None:
        self.failures, self.status, self.calls = failures, status, 0

    def remove(self, force: bool) -> None:
        import docker.errors
        import requests
        self.calls += 1
        if self.calls <= self.failures:
            r = requests.Response()
            r.status_code = self.status
            raise docker.errors.APIError("removing container root filesystem", response=r)


def test_a_removal_the_engine_fails_for_a_moment_is_tried_again(tmp_path, monkeypatch):
    import docker.errors

    from appliance.engines import docker as engine_module
    monkeypatch.setattr(engine_module, "REMOVE_RETRY_S", (0.0, 0.0))
    eng = DockerEngine(Site(tmp_path))
    busy = _BusyOnce(failures=2)
    eng._remove(busy)
    assert busy.calls == 3
    with pytest.raises(docker.errors.APIError):  # still failing: the error goes up
        eng._remove(_BusyOnce(failures=5))
    gone = _BusyOnce(failures=1, status=404)  # a client error is not retried
    with pytest.raises(docker.errors.APIError):
        eng._remove(gone)
    assert gone.calls == 1


def test_gpu_placement_asks_the_engine_for_that_device(tmp_path):
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 1000)], "required")])
    report = GpuReport([GpuState(0, "L4", 23000, 1000, uuid="GPU-aa"),
                        GpuState(1, "L4", 23000, 20000, uuid="GPU-bb")])
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
    assert spec["healthcheck"]["test"][-1].endswith("'http://127.0.0.1:8100/v2/health/ready',"
                                                    "timeout=4)")


def test_behind_the_door_the_token_directory_is_mounted_read_only_never_an_env_value(
        tmp_path):
    from appliance.engines.docker import numeric_user
    from appliance.frontdoor import token
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    launch = launches(m, plan_placement(m, GpuReport()), slot=0, door=True)[0]
    secret = token.new_token()
    tokens = token.write_runtime_tokens(tmp_path, [secret])
    spec = DockerEngine(Site(tmp_path)).container_spec(launch, {"Cmd": ["serve"]},
                                                       token_dir=tokens)
    assert spec["volumes"][str(tokens)] == {"bind": "/run/appliance-token", "mode": "ro"}
    assert spec["environment"]["RUNTIME_TOKEN_FILE"] == "/run/appliance-token/tokens"
    assert secret not in repr(spec)
    assert "RUNTIME_TOKEN_FILE" not in DockerEngine(Site(tmp_path)).container_spec(
        launch, {"Cmd": ["serve"]})["environment"]
    assert numeric_user({"User": "10001:10002"}) == (10001, 10002)
    assert numeric_user({"User": "10001"}) == (10001, 10001)
    assert numeric_user({"User": "appliance"}) == (0, 0)
    assert numeric_user({}) == (0, 0)


def test_image_own_health_check_is_kept_with_our_timings(tmp_path):
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    launch = launches(m, plan_placement(m, GpuReport()), slot=0)[0]
    own = ["CMD", "python", "/opt/appliance/healthcheck.py"]
    spec = DockerEngine(Site(tmp_path)).container_spec(
        launch, {"Cmd": ["serve"], "Healthcheck": {"Test": own, "Interval": 1}})
    assert spec["healthcheck"]["test"] == own
    assert spec["healthcheck"]["retries"] == 3


@pytest.mark.slow
def test_a_stale_image_under_the_same_name_is_never_run(tmp_path, engine_url):
    """An image the engine already holds under the release's short name is not taken for it.

    podman resolves a short name such as `appliance-test/x:1` to `localhost/...` before
    `docker.io/...`, so a stale image tagged `localhost/...` shadows what an archive loads.
    """
    site = Site(tmp_path / "site")
    site.ensure()
    port, tag = free_port_pair(), uuid.uuid4().hex[:12]
    ref = f"appliance-test/{tag}:1"

    def named(m):
        return replace(m, images=[replace(m.images[0], reference=ref)])

    stale = named(release_manifest(site.store, 1, port, tag=tag, scale=3.0))
    m = named(release_manifest(site.store, 1, port, tag=tag))
    img = m.images[0]
    assert stale.images[0].config_digest != img.config_digest
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    try:
        eng.load(stale, rel, site.store)
        shadow = eng.client.images.get(stale.images[0].config_digest)
        shadow.tag(f"localhost/appliance-test/{tag}", "1")
        eng.load(m, rel, site.store)
        assert eng.image_id(ref) == img.config_digest
        eng.start(m, rel, plan_placement(m, GpuReport(unavailable="test")), slot=1)
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        assert c.attrs["Image"] == img.config_digest
    finally:
        eng.stop(1)
        for image in (img, stale.images[0]):
            eng.client.images.remove(image.config_digest, force=True)
        eng.close()
