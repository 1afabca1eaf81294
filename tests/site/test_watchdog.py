"""A hung runtime (alive, answering nothing: SIGSTOP) is restarted by the watchdog and
serves again within the stated bound, on the process engine, podman and Docker 20.10."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from appliance.engines.docker import DockerEngine
from appliance.site import audit
from appliance.site.gpu import GpuReport
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from appliance.site.watchdog import Watchdog
from tests.enginekit import wait_for
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import process_site, ready
from tests.site.releasekit import free_port_pair, release_manifest
from tests.site.test_docker_engine import PROBE

UNHEALTHY_S = 3.0
# What the test allows from SIGSTOP to serving again: the unhealthy time, a 5 s probe
# timeout, the engine's stop timeout and the runtime's start, with room on a busy box.
BOUND_S = 45.0


def _watch(site, engine):
    dog = Watchdog(site, engine, unhealthy_s=UNHEALTHY_S, start_grace_s=5.0)
    stop = threading.Event()
    t = threading.Thread(target=dog.run, args=(stop, 0.5), daemon=True)
    t.start()
    return stop, t


def _restarts(site):
    return [e.fields for e in audit.verify(site.root) if e.event == "watchdog_restart"]


def _hung_runtime(ps):
    """Release 1 installed, its runtime stopped (alive, answering nothing): its URL, the
    file naming its runtime's pid, and that pid."""
    port = free_port_pair()
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    url = f"http://127.0.0.1:{port}"
    child = ps.site.release(1).path / "run" / "mlp.child"
    hung = int(child.read_text())
    os.kill(hung, signal.SIGSTOP)
    assert not ready(url)
    return url, child, hung


def test_a_hung_process_engine_runtime_is_restarted(tmp_path):
    ps = process_site(tmp_path, vendor(tmp_path))
    try:
        url, child, hung = _hung_runtime(ps)
        stop, t = _watch(ps.site, ps.engine)
        started = time.monotonic()
        try:
            wait_for(lambda: ready(url), BOUND_S, "the hung runtime to serve again")
        finally:
            stop.set()
            t.join(10)
        assert time.monotonic() - started >= UNHEALTHY_S
        assert int(child.read_text()) != hung
        assert [(r["sequence"], r["service"]) for r in _restarts(ps.site)] == [(1, "mlp")]
    finally:
        ps.stop_all()


@pytest.mark.engine
@pytest.mark.slow
def test_a_hung_container_is_restarted(tmp_path, engine_url):
    site = Site(tmp_path / "site")
    site.ensure()
    port = free_port_pair()
    m = release_manifest(site.store, 1, port, tag=uuid.uuid4().hex[:12])
    rel = site.stage_release(m.to_json(), b"{}", 1, "docker")
    eng = DockerEngine(site, base_url=engine_url, health_test=PROBE, stop_timeout_s=2)
    try:
        eng.load(m, rel, site.store)
        urls = eng.start(m, rel, plan_placement(m, GpuReport(unavailable="test")), slot=0)
        site.update_record(rel, endpoints=urls, status="serving")
        site.switch_current(1)
        wait_for(lambda: ready(urls["mlp"]), 30, "the container to answer")
        c = eng.client.containers.get(eng.container_name(1, "mlp"))
        os.kill(c.attrs["State"]["Pid"], signal.SIGSTOP)  # alive, answers nothing
        assert not ready(urls["mlp"])
        stop, t = _watch(site, eng)
        try:
            wait_for(lambda: ready(urls["mlp"]), BOUND_S, "the hung container to serve again")
        finally:
            stop.set()
            t.join(10)
        assert [(r["sequence"], r["service"]) for r in _restarts(site)] == [(1, "mlp")]
    finally:
        eng.stop(1)
        eng.client.images.remove(m.images[0].config_digest, force=True)  # every tag
        eng.close()


def test_status_says_when_a_killed_supervisor_left_a_service_dead_and_rollback_revives_it(
        tmp_path, monkeypatch, capsys):
    from appliance.cli import main
    ps = process_site(tmp_path, vendor(tmp_path))
    port = free_port_pair()
    try:
        ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
        run = ps.site.release(1).path / "run"
        sup, child = int((run / "mlp.pid").read_text()), int((run / "mlp.child").read_text())
        os.kill(sup, signal.SIGKILL)  # no systemd: nothing brings the supervisor back
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: not ps.engine.alive(1, "mlp"), 10, "the supervisor to be gone")
        monkeypatch.setenv("APPLIANCE_RUNTIME_COMMAND", ps.cli_env()["APPLIANCE_RUNTIME_COMMAND"])
        assert main(["status", *ps.cli_args()]) == 1
        out = capsys.readouterr().out
        assert "mlp is not running (nothing supervises it" in out
        assert f"appliance rollback 1 --root {ps.site.root}" in out
        assert main(["rollback", "1", *ps.cli_args()]) == 0
        assert ready(f"http://127.0.0.1:{port}") and ps.engine.alive(1, "mlp")
        capsys.readouterr()
        assert main(["status", *ps.cli_args()]) == 0
        assert "not running" not in capsys.readouterr().out
    finally:
        ps.stop_all()


def test_write_unit_sets_up_the_timer_for_this_site_and_its_engine(tmp_path, capsys):
    from appliance.cli import main
    from appliance.site.engine import site_id
    root, units = tmp_path / "site", tmp_path / "units"
    assert main(["watchdog", "--write-unit", "--root", str(root), "--engine", "process",
                 "--unit-dir", str(units), "--unhealthy", "30"]) == 0
    service = units / f"appliance-{site_id(root)}-watchdog.service"
    text = service.read_text()
    assert (f"-m appliance watchdog --once --root {root} --engine process --unhealthy 30.0 "
            f"--unit-dir {units}") in text
    assert "Type=oneshot" in text
    assert (units / "timers.target.wants" / service.with_suffix(".timer").name).resolve() \
        == service.with_suffix(".timer")
    assert str(service) in capsys.readouterr().out


def test_the_watchdog_run_by_a_timer_carries_the_unready_time_between_runs(tmp_path):
    """Each `--once` run is a new process: the time a service has been unready carries
    over in the site, so a hung runtime is restarted by a later run, not never."""
    ps = process_site(tmp_path, vendor(tmp_path))
    try:
        url, child, hung = _hung_runtime(ps)
        t0 = time.time()
        first = Watchdog(ps.site, ps.engine, unhealthy_s=UNHEALTHY_S, clock=lambda: t0)
        assert first.check_once() == []  # unready from now on
        later = Watchdog(ps.site, ps.engine, unhealthy_s=UNHEALTHY_S,
                         clock=lambda: t0 + UNHEALTHY_S + 1)
        assert later.check_once() == ["mlp"]
        wait_for(lambda: ready(url), BOUND_S, "the hung runtime to serve again")
        assert int(child.read_text()) != hung
    finally:
        ps.stop_all()
