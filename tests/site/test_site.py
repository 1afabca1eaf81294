"""Site layout: releases, the atomic `current` switch, accepted sequence."""

from __future__ import annotations

import json
import os

import pytest

from appliance.errors import SiteError
from appliance.site.layout import Site, slot_port
from tests.site.factory import manifest


def stage(site: Site, seq: int):
    m = manifest([("mlp", [("mlp", 0)], "preferred")], sequence=seq)
    return site.stage_release(m.to_json(), b'{"payloadType":"x"}', seq, "process")


def test_fresh_site_has_no_current_and_no_releases(tmp_path):
    site = Site(tmp_path)
    assert site.current() is None
    assert site.releases() == []
    assert site.state().highest_sequence == 0


def test_stage_writes_signed_files_and_record(tmp_path):
    site = Site(tmp_path)
    rel = stage(site, 3)
    assert (rel.path / "manifest.json").is_file()
    assert (rel.path / "manifest.dsse.json").read_bytes() == b'{"payloadType":"x"}'
    assert rel.record.status == "staged" and rel.record.engine == "process"
    assert rel.manifest().sequence == 3
    assert [r.sequence for r in site.releases()] == [3]


def test_restaging_same_manifest_keeps_record_but_other_manifest_is_refused(tmp_path):
    site = Site(tmp_path)
    rel = stage(site, 2)
    site.update_record(rel, status="loaded")
    assert stage(site, 2).record.status == "loaded"
    other = manifest([("cnn", [("cnn", 0)], "none")], sequence=2)
    with pytest.raises(SiteError, match="different manifest"):
        site.stage_release(other.to_json(), b"{}", 2, "process")


def test_switch_current_is_a_relative_symlink_replaced_by_rename(tmp_path):
    site = Site(tmp_path)
    stage(site, 1)
    stage(site, 2)
    site.switch_current(1)
    ino_before = os.lstat(tmp_path / "current").st_ino
    site.switch_current(2)
    assert os.readlink(tmp_path / "current") == "releases/2"
    assert os.lstat(tmp_path / "current").st_ino != ino_before
    current = site.current()
    assert current is not None and current.sequence == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".current")]


def test_switch_to_missing_release_is_refused_and_current_unchanged(tmp_path):
    site = Site(tmp_path)
    stage(site, 1)
    site.switch_current(1)
    with pytest.raises(SiteError, match=r"release 9 is not installed .*installed: 1"):
        site.switch_current(9)
    current = site.current()
    assert current is not None and current.sequence == 1


def test_current_that_is_not_a_symlink_is_reported(tmp_path):
    site = Site(tmp_path)
    (tmp_path / "current").mkdir()
    with pytest.raises(SiteError, match="not a symlink"):
        site.current()


def test_accepted_sequence_never_goes_down_and_is_durable(tmp_path):
    site = Site(tmp_path)
    site.accept_sequence(5, 1)
    site.accept_sequence(3)
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc == {"highest_sequence": 5, "trust_root_version": 1}


def test_install_log_is_json_lines(tmp_path):
    site = Site(tmp_path)
    rel = stage(site, 1)
    rel.log("step", step="preflight", message="ok")
    rel.log("failed", reason="boom")
    assert [x["event"] for x in rel.log_lines()] == ["step", "failed"]


def test_slot_ports_alternate():
    assert (slot_port(8000, 0), slot_port(8000, 1)) == (8000, 8100)
