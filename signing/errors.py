"""Every failure the signing package can raise. One root, precise leaves."""


class SigningError(Exception):
    """Root of all signing and trust errors."""


class KeyFormatError(SigningError):
    """A key file is not an Ed25519 key in the expected encoding."""


class PassphraseError(KeyFormatError):
    """A private key is encrypted and the passphrase is missing or wrong."""


class EnvelopeFormatError(SigningError):
    """A DSSE envelope is not well-formed JSON of the expected shape or size."""


class BadSignatureError(SigningError):
    """No signature in the envelope verifies against a trusted key."""


class ThresholdError(BadSignatureError):
    """Fewer distinct trusted keys signed than the trust root's threshold."""


class TrustRootFormatError(SigningError):
    """A trust root document is malformed."""


class RootRotationError(SigningError):
    """A new trust root is not a valid successor of the current one."""
