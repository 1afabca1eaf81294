"""What a field engineer reads about trust: signer names, fingerprints, the older-bundle advice."""

from __future__ import annotations

from appliance.errors import RollbackError
from installer_tui.format import explain
from signing import PrivateKey, TrustRoot
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import process_site
from tests.site.releasekit import free_port_pair


def test_keys_root_names_its_signer(tmp_path, capsys):
    from appliance.cli import main
    key = PrivateKey.generate()
    pub = tmp_path / "vendor.pub"
    pub.write_bytes(key.public_key.to_pem())
    out = tmp_path / "root.json"
    assert main(["keys", "root", "--pub", str(pub), "--name", "Acme Imaging release key",
                 "-o", str(out)]) == 0
    root = TrustRoot.from_json(out.read_bytes())
    assert root.names == {key.key_id: "Acme Imaging release key"}
    assert f"{key.public_key.fingerprint}  Acme Imaging release key" in capsys.readouterr().out


def test_headless_install_with_trust_prints_the_fingerprint_first(tmp_path, capsys):
    from appliance.cli import main
    ps = process_site(tmp_path, vendor(tmp_path))
    b = make_bundle(ps.tmp, ps.vendor, 1, port=free_port_pair())
    try:
        import os
        os.environ["APPLIANCE_RUNTIME_COMMAND"] = ps.cli_env()["APPLIANCE_RUNTIME_COMMAND"]
        code = main(["install", str(b), "--yes", "--trust", str(ps.vendor.root_path),
                     *ps.cli_args()])
    finally:
        os.environ.pop("APPLIANCE_RUNTIME_COMMAND", None)
        ps.stop_all()
    out = capsys.readouterr().out
    assert code == 0
    first = out.index("compare each fingerprint with the vendor's letter")
    assert f"{ps.vendor.key.public_key.fingerprint}  test vendor" in out[first:]
    assert first < out.index("release 1 is serving")


def test_an_older_bundle_is_not_called_a_bad_copy_and_the_key_is_named():
    meaning, todo = explain(RollbackError("bundle demo has sequence 1, not newer than 2"))
    assert "older than" in meaning and "fresh copy" not in todo
    assert "press s" in todo and "r to roll back" in todo and "appliance rollback" not in todo
