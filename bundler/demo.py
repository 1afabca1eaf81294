"""The demo bundle: a vendor key and trust root, an ONNX MLP made by code
(`bundler.samples`), its appliance.yaml, the signed bundle, verified into a site's
store. `appliance demo` (`make demo`) installs and serves it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.bundle import VerifiedBundle, verify_bundle
from appliance.bundle.store import ContentStore
from appliance.fsutil import atomic_write
from bundler.build import build_bundle
from bundler.samples import make_mlp_onnx
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot

SPEC = """\
name: demo
version: 1.0.0
sequence: {sequence}
expires_days: 365
platform: linux/amd64
models:
  - name: mlp
    version: "1"
    path: models/mlp
    max_batch_size: 32
    max_queue_delay_ms: 2
    provenance: {{code_commit: demo, data_version: synthetic-seed-0, training_run: none}}
services:
  - name: mlp
    models: [mlp]
    port: {port}
    gpu: preferred
"""
RUNTIME = """\
runtime_image:
  archive: {archive}
"""
FRONTDOOR = """\
frontdoor_image:
  archive: {archive}
"""


@dataclass(frozen=True)
class DemoResult:
    """What the demo made, for later steps (install, serve) to continue from."""

    root: Path
    key: Path
    trust_root: Path
    bundle: Path
    site: Path
    verified: VerifiedBundle


def make_demo_bundle(root: Path, sequence: int = 1, *, runtime_archive: Path | None = None,
                     port: int = 8000, proxy_archive: Path | None = None) -> DemoResult:
    """Key + trust root, an MLP, its spec, a signed bundle, verified into root/site's store.

    With `runtime_archive` the service image is that runtime plus the weights layer;
    without, a weights-only image (for the process engine). With `proxy_archive` the
    bundle also carries the front door's proxy image.
    """
    root.mkdir(parents=True, exist_ok=True)
    key_path, root_path = root / "keys" / "vendor.key", root / "root.json"
    if key_path.exists():
        key = PrivateKey.from_pem(key_path.read_bytes())
    else:
        key = PrivateKey.generate()
        atomic_write(key_path, key.to_pem(), mode=0o600)
        atomic_write(root / "keys" / "vendor.pub", key.public_key.to_pem())
    trust = TrustRoot.create([key.public_key], names={key.key_id: "demo vendor"})
    atomic_write(root_path, trust.to_json())
    make_mlp_onnx(root / "models" / "mlp")
    spec = SPEC.format(sequence=sequence, port=port)
    if runtime_archive is not None:
        spec += RUNTIME.format(archive=json.dumps(str(runtime_archive.resolve())))
    if proxy_archive is not None:
        spec += FRONTDOOR.format(archive=json.dumps(str(proxy_archive.resolve())))
    (root / "appliance.yaml").write_text(spec)
    bundle = root / "demo-bundle.tar"
    build_bundle(load_spec(root / "appliance.yaml"), bundle, [key])
    site = root / "site"
    verified = verify_bundle(bundle, trust, now=datetime.now(UTC),
                             store=ContentStore(site))
    return DemoResult(root, key_path, root_path, bundle, site, verified)
