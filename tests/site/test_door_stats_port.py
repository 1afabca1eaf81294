"""Each site's front door keeps its own statistics port: two sites on one host (or a
port some other program holds) do not collide on HAProxy's 8404."""

from __future__ import annotations

import datetime as dt
import errno
import json
import socket
from dataclasses import asdict
from pathlib import Path

from appliance.engines.process import ProcessEngine
from appliance.frontdoor import site as files_of
from appliance.site.door import DOOR_FILE, DoorRecord, FrontDoor
from appliance.site.layout import Site
from tests.site.factory import manifest

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def door_for(root: Path) -> tuple[FrontDoor, files_of.FrontDoorFiles]:
    site = Site(root)
    engine = ProcessEngine(site, unit_dir=root / "units", use_systemd=False)
    return FrontDoor(site, engine, NOW), files_of.prepare(root, ["gw"], NOW)


def test_a_second_site_gets_its_own_stats_port_and_each_keeps_it(tmp_path: Path) -> None:
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", files_of.STATS_PORT))
            holder.listen()
        except OSError as e:  # already held (another site's HAProxy): just as good here
            assert e.errno == errno.EADDRINUSE
        door, files = door_for(tmp_path / "second")
        port = door._settings(files, m).stats_port
        assert port != files_of.STATS_PORT and port not in {s.port for s in m.services}
        assert door._settings(files, m).stats_port == port  # one choice per run
        record = door._record(files, m, 1)
        assert record.stats_port == port
        assert json.loads((files.conf_dir / DOOR_FILE).read_text())["stats_port"] == port
    finally:
        holder.close()
    # later installs keep the recorded port, even now that 8404 may be free
    again, files = door_for(tmp_path / "second")
    assert again._settings(files, m).stats_port == port
    door._write_config(files, m, {"mlp": ("127.0.0.1", 18000)}, {"mlp": "a"})
    assert f"bind 127.0.0.1:{port}" in files.config.read_text()


def test_a_record_from_before_the_choice_keeps_8404(tmp_path: Path) -> None:
    door, files = door_for(tmp_path)
    old = {k: v for k, v in asdict(DoorRecord(
        "10.0.0.5", {"mlp": 8000}, 1, "ab", "ca.pem", "token", NOW.isoformat())).items()
        if k != "stats_port"}
    (files.conf_dir / DOOR_FILE).write_text(json.dumps(old))
    assert DoorRecord.read(Site(tmp_path)) is not None
    assert door._settings(files).stats_port == files_of.STATS_PORT
