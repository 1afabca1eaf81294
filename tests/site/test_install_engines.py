"""Install and update through real engines: podman's socket and dockerd 20.10."""

from __future__ import annotations

import contextlib

import pytest

from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.store import ContentStore
from appliance.engines.docker import DockerEngine
from appliance.errors import ReleaseFailedError
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan
from tests.enginekit import tiny_image
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import ready
from tests.site.releasekit import free_port_pair

pytestmark = [pytest.mark.engine, pytest.mark.slow]
PROBE = ["CMD", "/healthd", "--probe", "{path}", "--port", "{port}"]
HEALTHD = ["/healthd", "--models", "/models", "--port", "8000"]


@pytest.fixture(scope="module")
def runtime_archive(tmp_path_factory):
    """A docker-archive/OCI tar of the healthd image, as `make runtime-image` would give."""
    tmp = tmp_path_factory.mktemp("runtime")
    store = ContentStore(tmp / "store")
    img = tiny_image(store, "runtime", "localhost/healthd-runtime:test", HEALTHD)
    out = tmp / "runtime.tar"
    with open(out, "wb") as f:
        write_image_archive(f, store, [img])
    return out


def test_install_update_and_failed_update_through_engine(tmp_path, engine_url, runtime_archive):
    v = vendor(tmp_path)
    port = free_port_pair()
    site = Site(tmp_path / "site")
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)

    def install(bundle, timeout=20.0):
        return InstallPlan(InstallOptions(
            bundle=bundle, site=site, engine=eng, trust=v.root_path, health_timeout_s=timeout,
            gpu_probe=RecordedProbe(GpuReport(unavailable="no GPU in tests")))).run()

    try:
        r1 = install(make_bundle(tmp_path, v, 1, port=port, runtime_archive=runtime_archive))
        assert ready(r1.endpoints["mlp"])
        m1 = site.release(1).manifest()
        assert eng.image_id(m1.images[0].reference) == m1.images[0].config_digest
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert c.attrs["Config"]["Healthcheck"]["Test"][1:3] == ["/healthd", "--probe"]

        r2 = install(make_bundle(tmp_path, v, 2, port=port, runtime_archive=runtime_archive))
        assert r2.endpoints == {"mlp": f"http://127.0.0.1:{port + 100}"}
        assert ready(r2.endpoints["mlp"]) and eng.running() == {2}

        never = make_bundle(tmp_path, v, 3, port=port, runtime_archive=runtime_archive,
                            command=[*HEALTHD, "--never-ready"])
        with pytest.raises(ReleaseFailedError, match="release 2 keeps serving"):
            install(never, timeout=3)
        current = site.current()
        assert current is not None and current.sequence == 2 and eng.running() == {2}
        assert ready(r2.endpoints["mlp"])
    finally:
        for rel in site.releases():
            eng.stop(rel.sequence)
        for rel in site.releases():
            for img in rel.manifest().images:
                eng.client.images.remove(img.config_digest, force=True)  # every tag
        eng.close()


def test_sigkill_while_new_containers_start_keeps_old_serving(tmp_path, engine_url,
                                                             runtime_archive):
    step = "health"  # the new release's container exists; process tests cover every step
    import json
    import os
    import signal
    import subprocess
    import sys

    from tests.site.installkit import REPO
    v = vendor(tmp_path)
    port = free_port_pair()
    site = Site(tmp_path / "site")
    b1 = make_bundle(tmp_path, v, 1, port=port, runtime_archive=runtime_archive)
    b2 = make_bundle(tmp_path, v, 2, port=port, runtime_archive=runtime_archive)
    none = tmp_path / "none.json"
    none.write_text(json.dumps(GpuReport(unavailable="test").to_dict()))
    cmd = [sys.executable, "-m", "appliance", "install", "--yes", "--json", "--trust",
           str(v.root_path), "--root", str(site.root), "--engine", "docker", "--docker-host",
           engine_url, "--gpu-state", str(none), "--health-timeout", "30"]
    eng = DockerEngine(site, base_url=engine_url, stop_timeout_s=2)
    try:
        assert subprocess.run([*cmd, str(b1)], cwd=REPO, capture_output=True,
                              timeout=120).returncode == 0
        proc = subprocess.Popen([*cmd, str(b2)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["kind"] == "StepEvent" and ev["step"] == step:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
        proc.stdout.close()
        current = site.current()
        assert current is not None and current.sequence == 1 and ready(f"http://127.0.0.1:{port}")
        again = subprocess.run([*cmd, str(b2)], cwd=REPO, capture_output=True, timeout=120)
        assert again.returncode == 0, again.stderr
        current = site.current()
        assert current is not None and current.sequence == 2 and eng.running() == {2}
        assert ready(f"http://127.0.0.1:{port + 100}")
    finally:
        for rel in site.releases():
            eng.stop(rel.sequence)
        for rel in site.releases():
            for img in rel.manifest().images:
                eng.client.images.remove(img.config_digest, force=True)  # every tag
        eng.close()


def test_uninstall_removes_the_sites_containers_volume_and_image_names(
        tmp_path, engine_url, runtime_archive):
    from appliance.engines.hardening import data_volume
    from appliance.site.removal import remove_site
    v = vendor(tmp_path)
    port = free_port_pair()
    site = Site(tmp_path / "site")
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    digests: set[str] = set()
    try:
        for seq in (1, 2):
            r = InstallPlan(InstallOptions(
                bundle=make_bundle(tmp_path, v, seq, port=port, runtime_archive=runtime_archive),
                site=site, engine=eng, trust=v.root_path, health_timeout_s=20,
                gpu_probe=RecordedProbe(GpuReport(unavailable="no GPU in tests")))).run()
            assert ready(r.endpoints["mlp"])
            digests.update(i.config_digest for i in site.release(seq).manifest().images)
        volume = data_volume(eng.tag, "mlp")
        names = [n for img in eng.client.images.list() for n in img.tags
                 if img.id.split(":")[-1] in {d.split(":")[-1] for d in digests}]
        assert names and volume in [x.name for x in eng.client.volumes.list()]

        said: list[str] = []
        remove_site(site, eng, said.append)

        assert not site.root.exists() and said[-1].startswith(f"removed {site.root} ")
        labelled = eng.client.containers.list(all=True, filters={"label": f"io.appliance.site="
                                                                          f"{eng.tag}"})
        assert labelled == []
        assert volume not in [x.name for x in eng.client.volumes.list()]
        left = {n for img in eng.client.images.list() for n in img.tags}
        assert not left & set(names), left & set(names)
        assert not ready(r.endpoints["mlp"])
    finally:
        for d in digests:
            with contextlib.suppress(Exception):
                eng.client.images.remove(d, force=True)
        eng.close()
