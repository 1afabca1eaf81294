"""Process output logs stay bounded and reach the support export: each release's
`run/*.log` and the process engine's HAProxy log, capped by the supervisor (or, where
systemd writes them, by the watchdog), and HAProxy's log and configuration exported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from appliance.fsutil import cap_log
from appliance.site.layout import Site
from appliance.site.watchdog import cap_output_logs
from appliance.support.export import write_support_export
from appliance.support.verify import verify_export
from tests.enginekit import wait_for
from tests.support.kit import NOW, ONE_GPU, add_release

ROOT = Path(__file__).resolve().parents[2]


def test_a_log_past_its_cap_moves_to_dot_1_and_the_writer_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)  # as the process has it
    try:
        os.write(fd, b"old line\n" * 200)
        assert not cap_log(log, cap=10_000)  # under the cap: left alone
        os.write(fd, b"old line\n" * 2000)
        assert cap_log(log, cap=10_000)
        assert log.stat().st_size == 0
        older = log.with_name("svc.log.1")
        assert older.read_bytes() == b"old line\n" * 2200
        assert older.stat().st_mode & 0o777 == 0o640  # as readable as the log, no more
        os.write(fd, b"new line\n")  # O_APPEND: at the new end, no hole of zeros
        assert log.read_bytes() == b"new line\n"
    finally:
        os.close(fd)
    assert not cap_log(tmp_path / "missing.log", cap=1)


def test_the_supervisor_caps_its_log_while_the_service_runs(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "svc.pid", tmp_path / "svc.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.engines.supervise", "--foreground", "--pidfile",
         str(pidfile), "--log", str(log), "--log-cap", "100000", "--log-check", "0.2", "--",
         "/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; exec sleep 600"],
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        older = tmp_path / "svc.log.1"
        wait_for(older.exists, 30, "the supervisor to move the log's older part aside")
        assert older.stat().st_size >= 100_000
        assert log.stat().st_size <= 100_000
        child = int(pidfile.with_suffix(".child").read_text())
        os.kill(child, 0)  # the service itself ran on: no restart for a rotation
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_watchdog_caps_what_systemd_writes_and_the_export_carries_the_door(
        tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    site.ensure()
    add_release(site, 1)
    run = site.releases_dir / "1" / "run"
    run.mkdir(parents=True, exist_ok=True)
    big = run / "svc.log"
    big.write_bytes(b"x" * ((16 << 20) + 1))
    proc_dir = site.root / "frontdoor-proc"
    proc_dir.mkdir()
    (proc_dir / "haproxy.log").write_text("[NOTICE] (1) : New worker (2) forked\n")
    conf = site.root / "frontdoor"
    conf.mkdir()
    (conf / "haproxy.cfg").write_text("global\n    maxconn 4096\n")
    (conf / "door.json").write_text('{"sequence": 1}\n')
    (conf / "tokens.map").write_text("ab" * 32 + " 1\n")
    assert cap_output_logs(site) == [big]
    assert big.stat().st_size == 0 and (run / "svc.log.1").stat().st_size == (16 << 20) + 1

    out = tmp_path / "stick"
    out.mkdir()
    files = verify_export(write_support_export(site, out, now=NOW, gpu_probe=ONE_GPU).path).files
    assert b"New worker" in files["frontdoor/haproxy.log"]
    assert files["frontdoor/haproxy.cfg"].startswith(b"global")
    assert "frontdoor/door.json" in files
    assert "frontdoor/tokens.map" not in files and not any(n.rsplit("/", 1)[-1] == "token"
                                                            for n in files)
