"""Ed25519 keys: PEM round trips, passphrases, key ids and fingerprints."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signing import KeyFormatError, PassphraseError, PrivateKey, PublicKey, fingerprint


def test_key_id_is_sha256_of_the_raw_public_key():
    key = PrivateKey.generate()
    assert key.key_id == hashlib.sha256(key.public_key.raw).hexdigest()


def test_fingerprint_is_eight_groups_of_four_hex_digits():
    key = PrivateKey.generate()
    fp = key.public_key.fingerprint
    groups = fp.split(" ")
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    assert fp.replace(" ", "") == key.key_id[:32]
    assert fingerprint(key.key_id) == fp


def test_plain_private_key_round_trips_and_signs_the_same():
    key = PrivateKey.generate()
    again = PrivateKey.from_pem(key.to_pem())
    assert again.key_id == key.key_id
    assert key.public_key.verify(again.sign(b"m"), b"m")


def test_passphrase_key_needs_the_right_passphrase():
    key = PrivateKey.generate()
    pem = key.to_pem(b"correct horse")
    assert b"ENCRYPTED" in pem
    assert PrivateKey.from_pem(pem, b"correct horse").key_id == key.key_id
    with pytest.raises(PassphraseError, match="give its passphrase"):
        PrivateKey.from_pem(pem)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        PrivateKey.from_pem(pem, b"battery staple")


def test_private_key_repr_holds_no_secret():
    key = PrivateKey.generate()
    raw = key._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    assert raw.hex() not in repr(key) and "PRIVATE" not in repr(key)


def test_public_key_pem_round_trip():
    pub = PrivateKey.generate().public_key
    assert PublicKey.from_pem(pub.to_pem()) == pub
    assert PublicKey.from_b64(pub.to_b64()) == pub


def test_non_ed25519_and_garbage_keys_are_refused():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    with pytest.raises(KeyFormatError, match="Ed25519"):
        PrivateKey.from_pem(pem)
    pub_pem = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFormatError, match="Ed25519"):
        PublicKey.from_pem(pub_pem)
    with pytest.raises(KeyFormatError):
        PrivateKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFormatError, match="larger"):
        PrivateKey.from_pem(b"x" * 20000)
    with pytest.raises(KeyFormatError):
        PublicKey(b"short")


def test_verify_rejects_other_message_and_other_key():
    a, b = PrivateKey.generate(), PrivateKey.generate()
    sig = a.sign(b"message")
    assert a.public_key.verify(sig, b"message")
    assert not a.public_key.verify(sig, b"messagE")
    assert not b.public_key.verify(sig, b"message")
