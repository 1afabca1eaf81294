"""The site certificate: made for the host, trusted by unmodified tritonclient, checked on input."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import TlsError
from appliance.frontdoor import config, tls
from tests.enginekit import wait_for
from tests.frontdoor.kit import SERVICE, Proxy, Site, door
from tests.runtime.conftest import Server

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_tritonclient_with_ssl_and_the_site_ca_passes_with_the_token(
        site: Site, runtimes: list[Server],
        proxy_for: Callable[[list[config.ServiceDoor]], Proxy]) -> None:
    import gevent.ssl
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    proxy = proxy_for([door(site, runtimes[0])])
    wait_for(lambda: proxy.api.servers(config.backend_name(SERVICE))["a"].up, 20, "slot a up")
    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{site.port}", ssl=True, ssl_options={"ca_certs": str(site.cert.ca_file)},
        ssl_context_factory=gevent.ssl.create_default_context)
    try:
        assert client.is_server_ready()
        x = httpclient.InferInput("x", [2, 64], "FP32")
        x.set_data_from_numpy(np.ones((2, 64), dtype=np.float32))
        with pytest.raises(InferenceServerException, match="token"):
            client.infer("mlp", [x])
        result = client.infer("mlp", [x], headers=site.auth)
        assert result.as_numpy("y").shape == (2, 10)
    finally:
        client.close()


def test_site_certificate_is_p256_for_the_host_names_and_addresses(tmp_path: Path) -> None:
    cert = tls.make_site_certificate(tmp_path, ["scanner-gw", "10.1.2.3", "::1"], NOW)
    leaf = tls.read_leaf(cert.pem_file)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["scanner-gw"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "::1"]
    assert cert.fingerprint == tls.fingerprint(leaf)
    assert len(cert.fingerprint.split(":")) == 32
    assert (cert.pem_file.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / tls.CA_KEY).stat().st_mode & 0o777) == 0o600


def test_expiry_warning_starts_30_days_before(tmp_path: Path) -> None:
    cert = tls.make_site_certificate(tmp_path, ["h"], NOW)
    leaf = tls.read_leaf(cert.pem_file)
    end = leaf.not_valid_after_utc
    assert tls.expiry_warning(leaf, end - dt.timedelta(days=31)) is None
    warning = tls.expiry_warning(leaf, end - dt.timedelta(days=29, hours=1))
    assert warning is not None and "expires in 29 days" in warning
    expired = tls.expiry_warning(leaf, end + dt.timedelta(days=1))
    assert expired is not None and "expired" in expired


def test_hospital_pair_is_checked(tmp_path: Path) -> None:
    ours = tls.make_site_certificate(tmp_path / "ours", ["h"], NOW)
    other = tls.make_site_certificate(tmp_path / "other", ["h"], NOW)
    pem = ours.pem_file.read_text()
    cert_only = tmp_path / "cert.pem"
    cert_only.write_text(pem[:pem.index("-----BEGIN PRIVATE KEY")])
    key = tmp_path / "key.pem"
    key.write_text(pem[pem.index("-----BEGIN PRIVATE KEY"):])
    wrong_key = tmp_path / "wrong.pem"
    wrong_key.write_text(other.pem_file.read_text().split("-----END CERTIFICATE-----\n")[-1])

    installed = tls.install_pair(tmp_path / "site", cert_only, key, NOW)
    assert installed.fingerprint == ours.fingerprint
    with pytest.raises(TlsError, match="is not the key of"):
        tls.load_pair(cert_only, wrong_key, NOW)
    with pytest.raises(TlsError, match="expired on"):
        tls.load_pair(cert_only, key, NOW + dt.timedelta(days=tls.LEAF_DAYS + 1))
    with pytest.raises(TlsError, match="not valid before"):
        tls.load_pair(cert_only, key, NOW - dt.timedelta(days=1))
    with pytest.raises(TlsError, match="no PEM certificate"):
        tls.load_pair(key, key, NOW)
    with pytest.raises(TlsError, match="not an unencrypted PEM private key"):
        tls.load_pair(cert_only, cert_only, NOW)
    with pytest.raises(TlsError, match="cannot read"):
        tls.load_pair(tmp_path / "missing.pem", key, NOW)


def test_certificate_replaced_through_the_runtime_api(
        site: Site, runtimes: list[Server],
        proxy_for: Callable[[list[config.ServiceDoor]], Proxy], tmp_path: Path) -> None:
    import socket
    import ssl

    proxy = proxy_for([door(site, runtimes[0])])
    new = tls.make_site_certificate(tmp_path / "new", ["localhost", "127.0.0.1"],
                                    dt.datetime.now(dt.UTC))

    def served() -> str:
        ctx = ssl.create_default_context(cafile=str(new.ca_file))
        ctx.load_verify_locations(cafile=str(site.cert.ca_file))
        with socket.create_connection(("127.0.0.1", site.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return tls.fingerprint(x509.load_der_x509_certificate(der))

    assert served() == site.cert.fingerprint
    proxy.api.replace_certificate(site.cert.pem_file, new.pem_file.read_text())
    assert served() == new.fingerprint
