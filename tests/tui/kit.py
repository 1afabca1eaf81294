"""Real signed bundles, a site with the process engine over the real runtime, and Pilot helpers.

Keys come from fixed seeds and bundles are built with SOURCE_DATE_EPOCH, so the
fingerprints, sizes and dates on screen are the same on every run (snapshots).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from textual.pilot import Pilot

from appliance.engines.process import DEFAULT_COMMAND, ProcessEngine
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan
from bundler.build import build_bundle
from bundler.samples import make_mlp_onnx, mlp_reference
from bundler.spec import load_spec
from installer_tui.app import InstallerApp, make_app
from installer_tui.config import InstallerConfig
from installer_tui.figures import FiguresSource, RuntimeFigures
from signing import PrivateKey, TrustRoot
from tests.bundle.kit import NOW, source_date_epoch

REPO = Path(__file__).resolve().parents[2]
SIZES = (8, 16, 4)
NO_GPU = GpuReport(unavailable="NVML did not start; no NVIDIA driver loaded")


def key(seed: int) -> PrivateKey:
    """A signing key made from a fixed seed (same fingerprint every run)."""
    return PrivateKey(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def write_root(path: Path, keys: Sequence[PrivateKey], name: str = "Acme Medical") -> Path:
    root = TrustRoot.create([k.public_key for k in keys],
                            names={k.key_id: f"{name} {i + 1}" for i, k in enumerate(keys)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(root.to_json())
    return path


def build_demo(directory: Path, sequence: int, port: int, signer: PrivateKey, *,
               gpu: str = "preferred", gpu_mib: int = 0, name: str = "demo-bundle",
               sample_off_by: float = 0.0) -> Path:
    """A signed bundle serving an ONNX MLP (from bundler.samples) with one signed sample.

    `sample_off_by` shifts the sample's expected outputs (a model that no longer answers
    as it did when it was validated).
    """
    src = directory / f".src-{sequence}-{port}"
    make_mlp_onnx(src / "models" / "mlp", sizes=SIZES, seed=sequence)
    x = np.linspace(-1, 1, SIZES[0], dtype=np.float32).reshape(1, -1)
    y = mlp_reference(x, SIZES, seed=sequence) + np.float32(sample_off_by)
    spec: dict[str, Any] = {
        "name": "demo", "version": f"1.{sequence}.0", "sequence": sequence,
        "expires_days": 365, "platform": "linux/amd64",
        "models": [{"name": "mlp", "version": "1", "path": "models/mlp",
                    "gpu_memory_mib": gpu_mib, "max_batch_size": 8, "max_queue_delay_ms": 1,
                    "provenance": {"code_commit": "4f2a9c1", "data_version": "ct-2026-03",
                                   "training_run": f"run-{sequence}"},
                    "samples": [{"inputs": {"x": {"datatype": "FP32", "shape": [1, SIZES[0]],
                                                  "data": x.ravel().tolist()}},
                                 "outputs": {"y": {"datatype": "FP32", "shape": [1, SIZES[-1]],
                                                   "data": y.ravel().tolist()}},
                                 "tolerance": 1e-3}]}],
        "services": [{"name": "mlp", "models": ["mlp"], "port": port, "gpu": gpu}],
    }
    (src / "appliance.yaml").write_text(yaml.safe_dump(spec))
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}-{sequence}.tar"
    with source_date_epoch():
        build_bundle(load_spec(src / "appliance.yaml"), out, [signer])
    return out


def process_engine(site: Site, tmp: Path) -> ProcessEngine:
    """The process engine running the real runtime (`python -m runtime`) under supervision."""
    return ProcessEngine(site, command=DEFAULT_COMMAND,
                         env={"PYTHONPATH": str(REPO), "RUNTIME_DATA_DIR": str(tmp / "runtime"),
                              "RUNTIME_HISTORY_INTERVAL_S": "1", "RUNTIME_ORT_THREADS": "1"},
                         unit_dir=tmp / "units", use_systemd=False)


@dataclass
class Rig:
    """A site, its engine and the media directory one test works with."""

    tmp: Path
    site: Site
    media: Path
    engine: ProcessEngine
    gpus: GpuReport = NO_GPU
    trust: Path | None = None
    figures: Callable[[Sequence[str]], FiguresSource] = RuntimeFigures
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, **changes: Any) -> InstallerConfig:
        doc: dict[str, Any] = dict(
            site=self.site, engine=lambda _s: self.engine, gpu_probe=RecordedProbe(self.gpus),
            media_roots=[self.media], trust=self.trust, now=lambda: NOW,
            health_timeout_s=60.0, poll_interval_s=0.3, figures=self.figures,
            export_dir=self.tmp / "export")
        doc.update(changes)
        return InstallerConfig(**doc)

    def app(self, **changes: Any) -> InstallerApp:
        return make_app(self.config(**changes))

    def install_headless(self, bundle: Path, trust: Path | None) -> None:
        InstallPlan(InstallOptions(bundle=bundle, site=self.site, engine=self.engine,
                                   gpu_probe=RecordedProbe(self.gpus), trust=trust,
                                   now=lambda: NOW, health_timeout_s=60.0)).run()

    def stop_all(self) -> None:
        for rel in self.site.releases():
            self.engine.stop(rel.sequence)


def make_rig(tmp: Path, site_root: Path | None = None, media: Path | None = None) -> Rig:
    site = Site(site_root or tmp / "site")
    return Rig(tmp, site, media or tmp / "media", process_engine(site, tmp))


async def wait_for(pilot: Pilot[Any], cond: Callable[[], object], timeout: float = 60.0,
                   what: str = "condition") -> None:
    """Let the app run until `cond()` is true (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"screen is {type(pilot.app.screen).__name__}")
        await pilot.pause(0.05)


def infer(url: str, n: int = 1) -> list[float]:
    """Send `n` real V2 inference requests; return the last answer."""
    import urllib.request
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, SIZES[0]],
                                   "data": [0.5] * SIZES[0]}]}).encode()
    out: list[float] = []
    for _ in range(n):
        req = urllib.request.Request(url + "/v2/models/mlp/infer", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())["outputs"][0]["data"]
    return out


def text_of(widget: Any) -> str:
    """What a Static (or Label) shows, as plain text (wide, so nothing wraps)."""
    import io

    from rich.console import Console
    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(content)
    return console.export_text()
