"""`appliance bundle build|verify|inspect` and `make demo`, as a person runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.site.state import SiteState
from bundler.demo import make_demo_bundle
from signing import PrivateKey, TrustRoot
from tests.bundle.conftest import make_spec_dir


@pytest.fixture
def keyfiles(tmp_path: Path) -> tuple[Path, Path, PrivateKey]:
    key = PrivateKey.generate()
    (tmp_path / "vendor.key").write_bytes(key.to_pem(b"s3cret"))
    (tmp_path / "pass").write_text("s3cret\n")
    (tmp_path / "root.json").write_bytes(TrustRoot.create([key.public_key]).to_json())
    return tmp_path / "vendor.key", tmp_path / "root.json", key


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_verify_inspect_round_trip(tmp_path, keyfiles, capsys):
    key, root, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec")
    out = tmp_path / "b.tar"
    code, text, _ = run(capsys, "bundle", "build", "-f", str(spec), "-o", str(out),
                        "--key", str(key), "--passphrase-file", str(tmp_path / "pass"))
    assert code == 0 and "sequence 1, full" in text
    code, text, _ = run(capsys, "bundle", "verify", str(out), "--trust", str(root),
                        "--store", str(tmp_path / "site"))
    assert code == 0 and "verified test 1.0.0 sequence 1" in text
    assert (tmp_path / "site" / "blobs" / "sha256").is_dir()
    code, text, _ = run(capsys, "bundle", "inspect", str(out))
    assert code == 0 and text.startswith("UNVERIFIED")
    assert "alpha" in text and "svc-b" in text
    code, text, _ = run(capsys, "bundle", "inspect", "--json", str(out))
    assert json.loads(text)["manifest"]["sequence"] == 1


def test_verify_refusal_is_one_line_and_non_zero(tmp_path, keyfiles, capsys):
    _, root, _ = keyfiles
    (tmp_path / "junk.tar").write_bytes(b"\x17" * 4096)
    code, out, err = run(capsys, "bundle", "verify", str(tmp_path / "junk.tar"),
                         "--trust", str(root))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1


def test_verify_uses_the_site_state_for_rollback(tmp_path, keyfiles, capsys):
    key, root, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec")
    run(capsys, "bundle", "build", "-f", str(spec), "-o", str(tmp_path / "b.tar"), "--key",
        str(key), "--passphrase-file", str(tmp_path / "pass"), "-q")
    SiteState(highest_sequence=5).save(tmp_path / "site")
    code, _, err = run(capsys, "bundle", "verify", str(tmp_path / "b.tar"), "--trust",
                       str(root), "--site", str(tmp_path / "site"))
    assert code == 1 and "not newer than 5" in err


def test_verify_expiry_override_and_now(tmp_path, keyfiles, capsys):
    key, root, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec")
    run(capsys, "bundle", "build", "-f", str(spec), "-o", str(tmp_path / "b.tar"), "--key",
        str(key), "--passphrase-file", str(tmp_path / "pass"), "-q")
    later = ["--now", "2099-01-01T00:00:00Z"]
    code, _, err = run(capsys, "bundle", "verify", str(tmp_path / "b.tar"), "--trust",
                       str(root), *later)
    assert code == 1 and "--allow-expired" in err
    code, _, err = run(capsys, "bundle", "verify", str(tmp_path / "b.tar"), "--trust",
                       str(root), *later, "--allow-expired")
    assert code == 1 and "more than the 30 days --allow-expired accepts" in err
    code, _, _ = run(capsys, "bundle", "verify", str(tmp_path / "b.tar"), "--trust",
                     str(root), *later, "--allow-expired", "--expired-max-days", "40000")
    assert code == 0


def test_build_with_wrong_passphrase_fails_cleanly(tmp_path, keyfiles, capsys):
    key, _, _ = keyfiles
    (tmp_path / "bad").write_text("nope")
    spec = make_spec_dir(tmp_path / "spec")
    code, _, err = run(capsys, "bundle", "build", "-f", str(spec), "-o",
                       str(tmp_path / "b.tar"), "--key", str(key), "--passphrase-file",
                       str(tmp_path / "bad"))
    assert code == 1 and "passphrase" in err
    assert not (tmp_path / "b.tar").exists()


def test_build_split_and_base_flags(tmp_path, keyfiles, capsys):
    key, root, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec", beta=bytes(3 * 1024 * 1024))
    pw = ["--passphrase-file", str(tmp_path / "pass")]
    code, text, _ = run(capsys, "bundle", "build", "-f", str(spec), "-o",
                        str(tmp_path / "b.tar"), "--key", str(key), *pw, "--split", "1MiB")
    assert code == 0 and "in 4 file(s)" in text
    spec.write_text(spec.read_text().replace("sequence: 1", "sequence: 2"))
    code, text, _ = run(capsys, "bundle", "build", "-f", str(spec), "-o",
                        str(tmp_path / "d.tar"), "--key", str(key), *pw,
                        "--base", str(tmp_path / "b.tar.001"))
    assert code == 0 and "delta on sequence 1" in text
    code, _, err = run(capsys, "bundle", "verify", str(tmp_path / "d.tar"), "--trust",
                       str(root), "--store", str(tmp_path / "empty-site"))
    assert code == 1 and "install the base release first" in err


def test_bad_split_size_is_refused(tmp_path, keyfiles, capsys):
    key, _, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec")
    code, _, err = run(capsys, "bundle", "build", "-f", str(spec), "-o",
                       str(tmp_path / "b.tar"), "--key", str(key), "--split", "lots")
    assert code == 1 and "3900MiB" in err


def test_demo_builds_and_verifies_into_a_site(tmp_path):
    r = make_demo_bundle(tmp_path / "demo")
    assert r.verified.manifest.model("mlp").framework == "onnx"
    assert len(list((r.site / "blobs" / "sha256").iterdir())) == 3
    again = make_demo_bundle(tmp_path / "demo")  # reuses the key, same trust root
    assert again.verified.signers == r.verified.signers


def test_python_dash_m_appliance_runs_the_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "appliance", "bundle", "inspect",
                        str(tmp_path / "nothing.tar")], capture_output=True, text=True,
                       cwd=Path(__file__).parents[2], timeout=60)
    assert r.returncode == 1 and "no bundle at" in r.stderr


def test_tiny_split_size_is_refused(tmp_path, keyfiles, capsys):
    key, _, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec")
    code, _, err = run(capsys, "bundle", "build", "-f", str(spec), "-o",
                       str(tmp_path / "b.tar"), "--key", str(key), "--passphrase-file",
                       str(tmp_path / "pass"), "--split", "10KiB")
    assert code == 1 and "1 MiB minimum" in err


def test_progress_bar_draws_one_line_and_ends_it():
    import io

    from appliance.cli.progress import ProgressPrinter
    from appliance.progress import Progress

    out = io.StringIO()
    bar = ProgressPrinter(out, bar=True, width=10)
    bar(Progress("verify", 5 * 1024 * 1024, 10 * 1024 * 1024, "blobs/sha256/abc"))
    bar(Progress("verify", 10 * 1024 * 1024, 10 * 1024 * 1024, "done"))
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rverify  [#####.....]  50.0%")
    assert "100.0%" in text and "10.0 MiB" in text and text.endswith("\n")


@pytest.mark.parametrize(("text", "size"), [("3900MiB", 3900 * 2**20), ("4GB", 4 * 10**9),
                                            ("1048576", 2**20), ("2 GiB", 2 * 2**30)])
def test_parse_size(text, size):
    from appliance.units import parse_size

    assert parse_size(text) == size


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs /usr/bin/time")
def test_build_and_verify_memory_stays_flat_for_a_large_model(tmp_path, keyfiles):
    """A 384 MiB weights file (sparse: fast to read) through build and verify, each in
    its own process: peak RSS stays far below the model size."""
    key, root, _ = keyfiles
    spec = make_spec_dir(tmp_path / "spec")
    with open(tmp_path / "spec" / "models" / "beta" / "model.onnx", "wb") as f:
        f.truncate(384 * 1024 * 1024)

    def peak_rss_mib(*argv: str) -> float:
        report = tmp_path / "time.txt"
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), sys.executable, "-m",
                        "appliance", *argv], check=True, capture_output=True,
                       cwd=Path(__file__).parents[2], timeout=300,
                       env={"APPLIANCE_KEY_PASSPHRASE": "s3cret", "PATH": "/usr/bin:/bin"})
        return int(report.read_text().split()[-1]) / 1024

    build = peak_rss_mib("bundle", "build", "-q", "-f", str(spec), "-o",
                         str(tmp_path / "b.tar"), "--key", str(key))
    verify = peak_rss_mib("bundle", "verify", "-q", str(tmp_path / "b.tar"), "--trust",
                          str(root), "--store", str(tmp_path / "site"))
    assert (tmp_path / "b.tar").stat().st_size > 384 * 1024 * 1024
    assert build < 100 and verify < 100, (build, verify)
