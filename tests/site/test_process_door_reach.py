"""What a person reads after an install behind the front door on the process engine is
what works: `appliance status` shows the stable `https://<LAN address>:<port>` URL, each
model's infer path and a curl line that answers when pasted into a shell; the hospital's
certificate replaces the site's under load and status warns before it expires; and a
fallback answering for its service is in the site's audit trail, from start to end, with
counts. Real HAProxy, real runtimes as processes, the installer as a subprocess."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.site import audit
from appliance.site.door import lan_address
from tests.e2e.doorkit import steady_load
from tests.e2e.kit import cli_env
from tests.enginekit import need, wait_for
from tests.image.fixtures import proxy_image_tar  # noqa: F401 - the door fixture needs it
from tests.site.test_process_frontdoor import ProcDoor, door, serving  # noqa: F401

pytestmark = pytest.mark.slow


def test_status_shows_the_stable_url_infer_paths_and_a_curl_line_that_answers(
        serving: ProcDoor):  # noqa: F811
    need("curl")
    r = serving.cli("status")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    url = f"https://{lan_address()}:{serving.vendor.port}"
    lines = r.stdout.splitlines()
    assert any(x.strip() == f"mlp: POST {url}/v2/models/mlp/infer" for x in lines), r.stdout
    assert "certificate SHA-256 " in r.stdout and "CA file for clients: " in r.stdout
    curl = next(x for x in lines if "try: curl" in x).split("try: ", 1)[1]
    assert f"--cacert {serving.root / 'frontdoor'}" in curl and "Authorization: Bearer" in curl
    assert serving.token() not in r.stdout  # the token is named by its file, never printed
    # pasted as it is shown: the site's CA verifies the LAN address, the token is taken
    answer = subprocess.run(["bash", "-c", f"{curl} --silent --show-error --fail"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["name"] == "mlp"
    doc = json.loads(serving.cli("status", "--json").stdout)
    assert doc["urls"] == {"mlp": url}


def hospital_pair(directory: Path, days: int) -> tuple[Path, Path, str]:
    """A certificate of the hospital's own (self-signed, ECDSA P-256) for this host's
    addresses, valid for `days` more days; its files and SHA-256 fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacs-gateway.hospital.example")])
    addrs = {"127.0.0.1", lan_address()}
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ip_address(a)) for a in sorted(addrs)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "hospital.pem", directory / "hospital.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    fp = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return cert_path, key_path, fp


def test_hospital_certificate_replaces_the_sites_under_load_and_status_warns_of_expiry(
        serving: ProcDoor):  # noqa: F811
    before = serving.cli("status").stdout
    assert "the site certificate expires" not in before
    cert, key, fp = hospital_pair(serving.vendor.work, days=10)
    load = steady_load(serving.root, serving.vendor.port).start()
    try:
        wait_for(lambda: load.report.sent >= 30, 30, "the load's first 30 requests")
        r = subprocess.run([sys.executable, "-m", "appliance", "tls", "replace", "--cert",
                            str(cert), "--key", str(key), "--root", str(serving.root)],
                           env=cli_env(), capture_output=True, text=True, timeout=120,
                           check=False)
        after = load.report.sent
        wait_for(lambda: load.report.sent >= after + 30, 30, "30 requests after the replace")
    finally:
        report = load.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert fp in r.stdout
    assert report.sent >= 60 and report.failures == [] and report.reconnects == 0, \
        report.summary()
    # a new client that trusts only the hospital's certificate gets it at once
    ctx = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", serving.vendor.port, context=ctx,
                                       timeout=10)
    try:
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    status = serving.cli("status")
    assert "the site certificate expires in 9 days" in status.stdout + status.stderr or \
        "the site certificate expires in 10 days" in status.stdout + status.stderr, status
    assert fp in status.stdout
    doc = json.loads(serving.cli("status", "--json").stdout)
    assert doc["certificate_warning"].startswith("the site certificate expires in ")


def _events(d: ProcDoor) -> list[audit.AuditEntry]:
    return [e for e in audit.verify(d.root) if e.event.startswith("fallback_")]


def test_fallback_answering_on_the_process_engine_is_audited_with_its_counts(
        door: ProcDoor):  # noqa: F811
    r = door.install(door.vendor.build(1, seed=0, fallback=True))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    child = int((door.root / "releases" / "1" / "run" / "mlp.child").read_text())
    assert door.served_by() == "main"
    assert door.cli("status").returncode == 0
    assert _events(door) == []
    os.kill(child, signal.SIGSTOP)  # alive but answering nothing: its health check fails
    try:
        wait_for(lambda: door.served_by() == "fallback", 30, "the fallback to answer")
        for _ in range(4):
            assert door.served_by() == "fallback"
        text = door.cli("status").stdout  # status notices, as the watchdog would
        assert "mlp: answered by its fallback mlp-cpu NOW" in text, text
        started = _events(door)
        assert [e.event for e in started] == ["fallback_started"]
        assert started[0].fields["service"] == "mlp"
        assert started[0].fields["fallback"] == "mlp-cpu"
        assert started[0].fields["answered"] >= 5
    finally:
        os.kill(child, signal.SIGCONT)
    wait_for(lambda: door.served_by() == "main", 30, "the main runtime to answer again")
    doc = json.loads(door.cli("status", "--json").stdout)
    assert doc["fallback_answers"]["mlp"] >= 5
    ended = _events(door)
    assert [e.event for e in ended] == ["fallback_started", "fallback_stopped"]
    assert ended[1].fields["answered"] >= 5
