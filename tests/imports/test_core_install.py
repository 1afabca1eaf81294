"""A core install (`pip install offline-appliance`, no extras) builds, inspects and verifies
bundles: nothing on that path may import numpy, onnxruntime or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from signing import PrivateKey, TrustRoot
from tests.bundle.conftest import make_spec_dir

ROOT = Path(__file__).resolve().parents[2]
# Run first in the child: any import of these fails as it would on a core install.
BLOCK = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numpy", "onnxruntime", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r} (a core install)")
        return None
sys.meta_path.insert(0, _Absent())
"""


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_block_really_blocks_numpy(tmp_path):
    r = _run("import numpy", tmp_path)
    assert r.returncode != 0 and "a core install" in r.stderr


def test_the_model_contract_and_the_bundler_import_without_numpy(tmp_path):
    r = _run("import modelcontract, bundler.spec, bundler.build, appliance.cli", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bundle_build_inspect_and_verify_work_without_numpy(tmp_path):
    spec = make_spec_dir(tmp_path)
    key = PrivateKey.generate()
    (tmp_path / "vendor.key").write_bytes(key.to_pem())
    (tmp_path / "vendor.key").chmod(0o600)
    (tmp_path / "root.json").write_bytes(TrustRoot.create([key.public_key]).to_json())
    r = _run(f"""
from appliance.cli import main
assert main(["bundle", "build", "-f", {str(spec)!r}, "-o", "b.tar", "--key", "vendor.key"]) == 0
assert main(["bundle", "inspect", "b.tar"]) == 0
assert main(["bundle", "verify", "b.tar", "--trust", "root.json"]) == 0
""", tmp_path)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    assert (tmp_path / "b.tar").stat().st_size > 0
