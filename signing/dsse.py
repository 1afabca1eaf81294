"""DSSE envelopes (https://github.com/secure-systems-lab/dsse): sign and verify.

Callers never see raw signature bytes: `sign` returns an envelope and `verify`
returns the payload it vouches for, or raises.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from signing import jsonbound
from signing.errors import BadSignatureError, EnvelopeFormatError, ThresholdError
from signing.keys import PrivateKey, PublicKey


class Signers(Protocol):
    """Who may sign and how many must: a trust root (`signing.trust.TrustRoot`)."""

    @property
    def version(self) -> int: ...
    @property
    def threshold(self) -> int: ...
    @property
    def keys(self) -> Mapping[str, PublicKey]: ...


MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_SIGNATURES = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: the exact bytes a DSSE signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @property
    def key_ids(self) -> list[str]:
        """Key ids the envelope claims signed it (unverified hints)."""
        return [s.keyid for s in self.signatures]

    @classmethod
    def from_json(cls, data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse an envelope without trusting it.

        Raises:
            EnvelopeFormatError: too large, not JSON, or not the DSSE shape.
        """
        if len(data) > max_bytes:
            raise EnvelopeFormatError(
                f"signature envelope is {len(data)} bytes, over the {max_bytes}-byte cap"
            )
        try:
            doc = jsonbound.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise EnvelopeFormatError(f"signature envelope is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise EnvelopeFormatError("signature envelope is not a JSON object")
        payload_type = doc.get("payloadType")
        payload_b64 = doc.get("payload")
        sigs = doc.get("signatures")
        if not isinstance(payload_type, str) or not isinstance(payload_b64, str):
            raise EnvelopeFormatError("signature envelope lacks payloadType or payload")
        if not isinstance(sigs, list):
            raise EnvelopeFormatError("signature envelope lacks a signatures list")
        if len(sigs) > MAX_SIGNATURES:
            raise EnvelopeFormatError(f"signature envelope has over {MAX_SIGNATURES} signatures")
        try:
            payload = base64.b64decode(payload_b64, validate=True)
            signatures = tuple(_parse_signature(s) for s in sigs)
        except (binascii.Error, ValueError) as e:
            raise EnvelopeFormatError(f"signature envelope has bad base64: {e}") from e
        return cls(payload_type, payload, signatures)


def _parse_signature(doc: Any) -> Signature:
    if not isinstance(doc, dict):
        raise EnvelopeFormatError("a signature entry is not a JSON object")
    keyid, sig = doc.get("keyid"), doc.get("sig")
    if not isinstance(keyid, str) or not isinstance(sig, str):
        raise EnvelopeFormatError("a signature entry lacks keyid or sig")
    return Signature(keyid, base64.b64decode(sig, validate=True))


def sign(payload: bytes, payload_type: str, keys: Sequence[PrivateKey]) -> Envelope:
    """Sign `payload` with every key in `keys`."""
    if not keys:
        raise ValueError("sign() needs at least one key")
    message = pae(payload_type, payload)
    sigs = tuple(Signature(k.key_id, k.sign(message)) for k in keys)
    return Envelope(payload_type, payload, sigs)


def verified_key_ids(envelope: Envelope, root: Signers) -> set[str]:
    """Distinct trusted key ids whose signature over the envelope verifies."""
    message = pae(envelope.payload_type, envelope.payload)
    good: set[str] = set()
    for s in envelope.signatures:
        key = root.keys.get(s.keyid)
        if key is not None and s.keyid not in good and key.verify(s.sig, message):
            good.add(s.keyid)
    return good


def verify(envelope: Envelope, root: Signers, payload_type: str) -> bytes:
    """Return the payload once a threshold of distinct trusted keys signed it.

    Raises:
        BadSignatureError: wrong payload type, unsigned, or no trusted key verifies.
        ThresholdError: some but fewer than `root.threshold` distinct keys verify.
    """
    if envelope.payload_type != payload_type:
        raise BadSignatureError(
            f"envelope payload type is {envelope.payload_type!r}, expected {payload_type!r}"
        )
    if not envelope.signatures:
        raise BadSignatureError("envelope carries no signatures: the bundle is unsigned")
    good = verified_key_ids(envelope, root)
    if not good:
        raise BadSignatureError(
            "no signature verifies against a trusted key "
            f"(signed by {', '.join(k[:16] for k in envelope.key_ids)}; "
            f"trust root v{root.version} has {', '.join(k[:16] for k in root.keys)})"
        )
    if len(good) < root.threshold:
        raise ThresholdError(
            f"{len(good)} distinct trusted key(s) signed, trust root v{root.version} "
            f"needs {root.threshold}"
        )
    return envelope.payload
