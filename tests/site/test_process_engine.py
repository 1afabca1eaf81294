"""The process engine: model files from layers, supervised processes, systemd units."""

from __future__ import annotations

import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from appliance.engines.process import ProcessEngine
from appliance.progress import Progress
from appliance.site.gpu import GpuReport
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from modelcontract import GpuState
from tests.enginekit import wait_for
from tests.site.releasekit import free_port_pair, release_manifest

REPO = Path(__file__).resolve().parents[2]
FAKE = (sys.executable, "-m", "tests.site.fakeruntime", "--models", "{models}", "--port", "{port}")


def fake_engine(site: Site, tmp_path: Path) -> ProcessEngine:
    return ProcessEngine(site, command=FAKE, env={"PYTHONPATH": str(REPO)},
                         unit_dir=tmp_path / "units", use_systemd=False)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def started(tmp_path):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    m = release_manifest(site.store, 4, port)
    rel = site.stage_release(m.to_json(), b"{}", 4, "process")
    eng = fake_engine(site, tmp_path)
    eng.load(m, rel, site.store)
    urls = eng.start(m, rel, plan_placement(m, GpuReport()), slot=0)
    yield site, eng, rel, port, urls
    eng.stop(4)


def test_load_takes_model_files_out_of_the_weights_layer(tmp_path):
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 1, 8000)
    rel = site.stage_release(m.to_json(), b"{}", 1, "process")
    events: list[Progress] = []
    fake_engine(site, tmp_path).load(m, rel, site.store, events.append)
    mj = rel.path / "models" / "mlp" / "mlp" / "1" / "model.json"
    assert mj.is_file() and b'"scale": 2.0' in mj.read_bytes()
    assert events[-1].done == events[-1].total == m.models[0].weights_size


def test_started_service_answers_and_is_supervised(started):
    _site, eng, rel, port, urls = started
    assert urls == {"mlp": f"http://127.0.0.1:{port}"}
    wait_for(lambda: ready(port), 20, "the supervised runtime to answer ready")
    assert eng.alive(4, "mlp") and eng.running() == {4}
    child = rel.path / "run" / "mlp.child"
    first = int(child.read_text())
    os.kill(first, signal.SIGKILL)  # the runtime dies; the supervisor brings it back
    wait_for(lambda: child.exists() and int(child.read_text()) != first, 20, "a restart")
    wait_for(lambda: ready(port), 20, "the restarted runtime to answer ready")
    eng.stop(4)
    assert not eng.alive(4, "mlp") and eng.running() == set()
    assert not ready(port)


def test_unit_written_for_reboot_and_enabled_for_the_serving_release_only(started, tmp_path):
    _site, eng, rel, port, _ = started
    u3, u4 = eng.unit_name(3, "mlp"), eng.unit_name(4, "mlp")
    unit = tmp_path / "units" / u4
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m tests.site.fakeruntime --models " \
           f"{rel.path}/models/mlp --port {port}" in text
    assert "Restart=always" in text and "WantedBy=multi-user.target" in text
    assert 'Environment="CUDA_VISIBLE_DEVICES="' in text  # CPU placement hides GPUs
    assert f"StandardOutput=append:{rel.path}/run/mlp.log" in text
    (tmp_path / "units" / u3).write_text(text)
    eng.enable(3)
    eng.enable(4)
    wants = tmp_path / "units" / "multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == [u4]
    assert os.readlink(wants / u4) == f"../{u4}"


def test_gpu_placement_sets_visible_device(tmp_path):
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 2, free_port_pair(), gpu="required")
    rel = site.stage_release(m.to_json(), b"{}", 2, "process")
    eng = fake_engine(site, tmp_path)
    report = GpuReport([GpuState(0, "L4", 23000, 20000, uuid="GPU-x")], "550", "12.4")
    eng.load(m, rel, site.store)
    eng.start(m, rel, plan_placement(m, report), slot=1)
    try:
        assert 'Environment="CUDA_VISIBLE_DEVICES=GPU-x"' in (
            tmp_path / "units" / eng.unit_name(2, "mlp")).read_text()
    finally:
        eng.stop(2)


def test_stop_ignores_a_pidfile_whose_pid_is_not_our_supervisor(tmp_path):
    site = Site(tmp_path / "site")
    site.ensure()
    m = release_manifest(site.store, 5, 8000)
    rel = site.stage_release(m.to_json(), b"{}", 5, "process")
    (rel.path / "run").mkdir()
    (rel.path / "run" / "mlp.pid").write_text(f"{os.getpid()}\n")  # this test process
    eng = fake_engine(site, tmp_path)
    assert not eng.alive(5, "mlp")
    eng.stop(5)  # must not signal us


def test_units_are_confined_and_named_by_site_and_logs_are_0640(tmp_path):
    import stat
    units = []
    for name in ("a", "b"):  # two sites on one host, the same release and service
        site = Site(tmp_path / name)
        site.ensure()
        m = release_manifest(site.store, 1, free_port_pair())
        rel = site.stage_release(m.to_json(), b"{}", 1, "process")
        eng = fake_engine(site, tmp_path)
        eng.load(m, rel, site.store)
        eng.start(m, rel, plan_placement(m, GpuReport(unavailable="test")), slot=0)
        try:
            log = rel.path / "run" / "mlp.log"
            assert stat.S_IMODE(log.stat().st_mode) == 0o640
            units.append(tmp_path / "units" / eng.unit_name(1, "mlp"))
        finally:
            eng.stop(1)
    assert units[0] != units[1] and all(u.is_file() for u in units)
    text = units[0].read_text()
    for line in ("User=appliance-runtime", "NoNewPrivileges=yes", "LimitNOFILE=65536",
                 "MemoryMax=2147483648", "ProtectSystem=strict", "UMask=0027"):
        assert line in text.splitlines(), line
