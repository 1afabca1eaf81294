"""The front door's files in the site root: made at first install, kept after, replaced on ask."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from pathlib import Path

from appliance.frontdoor import config, site, tls, token
from tests.enginekit import need

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_first_install_makes_files_and_later_installs_keep_them(tmp_path: Path) -> None:
    first = site.prepare(tmp_path, ["gw", "10.0.0.5"], NOW)
    assert first.token_made and first.ca_file.exists()
    assert (first.conf_dir / tls.SITE_PEM).stat().st_mode & 0o777 == 0o600
    assert not (first.conf_dir / "ca.key").exists()  # the CA key is not in the proxy's mount
    assert (first.conf_dir / site.TOKEN_MAP).read_text() == token.render_token_map([first.token])
    again = site.prepare(tmp_path, ["gw", "10.0.0.5"], NOW)
    assert not again.token_made
    assert (again.token, again.fingerprint) == (first.token, first.fingerprint)


def test_hospital_pair_replaces_the_served_certificate(tmp_path: Path) -> None:
    site.prepare(tmp_path, ["gw"], NOW)
    theirs = tls.make_site_certificate(tmp_path / "hospital", ["gw.hospital.example"], NOW)
    pem = theirs.pem_file.read_text()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text(pem[:pem.index("-----BEGIN PRIVATE KEY")])
    key.write_text(pem[pem.index("-----BEGIN PRIVATE KEY"):])
    files = site.prepare(tmp_path, ["gw"], NOW, tls_cert=cert, tls_key=key)
    assert files.fingerprint == theirs.fingerprint
    assert tls.fingerprint(tls.read_leaf(files.conf_dir / tls.SITE_PEM)) == theirs.fingerprint


def test_written_config_passes_haproxy_check(tmp_path: Path) -> None:
    haproxy = need("haproxy")
    files = site.prepare(tmp_path, ["127.0.0.1"], dt.datetime.now(dt.UTC))
    proxy = site.settings(files, in_container=False)
    site.write_config(files, [config.ServiceDoor("mlp", 18443, servers={"a": "127.0.0.1:9000"})],
                      dataclasses.replace(proxy, maxconn=1000))
    proc = subprocess.run([haproxy, "-c", "-f", str(files.config)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    inside = site.settings(files, in_container=True)
    assert str(inside.tls_pem) == "/etc/appliance-proxy/site.pem"
    assert str(inside.socket) == "/run/appliance-proxy/admin.sock"
