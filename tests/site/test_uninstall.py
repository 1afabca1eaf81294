"""`appliance uninstall`: a site goes with everything it runs and keeps (releases, units,
the watchdog's timer, data, the root); a wrong --root removes nothing; a kill at any
point leaves a command that finishes the job when run again. Real processes on the
process engine; for a container engine only what needs none."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.engines.docker import sequence_reference
from appliance.engines.forget import data_volumes, image_tags
from appliance.engines.supervise import process_exists
from appliance.site import removal
from appliance.site.engine import site_id
from tests.image.fixtures import proxy_image_tar  # noqa: F401 - the door fixture needs it
from tests.site.bundlekit import make_bundle
from tests.site.installkit import ProcessSite, ready
from tests.site.releasekit import free_port_pair
from tests.site.test_process_frontdoor import ProcDoor
from tests.site.test_process_frontdoor import _serves as _door_serves
from tests.site.test_process_frontdoor import door as door  # its fixture, re-exported


def _pids(ps: ProcessSite) -> list[int]:
    """Every supervisor and service process the site's releases run."""
    out = []
    for rel in ps.site.releases():
        for f in [*(rel.path / "run").glob("*.pid"), *(rel.path / "run").glob("*.child")]:
            out.append(int(f.read_text().strip()))
    return out


def _two_releases(ps: ProcessSite) -> str:
    """Install releases 1 and 2; return the serving URL."""
    port = free_port_pair()
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    result = ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    url = result.endpoints["mlp"]
    assert ready(url)
    return url


def _site_units(ps: ProcessSite) -> list[Path]:
    tag = site_id(ps.site.root)
    return [p for p in (ps.tmp / "units").rglob("*") if tag in p.name]


def _uninstall(ps: ProcessSite, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "appliance", "uninstall", *ps.cli_args(), *extra],
        env=ps.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_uninstall_stops_every_release_and_removes_units_watchdog_data_and_root(
        ps, monkeypatch, capsys):
    url = _two_releases(ps)
    pids = _pids(ps)
    assert pids and all(process_exists(p) for p in pids)
    units = _site_units(ps)
    assert any(p.name.endswith("-watchdog.timer") for p in units)  # the install set it up
    assert any(p.name.endswith("-mlp.service") for p in units)
    assert (ps.site.root / "runtime" / "mlp").is_dir()  # the service's data directory

    monkeypatch.setenv("APPLIANCE_RUNTIME_COMMAND", ps.cli_env()["APPLIANCE_RUNTIME_COMMAND"])
    capsys.readouterr()
    assert main(["uninstall", *ps.cli_args(), "--yes"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert not [p for p in pids if process_exists(p)]
    assert not ready(url)
    assert _site_units(ps) == []  # release units, boot links, the watchdog's service + timer
    assert not os.path.lexists(ps.site.root)
    assert not os.path.lexists(removal.trash_path(ps.site.root))
    # one line per thing removed, the root last
    assert "stopped release 2 (process engine)" in lines
    assert "stopped release 1 (process engine)" in lines
    assert sum(line.startswith("removed watchdog ") for line in lines) == 4  # 2 units, link, record
    assert sum(line.startswith("removed unit ") for line in lines) >= 2
    assert lines[-1].startswith(f"removed {ps.site.root} ")


def test_uninstall_killed_mid_way_finishes_when_run_again(ps):
    _two_releases(ps)
    pids = _pids(ps)
    proc = _uninstall(ps, "--yes")
    assert proc.stdout is not None
    first = proc.stdout.readline()  # it is working: the watchdog's units are going
    assert first.startswith("removed watchdog "), first + proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)

    again = _uninstall(ps, "--yes")
    _out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert not [p for p in pids if process_exists(p)]
    assert _site_units(ps) == []
    assert not os.path.lexists(ps.site.root)


def test_uninstall_killed_while_deleting_the_root_finishes_when_run_again(
        ps, monkeypatch, capsys):
    _two_releases(ps)
    monkeypatch.setenv("APPLIANCE_RUNTIME_COMMAND", ps.cli_env()["APPLIANCE_RUNTIME_COMMAND"])

    def killed(path: Path) -> None:  # the deletion stops part way, as under a kill
        for p in sorted(Path(path).rglob("*"), reverse=True)[:5]:
            if p.is_file() and not p.is_symlink():
                p.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr("appliance.site.removal.shutil.rmtree", killed)
    assert main(["uninstall", *ps.cli_args(), "--yes"]) == 130
    assert not os.path.lexists(ps.site.root)
    assert removal.trash_path(ps.site.root).is_dir()  # renamed aside, half deleted
    monkeypatch.undo()

    capsys.readouterr()
    assert main(["uninstall", "--root", str(ps.site.root), "--engine", "process",
                 "--unit-dir", str(ps.tmp / "units"), "--yes"]) == 0
    assert "left half-deleted by an earlier run" in capsys.readouterr().out
    assert not os.path.lexists(removal.trash_path(ps.site.root))


@pytest.mark.parametrize("case", ["absent", "other files", "a link to a site", "a file"])
def test_uninstall_refuses_a_root_that_is_not_a_site_and_removes_nothing(
        tmp_path, capsys, case):
    site = tmp_path / "real-site"
    (site / "releases").mkdir(parents=True)
    root = tmp_path / "root"
    if case == "other files":
        root.mkdir()
        (root / "notes.txt").write_text("keep me")
    elif case == "a link to a site":
        root.symlink_to(site)
    elif case == "a file":
        root.write_text("keep me")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["uninstall", "--root", str(root), "--engine", "process",
                 "--unit-dir", str(tmp_path / "units"), "--yes"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nothing was removed" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_uninstall_asks_first_and_a_no_removes_nothing(ps, monkeypatch, capsys):
    _two_releases(ps)
    pids = _pids(ps)
    monkeypatch.setenv("APPLIANCE_RUNTIME_COMMAND", ps.cli_env()["APPLIANCE_RUNTIME_COMMAND"])
    for answer in ("n\n", ""):  # "n", and no answer at all (stdin closed)
        monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
        assert main(["uninstall", *ps.cli_args()]) == 1
        out, err = capsys.readouterr()
        assert "releases 1, 2" in out and "its watchdog" in out
        assert "nothing was removed" in err
        assert all(process_exists(p) for p in pids) and ps.site.current() is not None
        assert any(p.name.endswith("-watchdog.timer") for p in _site_units(ps))


def test_uninstall_on_an_engine_that_does_not_answer_removes_nothing(ps, capsys):
    """A container site whose engine is down keeps everything (its containers could not be
    stopped): one line, and the watchdog's units and the root stay."""
    _two_releases(ps)
    units = _site_units(ps)
    assert main(["uninstall", "--root", str(ps.site.root), "--engine", "docker",
                 "--docker-host", f"unix://{ps.tmp}/no-such.sock", "--yes"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not answer" in err
    assert _site_units(ps) == units and ps.site.current() is not None


def test_a_container_site_names_its_own_volumes_and_image_tags(ps):
    """What a container engine removes, worked out without one: each release's image by
    its sequence tag and reference (with the signed digest each must still point at),
    and only this site's data volumes."""
    _two_releases(ps)
    tags = dict(image_tags(ps.site, sequence_reference))
    m1, m2 = (ps.site.release(s).manifest() for s in (1, 2))
    for seq, m in ((1, m1), (2, m2)):
        img = m.image(m.services[0].image)
        assert tags[sequence_reference(img.reference, seq)] == img.config_digest
        assert img.reference in tags
    tag = site_id(ps.site.root)
    assert data_volumes([f"appliance-{tag}-mlp-data", "appliance-0123456789ab-mlp-data",
                         f"appliance-{tag}-frontdoor", "mine"], tag) == [
        f"appliance-{tag}-mlp-data"]


@pytest.fixture
def behind_door(door: ProcDoor) -> ProcDoor:
    """Release 1 installed behind the process engine's front door (this interpreter's
    runtime: the stand-in image has none to run)."""
    r = door.install(door.vendor.build(1, seed=0), "--runtime-from", "host")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return door


@pytest.mark.slow
def test_uninstall_stops_the_process_front_door_and_removes_its_unit(behind_door: ProcDoor):
    """Behind the front door (the host's HAProxy, supervised): the proxy and its unit go
    with the site, and the stable port stops answering."""
    site = behind_door
    assert _door_serves(site)
    proxy = site.proxy()
    sup, child = proxy.supervisor_pid(), proxy.child_pid()
    assert sup is not None and child is not None
    unit = site.units / f"appliance-{site_id(site.root)}-frontdoor.service"
    assert unit.is_file()
    r = site.cli("uninstall", "--yes")
    assert r.returncode == 0, r.stderr
    assert f"stopped and removed the front door {unit.name}" in r.stdout.splitlines()
    assert not process_exists(sup) and not process_exists(child)
    assert not unit.exists() and not (site.units / "multi-user.target.wants" / unit.name
                                      ).is_symlink()
    assert not [p for p in site.units.rglob("*") if site_id(site.root) in p.name]
    assert not os.path.lexists(site.root)
    with pytest.raises(OSError):
        site.get("/v2/health/ready", token=False)
