"""The watchdog comes with the install: a systemd timer (service + timer, enabled) that
names this site, or where systemd is not PID 1 one line saying how to run it; `appliance
status` says which; removing the site's watchdog removes its units."""

from __future__ import annotations

import os

from appliance.cli import main
from appliance.site import watchdog_units
from appliance.site.engine import site_id
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import process_site
from tests.site.releasekit import free_port_pair


def test_an_install_writes_and_enables_the_watchdog_timer_naming_this_site(
        tmp_path, monkeypatch, capsys):
    ps = process_site(tmp_path, vendor(tmp_path))
    units = tmp_path / "units"  # the process engine's unit dir: the watchdog's too
    try:
        result = ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=free_port_pair()))
        assert result.watchdog is not None and result.watchdog.mode == "timer"
        name = f"appliance-{site_id(ps.site.root)}-watchdog"
        service, timer = units / f"{name}.service", units / f"{name}.timer"
        assert "Type=oneshot" in service.read_text()
        run = next(line for line in service.read_text().splitlines()
                   if line.startswith("ExecStart="))
        assert f"watchdog --once --root {ps.site.root} --engine process" in run
        assert f"--unit-dir {units}" in run  # the watchdog drives the same engine
        assert f"Unit={service.name}" in timer.read_text()
        wants = units / "timers.target.wants" / timer.name
        assert wants.is_symlink() and wants.resolve() == timer  # enabled
        assert timer.name in result.watchdog.line

        monkeypatch.setenv("APPLIANCE_RUNTIME_COMMAND",
                           ps.cli_env()["APPLIANCE_RUNTIME_COMMAND"])
        capsys.readouterr()
        assert main(["status", *ps.cli_args()]) == 0
        out = capsys.readouterr().out
        assert f"watchdog: systemd timer {timer.name}" in out and "not run yet" in out

        # The timer's run, as systemd would start it: status then says when it last ran.
        assert main(["watchdog", "--once", *ps.cli_args()]) == 0
        capsys.readouterr()
        assert main(["status", *ps.cli_args()]) == 0
        assert "last check" in capsys.readouterr().out

        # Removing the site's watchdog (before removing the site) removes the units.
        assert main(["watchdog", "--remove", "--root", str(ps.site.root)]) == 0
        assert not service.exists() and not timer.exists() and not wants.is_symlink()
        capsys.readouterr()
        main(["status", *ps.cli_args()])
        assert "watchdog: not set up" in capsys.readouterr().out
    finally:
        ps.stop_all()


def test_where_systemd_is_not_pid_1_the_install_says_how_to_run_the_watchdog(
        tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(watchdog_units.UNIT_DIR_ENV, raising=False)
    root = tmp_path / "site"
    root.mkdir()
    setup = watchdog_units.set_up(root, "docker", docker_host="unix:///run/podman/podman.sock",
                                  systemd=False)
    assert setup.mode == "manual" and not setup.units  # nothing pretends to run it
    assert "systemd is not PID 1" in setup.line and "cron" in setup.line
    assert (f"watchdog --once --root {root} --engine docker "
            "--docker-host unix:///run/podman/podman.sock") in setup.line
    assert "\n" not in setup.line
    assert watchdog_units.status_line(root).startswith(setup.line)
    assert not any(watchdog_units.SYSTEMD_UNIT_DIR.glob(f"appliance-{site_id(root)}-*"))


def test_with_systemd_as_pid_1_the_timer_is_enabled_and_started_through_systemctl(
        tmp_path, monkeypatch):
    """Where systemd is PID 1 and the units go where it reads them, systemctl enables
    the timer (recorded here: no systemd runs this host) and disables it on removal."""
    monkeypatch.setattr(watchdog_units, "SYSTEMD_UNIT_DIR", tmp_path / "etc-systemd")
    monkeypatch.delenv(watchdog_units.UNIT_DIR_ENV, raising=False)
    calls: list[tuple[str, ...]] = []
    root = tmp_path / "site"
    root.mkdir()
    setup = watchdog_units.set_up(root, "process", systemd=True,
                                  systemctl=lambda *a: calls.append(a))
    timer = f"appliance-{site_id(root)}-watchdog.timer"
    assert setup.mode == "timer" and setup.systemctl
    assert calls == [("daemon-reload",), ("enable", "--now", timer)]
    removed = watchdog_units.remove(root, systemctl=lambda *a: calls.append(a))
    assert ("disable", "--now", timer) in calls
    assert all(not p.exists() for p in removed) and len(removed) == 4
    assert not os.listdir(tmp_path / "etc-systemd" / "timers.target.wants")

