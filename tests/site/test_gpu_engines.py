"""GPUs into containers on the real engines here, with no GPU.

Podman: a fake CDI spec under /etc/cdi (kind `nvidia.com/gpu`, /dev/null as the
device node and an environment variable) stands for `nvidia-ctk cdi generate`'s;
the test looks inside the started container for both. Docker 20.10: dockerd only
offers the `nvidia` device driver when `nvidia-container-runtime-hook` is on its
PATH, and runs it as a prestart hook with the container's OCI config beside it; a
stand-in hook records what dockerd asked for.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.store import ContentStore
from appliance.engines.docker import DockerEngine
from appliance.engines.gpus import CDI_DEVICES, gpu_mode, takes_gpus
from appliance.engines.libpod import specgen
from appliance.errors import EngineError
from appliance.site.engine import launches
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from appliance.site.plan import InstallOptions, InstallPlan
from appliance.site.preflight import cdi_specs
from modelcontract import GpuState
from tests.enginekit import dockerd, tiny_image, wait_for
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import ready
from tests.site.releasekit import free_port_pair, release_manifest

pytestmark = pytest.mark.engine
PROBE = ["CMD", "/healthd", "--probe", "{path}", "--port", "{port}"]
CDI_DIR = Path("/etc/cdi")
HOOK = """#!/bin/sh
# Stand-in for the NVIDIA hook: keep the OCI state and the container's config.
state=$(cat)
printf '%s' "$state" > {rec}/state.json
printf '%s\\n' "$0 $*" > {rec}/args
bundle=$(printf '%s' "$state" | sed -n 's/.*"bundle":"\\([^"]*\\)".*/\\1/p')
cp "$bundle/config.json" {rec}/config.json
"""


@pytest.fixture
def fake_gpu() -> Iterator[tuple[str, Path]]:
    """A CDI spec for one fake GPU of a unique UUID, removed afterwards."""
    gpu_uuid = f"GPU-test-{uuid.uuid4().hex[:12]}"
    try:
        CDI_DIR.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pytest.skip("writing a CDI spec under /etc/cdi needs root")
    path = CDI_DIR / f"appliance-test-{gpu_uuid}.yaml"
    part = path.with_suffix(".part")  # CDI reads only .yaml and .json: a whole file or none
    part.write_text(f"""cdiVersion: "0.3.0"
kind: "nvidia.com/gpu"
devices:
- name: "{gpu_uuid}"
  containerEdits:
    deviceNodes:
    - path: /dev/appliance-fakegpu
      hostPath: /dev/null
    env:
    - APPLIANCE_FAKE_GPU={gpu_uuid}
""")
    os.replace(part, path)
    try:
        yield gpu_uuid, path
    finally:
        path.unlink(missing_ok=True)


def _gpu_release(tmp_path: Path, gpu_uuid: str, tag: str):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    m = release_manifest(site.store, 1, port, gpu="required", tag=tag)
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    report = GpuReport([GpuState(0, "Fake", 16000, 15000, uuid=gpu_uuid)], "550.54.15", "12.4")
    return site, m, rel, plan_placement(m, report)


@pytest.mark.slow
def test_podman_puts_the_cdi_device_and_its_variable_into_our_container(tmp_path, podman_url,
                                                                      fake_gpu):
    gpu_uuid, _ = fake_gpu
    site, m, rel, placement = _gpu_release(tmp_path, gpu_uuid, uuid.uuid4().hex[:12])
    eng = DockerEngine(site, base_url=podman_url, health_test=PROBE, stop_timeout_s=2)
    try:
        assert eng.gpu_runtime()
        eng.load(m, rel, site.store)
        eng.start(m, rel, placement, slot=1)
        assert eng.gpu_mode == "podman-cdi"
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        pid = wait_for(lambda: c.reload() or c.attrs["State"]["Pid"], 30, "the container's pid")
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"APPLIANCE_FAKE_GPU={gpu_uuid}".encode() in env
        assert b"NVIDIA_VISIBLE_DEVICES=void" not in env
        node = os.stat(f"/proc/{pid}/root/dev/appliance-fakegpu")
        assert stat.S_ISCHR(node.st_mode) and os.major(node.st_rdev) == 1 \
            and os.minor(node.st_rdev) == 3  # /dev/null, as the spec says
        # everything else of the spec made it through libpod too
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert c.attrs["HostConfig"]["NetworkMode"] == "host"
        assert c.attrs["Config"]["Labels"]["io.appliance.release"] == "1"
        assert c.attrs["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "/healthd"]
    finally:
        eng.stop(1)
        eng.close()


@pytest.mark.slow
def test_an_install_on_podman_hands_our_container_the_placed_gpu(tmp_path, podman_url,
                                                                 fake_gpu):
    gpu_uuid, _ = fake_gpu
    store = ContentStore(tmp_path / "rt-store")
    img = tiny_image(store, "runtime", f"localhost/healthd-gpu:{uuid.uuid4().hex[:8]}",
                     ["/healthd", "--models", "/models", "--port", "8000"])
    runtime = tmp_path / "runtime.tar"
    with open(runtime, "wb") as f:
        write_image_archive(f, store, [img])
    v = vendor(tmp_path)
    port = free_port_pair()
    site = Site(tmp_path / "site")
    eng = DockerEngine(site, base_url=podman_url, health_test=PROBE, stop_timeout_s=2)
    report = GpuReport([GpuState(0, "Fake", 16000, 15000, uuid=gpu_uuid)], "550.54.15", "12.4")
    events: list[Any] = []
    try:
        r = InstallPlan(InstallOptions(
            bundle=make_bundle(tmp_path, v, 1, port=port, runtime_archive=runtime,
                               gpu="required", gpu_mib=1000),
            site=site, engine=eng, trust=v.root_path, health_timeout_s=30,
            gpu_probe=RecordedProbe(report)), events.append).run()
        assert ready(r.endpoints["mlp"])
        lines = [getattr(e, "message", "") for e in events]
        assert any(ln.startswith("PASS  cdi:") for ln in lines), lines
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        env = Path(f"/proc/{c.attrs['State']['Pid']}/environ").read_bytes().split(b"\0")
        assert f"APPLIANCE_FAKE_GPU={gpu_uuid}".encode() in env
    finally:
        for rel in site.releases():
            eng.stop(rel.sequence)
            for i in rel.manifest().images:
                eng.client.images.remove(i.config_digest, force=True)  # every tag
        eng.close()


@pytest.mark.slow
def test_podman_names_a_gpu_its_cdi_spec_lacks_with_what_to_run(tmp_path, podman_url, fake_gpu):
    site, m, rel, placement = _gpu_release(tmp_path, "GPU-not-in-any-spec",
                                           uuid.uuid4().hex[:12])
    eng = DockerEngine(site, base_url=podman_url, health_test=PROBE, stop_timeout_s=2)
    try:
        eng.load(m, rel, site.store)
        with pytest.raises(EngineError, match=r"GPU-not-in-any-spec.*nvidia-ctk cdi generate"):
            eng.start(m, rel, placement, slot=1)
    finally:
        eng.stop(1)
        eng.close()


@pytest.mark.slow
def test_dockerd_asks_the_nvidia_hook_for_the_placed_gpu(tmp_path):
    bindir = tmp_path / "bin"
    rec = tmp_path / "rec"
    bindir.mkdir()
    rec.mkdir()
    hook = bindir / "nvidia-container-runtime-hook"
    hook.write_text(HOOK.replace("{rec}", str(rec)))
    hook.chmod(0o755)
    gpu_uuid = f"GPU-test-{uuid.uuid4().hex[:12]}"
    site, m, rel, placement = _gpu_release(tmp_path, gpu_uuid, uuid.uuid4().hex[:12])
    with dockerd(path_first=bindir) as url:
        eng = DockerEngine(site, base_url=url, health_test=PROBE, stop_timeout_s=2)
        try:
            eng.load(m, rel, site.store)
            eng.start(m, rel, placement, slot=1)
            assert eng.gpu_mode == "nvidia"
            wait_for(lambda: (rec / "config.json").exists(), 30, "the hook to run")
            assert (rec / "args").read_text().split()[1:] == ["prestart"]
            config = json.loads((rec / "config.json").read_text())
            assert f"NVIDIA_VISIBLE_DEVICES={gpu_uuid}" in config["process"]["env"]
            state = json.loads((rec / "state.json").read_text())
            assert state["id"] == eng.client.containers.get(eng.container_name(1, "mlp")).id
        finally:
            eng.stop(1)
            eng.close()


def test_each_engine_takes_gpus_its_own_way(tmp_path):
    podman = {"Components": [{"Name": "Podman Engine"}]}
    docker = {"Components": [{"Name": "Engine"}]}
    assert gpu_mode(podman, {}) == "podman-cdi"
    assert gpu_mode(docker, {"CDISpecDirs": ["/etc/cdi"]}) == "cdi"
    assert gpu_mode(docker, {"Runtimes": {"runc": {}}}) == "nvidia"
    assert takes_gpus(docker, {"Runtimes": {"nvidia": {}}})
    assert not takes_gpus(docker, {"Runtimes": {"runc": {}}})
    assert not takes_gpus(podman, {}, cdi_dirs=[tmp_path])
    (tmp_path / "nvidia.yaml").write_text('kind: "nvidia.com/gpu"\n')
    (tmp_path / "other.yaml").write_text('kind: "vendor.com/fpga"\n')
    assert takes_gpus(podman, {}, cdi_dirs=[tmp_path])
    assert [p for p, _ in cdi_specs([tmp_path])] == [tmp_path / "nvidia.yaml"]


def test_docker_with_cdi_asks_for_the_cdi_device(tmp_path):
    from tests.site.factory import manifest
    m = manifest([("mlp", [("mlp", 1000)], "required")])
    report = GpuReport([GpuState(0, "L4", 23000, 20000, uuid="GPU-aa")])
    launch = launches(m, plan_placement(m, report), slot=0)[0]
    eng = DockerEngine(Site(tmp_path))
    eng.gpu_mode = "cdi"
    (req,) = eng.container_spec(launch, {"Cmd": ["serve"]})["device_requests"]
    assert req["Driver"] == "cdi" and req["DeviceIDs"] == ["nvidia.com/gpu=GPU-aa"]
    eng.gpu_mode = "podman-cdi"
    spec = eng.container_spec(launch, {"Cmd": ["serve"]})
    assert spec[CDI_DEVICES] == ["nvidia.com/gpu=GPU-aa"] and "device_requests" not in spec


def test_libpod_refuses_a_spec_key_it_cannot_pass_on():
    with pytest.raises(EngineError, match=r"no translation for privileged"):
        specgen({"image": "x", "name": "n", "privileged": True})
