"""Ed25519 keys, DSSE envelopes and threshold trust roots. Imports nothing of ours."""

from signing.dsse import Envelope, pae, sign, verify
from signing.errors import (
    BadSignatureError,
    EnvelopeFormatError,
    KeyFormatError,
    PassphraseError,
    RootRotationError,
    SigningError,
    ThresholdError,
    TrustRootFormatError,
)
from signing.keys import PrivateKey, PublicKey, fingerprint
from signing.trust import TrustRoot, rotate_root, sign_root

__all__ = [
    "BadSignatureError",
    "Envelope",
    "EnvelopeFormatError",
    "KeyFormatError",
    "PassphraseError",
    "PrivateKey",
    "PublicKey",
    "RootRotationError",
    "SigningError",
    "ThresholdError",
    "TrustRoot",
    "TrustRootFormatError",
    "fingerprint",
    "pae",
    "rotate_root",
    "sign",
    "sign_root",
    "verify",
]
