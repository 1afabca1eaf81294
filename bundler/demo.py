"""`make demo`: a signed bundle from a model made by code, installed, serving, answering.

Everything lives under out/demo (or the directory given): a vendor key and
trust root, an ONNX MLP from `bundler.samples`, appliance.yaml, the bundle,
and a site directory the headless install plan installs it into, with a
container engine when one answers (over the runtime image, built or cached)
or else the process engine (`bundler.demo_site` decides and says why). It
ends with the endpoint, a sample curl and one real inference answer.
`--bundle-only` stops after building and verifying.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.bundle import VerifiedBundle, verify_bundle
from appliance.bundle.store import ContentStore
from appliance.fsutil import atomic_write
from appliance.units import human
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
                     port: int = 8000) -> DemoResult:
    """Key + trust root, an MLP, its spec, a signed bundle, verified into root/site's store.

    With `runtime_archive` the service image is that runtime plus the weights layer;
    without, a weights-only image (for the process engine).
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
    (root / "appliance.yaml").write_text(spec)
    bundle = root / "demo-bundle.tar"
    build_bundle(load_spec(root / "appliance.yaml"), bundle, [key])
    site = root / "site"
    verified = verify_bundle(bundle, trust, now=datetime.now(UTC),
                             store=ContentStore(site))
    return DemoResult(root, key_path, root_path, bundle, site, verified)


def print_bundle(r: DemoResult) -> None:
    """What the bundle holds, one line per thing."""
    m = r.verified.manifest
    print(f"demo bundle  {r.bundle} ({human(r.bundle.stat().st_size)})")
    print(f"trust root   {r.trust_root}  (key {r.key})")
    print(f"verified     {m.name} {m.version} sequence {m.sequence}, {len(m.members)} members, "
          f"manifest {r.verified.manifest_digest[:19]}")
    for mod in m.models:
        print(f"model        {mod.name} v{mod.version} {mod.framework} weights "
              f"{mod.weights_digest[:19]} ({human(mod.weights_size)}) in image {mod.image}")
    for img in m.images:
        print(f"image        {img.reference} {img.manifest_digest[:19]}")
    print(f"site store   {r.site / 'blobs' / 'sha256'} "
          f"({len(ContentStore(r.site).digests())} verified blobs)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo: build, verify, install, serve, answer; print what it did."""
    parser = argparse.ArgumentParser(prog="python -m bundler.demo", description=__doc__)
    parser.add_argument("--out", default="out/demo", help="working directory (default out/demo)")
    parser.add_argument("--clean", action="store_true", help="start from an empty directory")
    parser.add_argument("--engine", choices=("auto", "docker", "process"), default="auto",
                        help="auto: a container engine when one answers, else the process one")
    parser.add_argument("--port", type=int, default=8000, help="the service port (default 8000)")
    parser.add_argument("--bundle-only", action="store_true",
                        help="only build the bundle and verify it into the site's store")
    parser.add_argument("--stop", action="store_true",
                        help="stop what an earlier demo left serving, remove its site, exit")
    args = parser.parse_args(argv)
    root = Path(args.out)
    started = time.monotonic()
    if args.stop:
        from bundler.demo_site import stop_demo
        return stop_demo(root)
    if args.bundle_only:
        if args.clean and root.exists():
            shutil.rmtree(root)
        print_bundle(make_demo_bundle(root))
        print(f"done in {time.monotonic() - started:.1f} s")
        return 0
    from bundler.demo_site import run_demo
    return run_demo(root, engine=args.engine, port=args.port, clean=args.clean,
                    started=started)


if __name__ == "__main__":
    sys.exit(main())
