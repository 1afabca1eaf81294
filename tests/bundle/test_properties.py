"""Property tests: no cut point, inserted member name or flipped bit ever verifies."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.bundle import verify_bundle
from appliance.bundle.store import ContentStore
from appliance.errors import BundleError
from signing import TrustRoot
from tests.bundle.conftest import Built
from tests.bundle.kit import NOW, Entry, assert_store_clean, read_entries, write_entries

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _refused(data: bytes, root: TrustRoot, built: Built) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.tar"
        path.write_bytes(data)
        store = ContentStore(Path(d) / "site")
        try:
            verify_bundle(path, root, now=NOW, store=store)
        except BundleError as e:
            assert "\n" not in str(e)
        else:
            raise AssertionError("a damaged bundle verified")
        assert_store_clean(store, built.manifest)


@SETTINGS
@given(data=st.data())
def test_no_truncation_point_verifies(built: Built, root: TrustRoot, data: st.DataObject):
    whole = built.path.read_bytes()
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    _refused(whole[:cut], root, built)


member_name = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=90
).filter(lambda s: len(s.encode()) <= 100 and "\0" not in s)


@pytest.mark.slow
@SETTINGS
@given(name=member_name, position=st.integers(2, 11), payload=st.binary(max_size=600))
def test_no_inserted_member_verifies(built: Built, root: TrustRoot, name: str, position: int,
                                     payload: bytes):
    entries = read_entries(built.path)
    entries.insert(position, Entry(name, payload))
    with tempfile.TemporaryDirectory() as d:
        out = write_entries(Path(d) / "b.tar", entries)
        _refused(out.read_bytes(), root, built)


@pytest.mark.slow
@SETTINGS
@given(name=member_name, index=st.integers(2, 10))
def test_no_renamed_member_verifies(built: Built, root: TrustRoot, name: str, index: int):
    entries = read_entries(built.path)
    if entries[index].name == name:
        return
    entries[index] = Entry(name, entries[index].data)
    with tempfile.TemporaryDirectory() as d:
        out = write_entries(Path(d) / "b.tar", entries)
        _refused(out.read_bytes(), root, built)


@SETTINGS
@given(data=st.data())
def test_no_flipped_bit_verifies(built: Built, root: TrustRoot, data: st.DataObject):
    whole = bytearray(built.path.read_bytes())
    at = data.draw(st.integers(0, len(whole) - 1), label="offset")
    whole[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    _refused(bytes(whole), root, built)
