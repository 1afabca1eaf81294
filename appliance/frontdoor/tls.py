"""The site certificate: a site CA and a leaf for the host's names and addresses (ECDSA P-256).

Clients (tritonclient `ssl=True`, curl, Python's ssl) trust the CA file; the leaf is what
HAProxy serves. A CA rather than a self-signed leaf because strict verifiers (Python 3.13's
VERIFY_X509_STRICT, OpenSSL 3) refuse a leaf that signs itself, and because a new leaf
(new address, renewal) can be issued later without every client taking a new file.
"now" is a parameter everywhere, so tests need no clock tricks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.errors import TlsError
from appliance.frontdoor.token import SECRET_MODE
from appliance.fsutil import atomic_write

LEAF_DAYS = 825  # what browsers and most TLS stacks still accept for a leaf
CA_DAYS = 3650
WARN_DAYS = 30

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SITE_PEM = "site.pem"  # leaf + key in one file, as HAProxy's `crt` wants it


@dataclass(frozen=True)
class SiteCertificate:
    """Where the site's TLS files are, and what a person compares by eye."""

    ca_file: Path
    pem_file: Path
    fingerprint: str
    not_after: dt.datetime


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated upper-case hex (like openssl prints)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    """Whole days until the certificate expires (negative once expired)."""
    return (cert.not_valid_after_utc - now).days


def expiry_warning(cert: x509.Certificate, now: dt.datetime, warn_days: int = WARN_DAYS
                   ) -> str | None:
    """A one-line warning when the certificate expires within `warn_days`, else None."""
    left = days_left(cert, now)
    if left >= warn_days:
        return None
    when = cert.not_valid_after_utc.date().isoformat()
    if left < 0:
        return f"the site certificate expired on {when}: replace it with `appliance tls replace`"
    return (f"the site certificate expires in {left} days ({when}): "
            "replace it with `appliance tls replace`")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sans(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_site_certificate(directory: Path, names: list[str], now: dt.datetime,
                          site: str = "appliance") -> SiteCertificate:
    """Make a site CA and a leaf for `names` (host names and IP addresses) under `directory`.

    Writes ca.pem (give it to clients), ca.key and site.pem (0600).

    Raises:
        TlsError: no names were given.
    """
    if not names:
        raise TlsError("no host names or addresses for the site certificate: pass --tls-name")
    start = now - dt.timedelta(minutes=5)  # a client clock a little behind still accepts it
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{site} site CA"))
        .issuer_name(_name(f"{site} site CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_sans(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem).decode()
    atomic_write(directory / CA_KEY, _key_pem(ca_key).encode(), SECRET_MODE)
    atomic_write(directory / SITE_PEM,
                 (leaf.public_bytes(pem).decode() + ca_pem + _key_pem(key)).encode(), SECRET_MODE)
    atomic_write(directory / CA_CERT, ca_pem.encode())
    return SiteCertificate(directory / CA_CERT, directory / SITE_PEM, fingerprint(leaf),
                           leaf.not_valid_after_utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_pair(cert_path: Path, key_path: Path, now: dt.datetime) -> tuple[str, x509.Certificate]:
    """Check a hospital's `--tls-cert/--tls-key` pair; return the combined PEM and the leaf.

    The cert file may hold the chain after the leaf; it is kept as given.

    Raises:
        TlsError: unreadable, not PEM, key does not match, not yet valid or expired.
    """
    try:
        cert_pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as e:
        raise TlsError(f"cannot read {e.filename}: {e.strerror}") from e
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise TlsError(f"{cert_path} holds no PEM certificate: pass the server certificate "
                       "(and its chain) in PEM") from e
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsError(f"{key_path} is not an unencrypted PEM private key: export it without "
                       "a passphrase (HAProxy cannot prompt for one)") from e
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TlsError(f"{key_path} is not the key of {cert_path}: pass the matching pair")
    if leaf.not_valid_before_utc > now:
        raise TlsError(f"{cert_path} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d} "
                       "(check the site clock)")
    if leaf.not_valid_after_utc <= now:
        raise TlsError(f"{cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: "
                       "ask for a renewed certificate")
    text = cert_pem.decode()
    return (text if text.endswith("\n") else text + "\n") + key_pem.decode(), leaf


def install_pair(directory: Path, cert_path: Path, key_path: Path, now: dt.datetime
                 ) -> SiteCertificate:
    """Check the hospital's pair and write it as the site PEM (0600); the CA file is the chain.

    Raises:
        TlsError: see `load_pair`.
    """
    combined, leaf = load_pair(cert_path, key_path, now)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / SITE_PEM, combined.encode(), SECRET_MODE)
    return SiteCertificate(cert_path, directory / SITE_PEM, fingerprint(leaf),
                           leaf.not_valid_after_utc)


def read_leaf(pem_file: Path) -> x509.Certificate:
    """The first certificate in a PEM file (the served leaf).

    Raises:
        TlsError: unreadable or no certificate in it.
    """
    try:
        return x509.load_pem_x509_certificates(pem_file.read_bytes())[0]
    except (OSError, ValueError) as e:
        raise TlsError(f"cannot read a certificate from {pem_file}: {e}") from e
