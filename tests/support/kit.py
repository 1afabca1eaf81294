"""Sites made in code for the support tests and bench: releases with signed manifests,
runtime logs and metrics history written in the runtime's own formats, an audit trail."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.site import audit
from appliance.site.gpu import GpuReport
from appliance.site.layout import PLACEMENT_FILE, Site
from appliance.site.placement import Placement, ServicePlacement
from modelcontract import GpuState
from runtime.logs import LOG_NAME
from signing import PrivateKey, sign
from tests.site.factory import manifest

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


class FixedProbe:
    """A GPU probe that answers a recorded report (no NVIDIA GPU here)."""

    def __init__(self, report: GpuReport) -> None:
        self.report = report

    def probe(self) -> GpuReport:
        return self.report


NO_GPU = FixedProbe(GpuReport(unavailable="no NVIDIA driver loaded"))
ONE_GPU = FixedProbe(GpuReport([GpuState(0, "NVIDIA L4", 23034, 20000, 12, uuid="GPU-1")],
                               "550.54", "12.4"))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def add_release(site: Site, sequence: int, *, status: str = "serving", cpu: bool = True,
                created: str = "2026-01-01T00:00:00Z", expires: str = "2027-01-01T00:00:00Z",
                current: bool = True, key: PrivateKey | None = None) -> None:
    """Stage a release signed by `key`, with a placement on the CPU or GPU 0."""
    m = dataclasses.replace(manifest([("svc", [("mlp", 0)], "preferred")], sequence),
                            version=f"1.0.{sequence}", created=created, expires=expires)
    body = m.to_json()
    env = sign(body, "application/vnd.appliance.manifest.v1+json",
               [key or PrivateKey.generate()]).to_json()
    rel = site.stage_release(body, env, sequence, "process")
    placement = Placement([ServicePlacement("svc", "cpu" if cpu else "gpu", None if cpu else 0,
                                            "" if cpu else "GPU-1", 0, "test")], cpu)
    (rel.path / PLACEMENT_FILE).write_bytes(placement.to_json())
    rel.log("StepEvent", step="verify", status="ok", message="verified")
    site.update_record(rel, status=status, endpoints={"svc": "http://127.0.0.1:8000"})
    if current:
        site.switch_current(sequence)


def write_runtime(site: Site, *, start: float, end: float, step_s: float = 60.0,
                  service: str = "svc", extra_lines: list[dict[str, Any]] | None = None,
                  starts: list[float] | None = None, rps: float = 20.0) -> None:
    """Runtime logs and metrics history for `service` between `start` and `end`, in the
    runtime's formats (runtime.jsonl lines with `ts`, history samples with `t`)."""
    base = site.root / "runtime" / service
    (base / "logs").mkdir(parents=True, exist_ok=True)
    (base / "history").mkdir(parents=True, exist_ok=True)
    rnd = random.Random(7)
    lines = [{"ts": iso(t), "level": "INFO", "logger": "runtime.server",
              "msg": "starting: 1 model(s) from /models, data in /data"}
             for t in (starts or [start])]
    lines += extra_lines or []
    lines.sort(key=lambda d: str(d["ts"]))
    (base / "logs" / LOG_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
    seg_s = max(step_s * 500, (end - start) / 8)
    t, total, errors = start, 0, 0
    seg_start, seg_lines = start, []
    while t <= end:
        n = int(rps * step_s * (0.5 + rnd.random()))
        total += n
        errors += rnd.random() < 0.05
        seg_lines.append(json.dumps({
            "t": round(t, 3), "interval_s": step_s, "requests": n, "rps": round(n / step_s, 2),
            "p50_ms": round(4 + rnd.random(), 3), "p99_ms": round(12 + 8 * rnd.random(), 3),
            "errors_total": errors, "requests_total": total,
            "cpu_percent": round(30 + 40 * rnd.random(), 1),
            "rss_bytes": int(400e6 + 50e6 * rnd.random()), "queue_depth": {},
            "gpus": [{"index": 0, "utilization_pct": int(60 * rnd.random()),
                      "memory_used_mib": 4000 + int(1000 * rnd.random()),
                      "memory_total_mib": 23034, "temperature_c": 50}]},
            separators=(",", ":")))
        t += step_s
        if t - seg_start >= seg_s or t > end:
            p = base / "history" / f"metrics-{int(seg_start * 1000)}.jsonl"
            p.write_text("\n".join(seg_lines) + "\n")
            os.utime(p, (t - step_s, t - step_s))
            seg_start, seg_lines = t, []
    os.utime(base / "logs" / LOG_NAME, (end, end))


def busy_site(root: Path, *, days: float = 7.0, step_s: float = 10.0, end: float = NOW) -> Site:
    """A site with two releases, a week (up to `end`) of runtime history and logs, and an
    audit trail."""
    site = Site(root)
    site.ensure()
    key = PrivateKey.generate()
    add_release(site, 1, status="stopped", key=key, current=False)
    add_release(site, 2, key=key)
    start = end - days * DAY
    audit.append(root, "install", now=datetime.fromtimestamp(start, UTC), sequence=1,
                 version="1.0.1")
    audit.append(root, "update", now=datetime.fromtimestamp(start + DAY, UTC), sequence=2,
                 version="1.0.2", previous=1)
    lines = [{"ts": iso(start + i * 30), "level": "INFO", "logger": "runtime.access",
              "msg": f"POST /v2/models/mlp/infer 200 {3 + i % 7} ms"}
             for i in range(int(days * DAY / 30))]
    write_runtime(site, start=start, end=end, step_s=step_s, extra_lines=lines)
    return site
