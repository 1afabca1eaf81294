"""Trust roots: a set of keys and a threshold, and their signed rotation."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signing import jsonbound
from signing.dsse import Envelope, sign, verify
from signing.errors import (
    BadSignatureError,
    EnvelopeFormatError,
    KeyFormatError,
    RootRotationError,
    TrustRootFormatError,
)
from signing.keys import PrivateKey, PublicKey

ROOT_PAYLOAD_TYPE = "application/vnd.appliance.root.v1+json"
MAX_ROOT_BYTES = 512 * 1024


@dataclass(frozen=True)
class TrustRoot:
    """Keys a site trusts and how many of them must sign."""

    version: int
    threshold: int
    keys: Mapping[str, PublicKey]
    names: Mapping[str, str]

    def __post_init__(self) -> None:
        if self.version < 1:
            raise TrustRootFormatError(f"trust root version must be >= 1, got {self.version}")
        if not 1 <= self.threshold <= len(self.keys):
            raise TrustRootFormatError(
                f"trust root threshold {self.threshold} must be between 1 and its "
                f"{len(self.keys)} key(s)"
            )

    @classmethod
    def create(
        cls, keys: Sequence[PublicKey], threshold: int = 1, version: int = 1,
        names: Mapping[str, str] | None = None,
    ) -> TrustRoot:
        return cls(version, threshold, {k.key_id: k for k in keys}, dict(names or {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "appliance-trust-root",
            "version": self.version,
            "threshold": self.threshold,
            "keys": [
                {"keyid": kid, "public_key": k.to_b64(), "name": self.names.get(kid, "")}
                for kid, k in sorted(self.keys.items())
            ],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_dict(cls, doc: Any) -> TrustRoot:
        """Build a root from its JSON form.

        Raises:
            TrustRootFormatError: any field missing, of the wrong type, or inconsistent.
        """
        if not isinstance(doc, dict) or doc.get("type") != "appliance-trust-root":
            raise TrustRootFormatError("not an appliance trust root (type field missing)")
        version, threshold, entries = doc.get("version"), doc.get("threshold"), doc.get("keys")
        if not isinstance(version, int) or not isinstance(threshold, int):
            raise TrustRootFormatError("trust root version and threshold must be integers")
        if not isinstance(entries, list) or not entries:
            raise TrustRootFormatError("trust root lists no keys")
        keys: dict[str, PublicKey] = {}
        names: dict[str, str] = {}
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("public_key"), str):
                raise TrustRootFormatError("a trust root key entry lacks public_key")
            try:
                key = PublicKey.from_b64(e["public_key"])
            except KeyFormatError as err:
                raise TrustRootFormatError(f"trust root key is invalid: {err}") from err
            if e.get("keyid") not in (None, key.key_id):
                raise TrustRootFormatError(
                    f"trust root keyid {str(e.get('keyid'))[:16]} does not match its public key"
                )
            keys[key.key_id] = key
            if isinstance(e.get("name"), str) and e["name"]:
                names[key.key_id] = e["name"]
        return cls(version, threshold, keys, names)

    @classmethod
    def from_json(cls, data: bytes) -> TrustRoot:
        """Load a root file: a plain root document, or a root envelope signed by itself.

        Raises:
            TrustRootFormatError: malformed, or a signed root whose own keys do not
                reach its threshold.
        """
        if len(data) > MAX_ROOT_BYTES:
            raise TrustRootFormatError(f"trust root file is over {MAX_ROOT_BYTES} bytes")
        try:
            doc = jsonbound.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise TrustRootFormatError(f"trust root is not JSON: {e}") from e
        if isinstance(doc, dict) and "payloadType" in doc:
            try:
                env = Envelope.from_json(data, MAX_ROOT_BYTES)
                root = cls.from_dict(jsonbound.loads(env.payload))
                verify(env, root, ROOT_PAYLOAD_TYPE)
            except (EnvelopeFormatError, BadSignatureError, ValueError) as e:
                raise TrustRootFormatError(f"signed trust root does not verify: {e}") from e
            return root
        return cls.from_dict(doc)


def sign_root(root: TrustRoot, keys: Sequence[PrivateKey]) -> bytes:
    """A root envelope signed by `keys` (old and new keys for a rotation)."""
    return sign(root.to_json(), ROOT_PAYLOAD_TYPE, keys).to_json()


def rotate_root(current: TrustRoot, new_root_envelope: bytes) -> TrustRoot:
    """Accept a successor root signed by a threshold of the current root and of itself.

    Raises:
        RootRotationError: the new version is not exactly current+1, or either
            threshold is not met.
    """
    try:
        env = Envelope.from_json(new_root_envelope, MAX_ROOT_BYTES)
        new = TrustRoot.from_dict(jsonbound.loads(env.payload))
    except (EnvelopeFormatError, TrustRootFormatError, ValueError) as e:
        raise RootRotationError(f"new trust root is malformed: {e}") from e
    if new.version != current.version + 1:
        raise RootRotationError(
            f"new trust root is version {new.version}; after version {current.version} "
            f"only {current.version + 1} is accepted"
        )
    for label, root in (("current", current), ("new", new)):
        try:
            verify(env, root, ROOT_PAYLOAD_TYPE)
        except BadSignatureError as e:
            raise RootRotationError(
                f"new trust root v{new.version} is not signed by a threshold of the "
                f"{label} root: {e}"
            ) from e
    return new
