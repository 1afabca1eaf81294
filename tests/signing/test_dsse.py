"""DSSE envelopes: PAE, any number of signatures, thresholds where one key counts once."""

from __future__ import annotations

import base64
import json

import pytest

from signing import (
    BadSignatureError,
    Envelope,
    EnvelopeFormatError,
    PrivateKey,
    ThresholdError,
    TrustRoot,
    pae,
    sign,
    verify,
)

PT = "application/vnd.test+json"


@pytest.fixture(scope="module")
def keys() -> list[PrivateKey]:
    return [PrivateKey.generate() for _ in range(3)]


def test_pae_matches_the_dsse_spec_example():
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


def test_sign_and_verify_round_trip_through_json(keys):
    env = sign(b'{"a":1}', PT, keys[:2])
    again = Envelope.from_json(env.to_json())
    root = TrustRoot.create([k.public_key for k in keys], threshold=2)
    assert verify(again, root, PT) == b'{"a":1}'
    assert again.key_ids == [keys[0].key_id, keys[1].key_id]


def test_threshold_counts_distinct_keys(keys):
    root = TrustRoot.create([k.public_key for k in keys], threshold=2)
    with pytest.raises(ThresholdError, match="1 distinct"):
        verify(sign(b"p", PT, [keys[0]]), root, PT)
    with pytest.raises(ThresholdError):
        verify(sign(b"p", PT, [keys[0], keys[0], keys[0]]), root, PT)
    assert verify(sign(b"p", PT, [keys[2], keys[0]]), root, PT) == b"p"


def test_untrusted_signatures_do_not_count(keys):
    root = TrustRoot.create([keys[0].public_key, keys[1].public_key], threshold=2)
    stranger = PrivateKey.generate()
    with pytest.raises(ThresholdError):
        verify(sign(b"p", PT, [keys[0], stranger]), root, PT)
    with pytest.raises(BadSignatureError, match="no signature verifies"):
        verify(sign(b"p", PT, [stranger]), root, PT)


def test_a_signature_claiming_a_trusted_keyid_but_made_by_another_key_fails(keys):
    root = TrustRoot.create([keys[0].public_key])
    forged = sign(b"p", PT, [keys[1]])
    doc = json.loads(forged.to_json())
    doc["signatures"][0]["keyid"] = keys[0].key_id
    with pytest.raises(BadSignatureError):
        verify(Envelope.from_json(json.dumps(doc).encode()), root, PT)


def test_tampered_payload_or_type_fails(keys):
    root = TrustRoot.create([keys[0].public_key])
    doc = json.loads(sign(b"pay", PT, [keys[0]]).to_json())
    doc["payload"] = base64.b64encode(b"PAY").decode()
    with pytest.raises(BadSignatureError):
        verify(Envelope.from_json(json.dumps(doc).encode()), root, PT)
    with pytest.raises(BadSignatureError, match="payload type"):
        verify(sign(b"pay", "text/plain", [keys[0]]), root, PT)


def test_unsigned_envelope_fails(keys):
    root = TrustRoot.create([keys[0].public_key])
    with pytest.raises(BadSignatureError, match="unsigned"):
        verify(Envelope(PT, b"p", ()), root, PT)


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b'{"payloadType": 1, "payload": "", "signatures": []}',
    b'{"payloadType": "t", "payload": "@@@", "signatures": []}',
    b'{"payloadType": "t", "payload": "", "signatures": {}}',
    b'{"payloadType": "t", "payload": "", "signatures": [{"keyid": 1}]}',
    b'{"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": "%%"}]}',
])
def test_malformed_envelopes_are_refused(data):
    with pytest.raises(EnvelopeFormatError):
        Envelope.from_json(data)


def test_envelope_size_and_signature_count_caps():
    with pytest.raises(EnvelopeFormatError, match="cap"):
        Envelope.from_json(b" " * 100, max_bytes=10)
    many = {"payloadType": PT, "payload": "",
            "signatures": [{"keyid": "k", "sig": ""}] * 65}
    with pytest.raises(EnvelopeFormatError, match="over 64"):
        Envelope.from_json(json.dumps(many).encode())


def test_sign_needs_a_key():
    with pytest.raises(ValueError, match="at least one key"):
        sign(b"p", PT, [])
