"""Ed25519 keys: generation, PEM encoding, key ids and human fingerprints."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from signing.errors import KeyFormatError, PassphraseError

MAX_KEY_FILE_BYTES = 16 * 1024


def fingerprint(key_id: str) -> str:
    """Format a key id for comparison by eye: eight groups of four hex digits."""
    head = key_id[:32]
    return " ".join(head[i : i + 4] for i in range(0, len(head), 4))


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key; its id is the sha256 of the 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFormatError(f"Ed25519 public key must be 32 bytes, got {len(self.raw)}")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_id)

    def to_pem(self) -> bytes:
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def to_b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        try:
            return cls(base64.b64decode(text, validate=True))
        except (ValueError, TypeError) as e:
            raise KeyFormatError(f"public key is not valid base64: {e}") from e

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Load a PEM SubjectPublicKeyInfo Ed25519 key.

        Raises:
            KeyFormatError: not PEM, or not Ed25519.
        """
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyFormatError("public key file is larger than any Ed25519 PEM key")
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise KeyFormatError(f"not a PEM public key: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"expected an Ed25519 key, got {type(key).__name__}")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when `signature` is this key's signature over `message`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class PrivateKey:
    """An Ed25519 signing key. Never logged, never printed."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"PrivateKey(key_id={self.public_key.key_id[:16]}...)"

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
        algorithm: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> PrivateKey:
        """Load a PKCS#8 PEM Ed25519 private key.

        Raises:
            PassphraseError: encrypted and the passphrase is missing or wrong.
            KeyFormatError: not a PEM Ed25519 private key.
        """
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyFormatError("private key file is larger than any Ed25519 PEM key")
        encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
        if encrypted and not passphrase:
            raise PassphraseError("private key is encrypted: give its passphrase")
        try:
            key = serialization.load_pem_private_key(
                data, password=passphrase if encrypted else None
            )
        except (ValueError, TypeError) as e:
            if encrypted:
                raise PassphraseError("wrong passphrase for the private key") from e
            raise KeyFormatError(f"not a PEM private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"expected an Ed25519 key, got {type(key).__name__}")
        return cls(key)
