"""Shared pieces of the install tests: a site with the process engine over the fake runtime."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from appliance.engines.process import ProcessEngine
from appliance.progress import Progress
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan, InstallResult
from tests.site.bundlekit import Vendor

REPO = Path(__file__).resolve().parents[2]
FAKE_COMMAND = [sys.executable, "-m", "tests.site.fakeruntime", "--models", "{models}",
                "--port", "{port}"]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def runtime_status(url: str, token: str = "", path: str = "/v2/models/mlp") -> int:
    """The status of GET `path` straight at a runtime (with `token`, if given)."""
    req = urllib.request.Request(f"{url}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


@dataclass
class ProcessSite:
    tmp: Path
    site: Site
    engine: ProcessEngine
    vendor: Vendor

    def install(self, bundle: Path, events: list[Progress] | None = None,
                health_timeout_s: float = 20.0, probe: GpuReport | None = None) -> InstallResult:
        plan = InstallPlan(InstallOptions(
            bundle=bundle, site=self.site, engine=self.engine,
            gpu_probe=RecordedProbe(probe or GpuReport(unavailable="no GPU in tests")),
            trust=self.vendor.root_path, health_timeout_s=health_timeout_s),
            progress=events.append if events is not None else lambda _e: None)
        return plan.run()

    def stop_all(self) -> None:
        for rel in self.site.releases():
            self.engine.stop(rel.sequence)

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO),
                "APPLIANCE_RUNTIME_COMMAND": " ".join(FAKE_COMMAND)}

    def cli_args(self) -> list[str]:
        return ["--root", str(self.site.root), "--engine", "process",
                "--unit-dir", str(self.tmp / "units")]


def process_site(tmp: Path, vendor: Vendor) -> ProcessSite:
    site = Site(tmp / "site")
    engine = ProcessEngine(site, command=FAKE_COMMAND, env={"PYTHONPATH": str(REPO)},
                           unit_dir=tmp / "units", use_systemd=False)
    return ProcessSite(tmp, site, engine, vendor)
