"""Containers as created on podman and dockerd 20.10: CIS Docker Benchmark section 5 items,
bounded logs, and one data volume per site and service kept across releases."""

from __future__ import annotations

import functools
import json
import subprocess
import uuid

import pytest

from appliance.engines.docker import DockerEngine
from appliance.engines.hardening import (
    LOG_MAX_SIZE,
    MIN_MEMORY,
    PIDS_LIMIT,
    data_volume,
    nofile_limit,
    service_limits,
)
from appliance.site.gpu import GpuReport
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from tests.enginekit import wait_for
from tests.site.releasekit import free_port_pair, release_manifest
from tests.site.test_docker_engine import PROBE, ready

pytestmark = pytest.mark.engine


def test_limits_follow_the_declared_weights_with_a_floor(tmp_path):
    site = Site(tmp_path)
    m = release_manifest(site.store, 1, 8000)
    small = service_limits(m, "mlp", cpus=4)
    assert small.memory_bytes == MIN_MEMORY and small.nano_cpus == 3 * 10**9
    assert service_limits(m, "mlp", cpus=1).nano_cpus == 10**9  # never zero CPUs


def _log_max_size(eng: DockerEngine, url: str, seq: int) -> str:
    """The container's log size cap: Docker shows it in LogConfig; podman's compat view
    drops it, its own inspect has it as `Size`."""
    c = eng.client.containers.get(eng.container_name(seq, "mlp"))
    config = c.attrs["HostConfig"]["LogConfig"].get("Config") or {}
    if "max-size" in config:
        return str(config["max-size"])
    out = subprocess.run(["podman", "--url", url, "inspect", c.id, "--format",
                          "{{json .HostConfig.LogConfig}}"], capture_output=True, text=True,
                         check=True).stdout
    return str(json.loads(out).get("Size"))


@pytest.mark.slow
def test_created_containers_are_confined_and_keep_one_data_volume(tmp_path, engine_url):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    tag = uuid.uuid4().hex[:12]
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    images = []
    try:
        for seq, slot in ((1, 0), (2, 1)):
            m = release_manifest(site.store, seq, port, tag=tag)
            rel = site.stage_release(m.to_json(), b"{}", seq, "docker")
            eng.load(m, rel, site.store)
            images.append(m.images[0].reference)
            eng.start(m, rel, plan_placement(m, GpuReport(unavailable="test")), slot=slot)
            wait_for(functools.partial(ready, port + 100 * slot), 30, "the container to answer")
            hc = eng.client.containers.get(eng.container_name(seq, "mlp")).attrs["HostConfig"]
            assert hc["ReadonlyRootfs"] is True
            assert "/tmp" in (hc.get("Tmpfs") or {})
            assert [c.upper().removeprefix("CAP_") for c in hc["CapDrop"]][:1] == ["ALL"] or \
                len(hc["CapDrop"]) > 10  # podman lists every capability it dropped
            assert any(o.startswith("no-new-privileges") for o in hc["SecurityOpt"])
            assert hc["PidsLimit"] == PIDS_LIMIT
            assert hc["Memory"] == MIN_MEMORY and hc["NanoCpus"] >= 10**9
            nofile = [u for u in hc["Ulimits"] if u["Name"].lower().endswith("nofile")]
            assert nofile and nofile[0]["Soft"] == nofile_limit() == nofile[0]["Hard"]
            assert nofile_limit() >= 4096
            assert _log_max_size(eng, engine_url, seq) in (LOG_MAX_SIZE, "10MB")
            mounts = eng.client.containers.get(eng.container_name(seq, "mlp")).attrs["Mounts"]
            assert [x["Name"] for x in mounts if x["Type"] == "volume"] == [
                data_volume(eng.tag, "mlp")]
            eng.stop(seq - 1) if seq > 1 else None
        # the update reused the site's volume; no anonymous one was left behind
        vols = [v.name for v in eng.client.volumes.list()
                if v.name.startswith(f"appliance-{eng.tag}")]
        assert vols == [data_volume(eng.tag, "mlp")]
    finally:
        eng.stop(1)
        eng.stop(2)
        for ref in images:
            eng.client.images.remove(ref, force=True)
        eng.client.volumes.get(data_volume(eng.tag, "mlp")).remove(force=True)
        eng.close()


def test_a_health_check_word_with_spaces_becomes_one_shell_line():
    from appliance.engines.docker import DEFAULT_HEALTH, unsplittable
    assert unsplittable(["CMD", "/healthd", "--probe", "/v2"]) == ["CMD", "/healthd", "--probe",
                                                                     "/v2"]
    assert unsplittable(["CMD", "python", "-c", "import x; x.y()"]) == [
        "CMD-SHELL", "python -c 'import x; x.y()'"]
    assert not any(" " in w for w in DEFAULT_HEALTH)  # works in an image without a shell


@pytest.mark.slow
def test_two_bundles_with_the_same_name_and_version_keep_their_own_tags(tmp_path, engine_url):
    from dataclasses import replace

    from appliance.engines.docker import sequence_reference
    site = Site(tmp_path / "site")
    site.ensure()
    same = f"localhost/appliance-test-{uuid.uuid4().hex[:12]}:1.0.0"
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    ids = {}
    try:
        for seq, scale in ((1, 2.0), (2, 3.0)):  # different weights, same reference
            m = release_manifest(site.store, seq, free_port_pair(), scale=scale)
            m = replace(m, images=[replace(m.images[0], reference=same)])
            rel = site.stage_release(m.to_json(), b"{}", seq, "docker")
            eng.load(m, rel, site.store)
            ids[seq] = m.images[0].config_digest
        assert ids[1] != ids[2]
        for seq in (1, 2):
            assert eng.image_id(sequence_reference(same, seq)) == ids[seq]
    finally:
        for seq in ids:
            eng.client.images.remove(ids[seq], force=True)
        eng.close()
