"""Verify's progress events: inside a big member, in order, and last at the whole size."""

from __future__ import annotations

import itertools
import os
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import verify_bundle
from appliance.bundle.store import ContentStore
from appliance.progress import Progress
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.bundle.conftest import Built, make_spec_dir
from tests.bundle.kit import NOW, assert_store_clean, source_date_epoch

MIB = 1024 * 1024
EVERY = 256 * 1024


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, vendor: PrivateKey) -> Built:
    """A bundle whose beta weights layer is about 3.5 MiB, many times EVERY."""
    d = tmp_path_factory.mktemp("big")
    spec = make_spec_dir(d, beta=os.urandom(3 * MIB + MIB // 2))
    with source_date_epoch():
        manifest = build_bundle(load_spec(spec), d / "bundle.tar", [vendor])
    return Built(d / "bundle.tar", manifest, d)


def _data_span(bundle: Path, path: str) -> tuple[int, int]:
    with tarfile.open(bundle) as tar:  # read-only listing of offsets, nothing is extracted
        info = tar.getmember(path)
    return info.offset_data, info.offset_data + info.size


@pytest.mark.parametrize("read_ahead", [True, False])
def test_verify_reports_inside_a_big_member_and_ends_at_the_total(
        big: Built, root: TrustRoot, tmp_path: Path, monkeypatch, read_ahead: bool):
    import appliance.bundle.stream

    monkeypatch.setattr(appliance.bundle.stream, "idle_core", lambda: read_ahead)
    events: list[Progress] = []
    verify_bundle(big.path, root, now=NOW, store=ContentStore(tmp_path / "site"),
                  progress=events.append, progress_every=EVERY)
    size = big.path.stat().st_size
    assert {(e.step, e.total) for e in events} == {("verify", size)}
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == size
    assert events[-1].message == "end of the bundle"
    largest = max(big.manifest.members, key=lambda m: m.size)
    assert largest.size > 3 * MIB
    start, end = _data_span(big.path, largest.path)
    inside = [d for d in done if start < d < end]
    # one event per 1 MiB read, since each read passes EVERY: the bar moves while it hashes
    assert len(inside) >= largest.size // MIB - 1, (start, end, done)
    assert max(b - a for a, b in itertools.pairwise(done)) <= MIB + 2 * 512


def test_verify_is_quiet_between_events_smaller_than_progress_every(big: Built, root: TrustRoot):
    events: list[Progress] = []
    verify_bundle(big.path, root, now=NOW, progress=events.append, progress_every=64 * MIB)
    # one event per member and one at the end, none inside a member
    assert len(events) == len(big.manifest.members) + 1
    assert events[-1].done == events[-1].total == big.path.stat().st_size


class Stopped(Exception):
    """What a front end raises from its progress callback to stop verify."""


def test_stopping_verify_inside_a_member_leaves_no_partial_blob(big: Built, root: TrustRoot,
                                                                 tmp_path: Path):
    largest = max(big.manifest.members, key=lambda m: m.size)
    start, end = _data_span(big.path, largest.path)

    def stop_inside(ev: Progress) -> None:
        if start < ev.done < end:
            raise Stopped("stopped by the operator")

    store = ContentStore(tmp_path / "site")
    with pytest.raises(Stopped):
        verify_bundle(big.path, root, now=NOW, store=store, progress=stop_inside,
                      progress_every=EVERY)
    assert not store.has("sha256:" + largest.sha256)
    assert_store_clean(store, big.manifest)
