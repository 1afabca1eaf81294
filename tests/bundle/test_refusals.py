"""Every refusal of issue 2 on real bundle files: the error class, and a clean store after."""

from __future__ import annotations

import json
import os
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from appliance.bundle import verify_bundle
from appliance.bundle.manifest import ENVELOPE_PATH, MANIFEST_PATH, MAX_MANIFEST_BYTES, PAYLOAD_TYPE
from appliance.bundle.store import ContentStore
from appliance.errors import (
    BundleFormatError,
    DeltaBaseError,
    DigestMismatchError,
    ExpiredBundleError,
    ManifestError,
    MemberError,
    RollbackError,
    SignatureError,
    TruncatedBundleError,
)
from signing import PrivateKey, ThresholdError, TrustRoot, sign
from signing.dsse import Envelope
from tests.bundle.conftest import Built
from tests.bundle.kit import (
    NOW,
    Entry,
    assert_store_clean,
    flip_bit,
    member_offsets,
    read_entries,
    resign,
    write_entries,
)


def refuse(path: Path, root: TrustRoot, store: ContentStore, error: type[Exception],
           built: Built | None = None, **kw: object) -> Exception:
    with pytest.raises(error) as info:
        verify_bundle(path, root, now=NOW, store=store, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value), "errors a person reads are one line"
    assert_store_clean(store, built.manifest if built else None)
    return info.value


def test_verify_accepts_the_good_bundle_and_fills_the_store(bundle, root, store, built):
    v = verify_bundle(bundle, root, now=NOW, store=store)
    assert v.manifest == built.manifest
    assert v.signers == [next(iter(root.keys))]
    blobs = {m.sha256 for m in built.manifest.members if m.path.startswith("blobs/")}
    assert {d.removeprefix("sha256:") for d in store.digests()} == blobs
    assert_store_clean(store, built.manifest)


# -- signatures ---------------------------------------------------------------
def test_verify_refuses_unsigned_bundle(bundle, root, store, built):
    write_entries(bundle, resign(read_entries(bundle), []))
    refuse(bundle, root, store, SignatureError, built)


def test_verify_refuses_bundle_without_envelope_member(bundle, root, store, built):
    entries = read_entries(bundle)
    write_entries(bundle, [entries[0], *entries[2:]])
    e = refuse(bundle, root, store, SignatureError, built)
    assert ENVELOPE_PATH in str(e)


def test_verify_refuses_bundle_signed_by_untrusted_key(bundle, root, store, built, other_key):
    write_entries(bundle, resign(read_entries(bundle), [other_key]))
    refuse(bundle, root, store, SignatureError, built)


def test_verify_refuses_below_threshold(bundle, store, built, vendor, other_key):
    two = TrustRoot.create([vendor.public_key, other_key.public_key], threshold=2)
    e = refuse(bundle, two, store, SignatureError, built)
    assert isinstance(e.__cause__, ThresholdError)
    write_entries(bundle, resign(read_entries(bundle), [vendor, other_key]))
    verify_bundle(bundle, two, now=NOW, store=store)  # both keys: accepted


def test_verify_counts_duplicate_signatures_from_one_key_once(bundle, store, built, vendor,
                                                              other_key):
    two = TrustRoot.create([vendor.public_key, other_key.public_key], threshold=2)
    write_entries(bundle, resign(read_entries(bundle), [vendor, vendor]))
    e = refuse(bundle, two, store, SignatureError, built)
    assert isinstance(e.__cause__, ThresholdError)


def test_verify_refuses_manifest_swapped_under_a_valid_envelope(bundle, root, store, built,
                                                                vendor):
    """Mix and match: a genuine envelope from one release over another manifest."""
    entries = read_entries(bundle)
    doc = json.loads(entries[0].data)
    doc["sequence"] = 99
    other = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    write_entries(bundle, [Entry(MANIFEST_PATH, other), *entries[1:]])
    e = refuse(bundle, root, store, SignatureError, built)
    assert "differs" in str(e)


def test_verify_refuses_wrong_payload_type(bundle, root, store, built, vendor):
    entries = read_entries(bundle)
    env = sign(entries[0].data, "application/json", [vendor]).to_json()
    write_entries(bundle, [entries[0], Entry(ENVELOPE_PATH, env), *entries[2:]])
    refuse(bundle, root, store, SignatureError, built)


# -- freshness ----------------------------------------------------------------
def test_verify_refuses_expired_bundle_and_names_the_override(bundle, root, store, built):
    later = built.manifest.expires_at + timedelta(seconds=1)
    with pytest.raises(ExpiredBundleError, match="--allow-expired") as info:
        verify_bundle(bundle, root, now=later, store=store)
    assert "clock" in str(info.value)
    assert_store_clean(store)
    assert not store.digests(), "nothing is ingested before freshness passes"


def test_verify_accepts_expired_bundle_with_explicit_override(bundle, root, store, built,
                                                              caplog):
    later = built.manifest.expires_at + timedelta(days=20)
    v = verify_bundle(bundle, root, now=later, store=store, allow_expired=True)
    assert v.manifest.sequence == 1
    assert "expired" in caplog.text


def test_verify_refuses_a_bundle_expired_longer_ago_than_the_override_reaches(
        bundle, root, store, built):
    later = built.manifest.expires_at + timedelta(days=400)
    with pytest.raises(ExpiredBundleError, match=r"expired 400 days ago .* more than the 30 days"):
        verify_bundle(bundle, root, now=later, store=store, allow_expired=True)
    assert not store.digests()
    v = verify_bundle(bundle, root, now=later, store=store, allow_expired=True,
                      max_expired=timedelta(days=401))
    assert v.manifest.sequence == 1


@pytest.mark.parametrize("last", [1, 2], ids=["equal", "older"])
def test_verify_refuses_sequence_not_newer_than_site(bundle, root, store, built, last):
    refuse(bundle, root, store, RollbackError, built, last_sequence=last)
    assert not store.digests()


# -- tampering ----------------------------------------------------------------
def _members(built: Built) -> list[str]:
    return [MANIFEST_PATH, ENVELOPE_PATH, *(m.path for m in built.manifest.members)]


@pytest.mark.parametrize("index", range(11))
def test_verify_refuses_flipped_bit_in_any_member(bundle, root, store, built, index):
    names = _members(built)
    assert len(names) == 11
    offset, size = member_offsets(bundle)[names[index]]
    flip_bit(bundle, offset + size // 2, bit=index % 8)
    expected = SignatureError if index < 2 else DigestMismatchError
    e = refuse(bundle, root, store, expected, built)
    if index >= 2:
        assert names[index] in str(e)


def test_verify_refuses_flipped_bit_in_a_header(bundle, root, store, built):
    offset, _ = member_offsets(bundle)[built.manifest.members[3].path]
    flip_bit(bundle, offset - 512 + 20)  # inside the member's name field
    refuse(bundle, root, store, BundleFormatError, built)


def test_verify_keeps_only_verified_blobs_when_a_later_blob_is_bad(bundle, root, store, built):
    last = built.manifest.members[-1].path
    offset, size = member_offsets(bundle)[last]
    flip_bit(bundle, offset + size - 1)
    refuse(bundle, root, store, DigestMismatchError, built)
    assert store.digests(), "blobs before the bad one were verified and kept"
    assert "sha256:" + last.rsplit("/", 1)[1] not in store.digests()


def test_verify_refuses_truncated_bundle_mid_blob(bundle, root, store, built):
    offset, size = member_offsets(bundle)[built.manifest.members[3].path]
    os.truncate(bundle, offset + size // 2)
    refuse(bundle, root, store, TruncatedBundleError, built)


def test_verify_refuses_bundle_missing_its_end_marker(bundle, root, store, built):
    os.truncate(bundle, bundle.stat().st_size - 512)
    refuse(bundle, root, store, TruncatedBundleError, built)


def test_verify_refuses_trailing_garbage(bundle, root, store, built):
    with open(bundle, "ab") as f:
        f.write(b"\1" * 10)
    refuse(bundle, root, store, BundleFormatError, built)


# -- members ------------------------------------------------------------------
def test_verify_refuses_missing_member(bundle, root, store, built):
    entries = read_entries(bundle)
    del entries[5]
    write_entries(bundle, entries)
    e = refuse(bundle, root, store, MemberError, built)
    assert "missing" in str(e)


def test_verify_refuses_missing_last_member(bundle, root, store, built):
    write_entries(bundle, read_entries(bundle)[:-1])
    e = refuse(bundle, root, store, MemberError, built)
    assert built.manifest.members[-1].path in str(e)


def test_verify_refuses_unlisted_member(bundle, root, store, built):
    write_entries(bundle, [*read_entries(bundle), Entry("blobs/sha256/" + "0" * 64, b"x")])
    e = refuse(bundle, root, store, MemberError, built)
    assert "not listed" in str(e)


def test_verify_refuses_duplicated_member(bundle, root, store, built):
    entries = read_entries(bundle)
    write_entries(bundle, [*entries[:6], entries[5], *entries[6:]])
    e = refuse(bundle, root, store, MemberError, built)
    assert "twice" in str(e)


def test_verify_refuses_second_manifest_member(bundle, root, store, built):
    entries = read_entries(bundle)
    write_entries(bundle, [*entries[:3], entries[0], *entries[3:]])
    refuse(bundle, root, store, MemberError, built)


def test_verify_refuses_reordered_members(bundle, root, store, built):
    entries = read_entries(bundle)
    entries[5], entries[6] = entries[6], entries[5]
    write_entries(bundle, entries)
    e = refuse(bundle, root, store, MemberError, built)
    assert "out of order" in str(e)


def test_verify_refuses_oversized_member_without_reading_it(bundle, root, store, built):
    entries = read_entries(bundle)
    entries[5] = Entry(entries[5].name, entries[5].data + b"\0" * 4096)
    write_entries(bundle, entries)
    e = refuse(bundle, root, store, MemberError, built)
    assert "oversized" in str(e)


@pytest.mark.parametrize(("kind", "word"), [
    (tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
    (tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"),
    (tarfile.DIRTYPE, "directory"), (tarfile.FIFOTYPE, "FIFO"),
    (tarfile.XHDTYPE, "pax"), (tarfile.GNUTYPE_LONGNAME, "GNU long-name"),
])
def test_verify_refuses_links_devices_and_extension_headers(bundle, root, store, built, kind,
                                                            word):
    entries = read_entries(bundle)
    name = entries[5].name
    entries[5] = Entry(name, b"", kind, linkname="/etc/shadow", size=0)
    write_entries(bundle, entries)
    e = refuse(bundle, root, store, MemberError, built)
    assert word in str(e)


@pytest.mark.parametrize("name", ["/etc/passwd", "../evil", "blobs/../../evil", "a//b", "./x"])
def test_verify_refuses_unsafe_member_names(bundle, root, store, built, name):
    entries = read_entries(bundle)
    entries.insert(3, Entry(name, b"x"))
    write_entries(bundle, entries)
    refuse(bundle, root, store, MemberError, built)


def test_verify_refuses_signed_manifest_listing_an_unsafe_path(bundle, root, store, built,
                                                               vendor):
    def edit(doc: dict) -> None:
        doc["members"][0]["path"] = "../../etc/cron.d/x"

    write_entries(bundle, resign(read_entries(bundle), [vendor], edit))
    e = refuse(bundle, root, store, ManifestError, built)
    assert "unsafe" in str(e)


def test_verify_refuses_blob_not_named_by_its_digest(bundle, root, store, built, vendor):
    def edit(doc: dict) -> None:
        doc["members"][3]["path"] = "blobs/sha256/" + "a" * 64

    write_entries(bundle, resign(read_entries(bundle), [vendor], edit))
    refuse(bundle, root, store, ManifestError, built)


def test_verify_refuses_full_bundle_whose_images_need_absent_blobs(bundle, root, store, built,
                                                                   vendor):
    def edit(doc: dict) -> None:
        doc["members"] = [m for m in doc["members"] if m["path"] != doc["members"][3]["path"]]

    entries = read_entries(bundle)
    write_entries(bundle, resign([*entries[:5], *entries[6:]], [vendor], edit))
    refuse(bundle, root, store, ManifestError, built)


def test_verify_refuses_delta_whose_base_blobs_are_absent(bundle, root, store, built, vendor):
    def edit(doc: dict) -> None:
        doc["base"] = {"sequence": 0, "manifest_digest": "sha256:" + "1" * 64}
        doc["members"] = [m for m in doc["members"] if m["path"] != doc["members"][3]["path"]]

    entries = read_entries(bundle)
    write_entries(bundle, resign([*entries[:5], *entries[6:]], [vendor], edit))
    e = refuse(bundle, root, store, DeltaBaseError, built)
    assert "install the base" in str(e)
    assert not store.digests()


# -- not a bundle -------------------------------------------------------------
def test_verify_refuses_empty_file(tmp_path, root, store):
    (tmp_path / "empty.tar").write_bytes(b"")
    e = refuse(tmp_path / "empty.tar", root, store, BundleFormatError)
    assert "empty" in str(e)


def test_verify_refuses_random_file(tmp_path, root, store):
    (tmp_path / "random.tar").write_bytes(os.urandom(64 * 1024))
    e = refuse(tmp_path / "random.tar", root, store, BundleFormatError)
    assert "not a bundle" in str(e)


def test_verify_refuses_plain_tar_of_other_files(tmp_path, root, store):
    write_entries(tmp_path / "other.tar", [Entry("etc/hosts", b"127.0.0.1 localhost\n")])
    refuse(tmp_path / "other.tar", root, store, SignatureError)


def test_verify_refuses_manifest_over_the_cap(tmp_path, root, store):
    path = tmp_path / "big.tar"
    entries = [Entry(MANIFEST_PATH, b" " * (MAX_MANIFEST_BYTES + 1))]
    write_entries(path, entries)
    e = refuse(path, root, store, ManifestError)
    assert "cap" in str(e)


def test_verify_refuses_envelope_over_the_cap(bundle, root, store, built):
    entries = read_entries(bundle)
    entries[1] = Entry(ENVELOPE_PATH, b" " * (5 * 1024 * 1024))
    write_entries(bundle, entries)
    e = refuse(bundle, root, store, SignatureError, built)
    assert "cap" in str(e)


def test_verify_refuses_envelope_that_is_not_json(bundle, root, store, built):
    entries = read_entries(bundle)
    entries[1] = Entry(ENVELOPE_PATH, b"{not json")
    write_entries(bundle, entries)
    refuse(bundle, root, store, SignatureError, built)


def test_envelope_roundtrip_in_bundle_names_signer(bundle, built, vendor):
    env = Envelope.from_json(read_entries(bundle)[1].data)
    assert env.payload_type == PAYLOAD_TYPE
    assert env.key_ids == [vendor.key_id]


def test_keys_fixture_distinct(vendor: PrivateKey, other_key: PrivateKey) -> None:
    assert vendor.key_id != other_key.key_id


# -- trust root rotation riding in a bundle ------------------------------------
def _bundle_with_new_root(tmp_path: Path, signer: PrivateKey, root_doc: bytes) -> Path:
    from bundler.build import build_bundle
    from bundler.spec import load_spec
    from tests.bundle.conftest import make_spec_dir

    spec = make_spec_dir(tmp_path / "spec")
    (tmp_path / "spec" / "root-v2.json").write_bytes(root_doc)
    spec.write_text(spec.read_text() + "trust_root: root-v2.json\n")
    build_bundle(load_spec(spec), tmp_path / "b.tar", [signer])
    return tmp_path / "b.tar"


def test_bundle_may_carry_a_valid_root_rotation(tmp_path, root, vendor, other_key):
    from signing import rotate_root, sign_root

    new = TrustRoot.create([other_key.public_key], version=2)
    path = _bundle_with_new_root(tmp_path, vendor, sign_root(new, [vendor, other_key]))
    v = verify_bundle(path, root, now=NOW.replace(year=2099), allow_expired=True,
                      max_expired=timedelta(days=50000))
    assert v.manifest.trust_root is not None
    assert rotate_root(root, v.manifest.trust_root.encode()) == new


def test_verify_refuses_a_rotation_not_signed_by_the_current_root(tmp_path, root, vendor,
                                                                  other_key, store):
    from signing import sign_root

    new = TrustRoot.create([other_key.public_key], version=2)
    path = _bundle_with_new_root(tmp_path, vendor, sign_root(new, [other_key]))
    with pytest.raises(SignatureError, match="rotation"):
        verify_bundle(path, root, now=NOW.replace(year=2099), allow_expired=True,
                      max_expired=timedelta(days=50000), store=store)
    assert not store.digests()
