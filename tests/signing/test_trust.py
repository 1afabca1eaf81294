"""Trust roots: thresholds, files, and rotation to exactly N+1 signed by old and new."""

from __future__ import annotations

import json

import pytest

from signing import (
    PrivateKey,
    RootRotationError,
    TrustRoot,
    TrustRootFormatError,
    rotate_root,
    sign_root,
)


@pytest.fixture(scope="module")
def ks() -> list[PrivateKey]:
    return [PrivateKey.generate() for _ in range(4)]


def root_of(keys: list[PrivateKey], threshold: int = 1, version: int = 1) -> TrustRoot:
    return TrustRoot.create([k.public_key for k in keys], threshold=threshold, version=version)


def test_root_json_round_trip_keeps_keys_threshold_and_names(ks):
    root = TrustRoot.create([k.public_key for k in ks[:3]], threshold=2, version=3,
                            names={ks[0].key_id: "release team"})
    again = TrustRoot.from_json(root.to_json())
    assert again == root


def test_threshold_must_be_reachable():
    k = PrivateKey.generate()
    with pytest.raises(TrustRootFormatError, match="threshold"):
        root_of([k], threshold=2)
    with pytest.raises(TrustRootFormatError, match="threshold"):
        root_of([k], threshold=0)
    with pytest.raises(TrustRootFormatError, match="version"):
        root_of([k], version=0)


@pytest.mark.parametrize("doc", [
    {}, {"type": "appliance-trust-root", "version": "1", "threshold": 1, "keys": []},
    {"type": "appliance-trust-root", "version": 1, "threshold": 1, "keys": []},
    {"type": "appliance-trust-root", "version": 1, "threshold": 1, "keys": [{"x": 1}]},
    {"type": "appliance-trust-root", "version": 1, "threshold": 1,
     "keys": [{"public_key": "AAAA"}]},
])
def test_malformed_roots_are_refused(doc):
    with pytest.raises(TrustRootFormatError):
        TrustRoot.from_json(json.dumps(doc).encode())


def test_root_keyid_must_match_its_public_key(ks):
    doc = root_of(ks[:1]).to_dict()
    doc["keys"][0]["keyid"] = ks[1].key_id
    with pytest.raises(TrustRootFormatError, match="does not match"):
        TrustRoot.from_json(json.dumps(doc).encode())


def test_self_signed_root_file_loads_only_when_its_threshold_signed(ks):
    root = root_of(ks[:2], threshold=2)
    assert TrustRoot.from_json(sign_root(root, ks[:2])) == root
    with pytest.raises(TrustRootFormatError, match="does not verify"):
        TrustRoot.from_json(sign_root(root, ks[:1]))


def test_rotation_to_n_plus_one_signed_by_old_and_new(ks):
    old = root_of(ks[:2], threshold=2, version=1)
    new = root_of(ks[2:], threshold=1, version=2)
    assert rotate_root(old, sign_root(new, [ks[0], ks[1], ks[2]])) == new


@pytest.mark.parametrize("version", [1, 2, 4, 7])
def test_rotation_to_any_version_but_n_plus_one_is_refused(ks, version):
    old = root_of(ks[:1], version=2)
    new = root_of(ks[1:2], version=version)
    with pytest.raises(RootRotationError, match="only 3"):
        rotate_root(old, sign_root(new, [ks[0], ks[1]]))


def test_rotation_needs_a_threshold_of_the_old_root(ks):
    old = root_of(ks[:2], threshold=2)
    new = root_of(ks[2:3], version=2)
    with pytest.raises(RootRotationError, match="current root"):
        rotate_root(old, sign_root(new, [ks[0], ks[2]]))


def test_rotation_needs_a_threshold_of_the_new_root(ks):
    """A stolen old key alone cannot install a root of keys that never signed it."""
    old = root_of(ks[:1])
    new = root_of(ks[2:4], threshold=2, version=2)
    with pytest.raises(RootRotationError, match="new root"):
        rotate_root(old, sign_root(new, [ks[0], ks[2]]))


def test_rotation_of_garbage_is_refused(ks):
    with pytest.raises(RootRotationError, match="malformed"):
        rotate_root(root_of(ks[:1]), b"{}")


def test_rotation_with_passphrase_protected_keys(ks, tmp_path):
    old_key = PrivateKey.from_pem(ks[0].to_pem(b"pw"), b"pw")
    new_key = PrivateKey.from_pem(ks[1].to_pem(b"pw2"), b"pw2")
    new = root_of([new_key], version=2)
    assert rotate_root(root_of([old_key]), sign_root(new, [old_key, new_key])) == new
