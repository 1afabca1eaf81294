"""Support export and report on a busy site's week, against doing it by hand, in one run.

The site: two releases, an audit trail, and for each service a week of the runtime's
metrics history (one sample every `--step` seconds, the runtime's default is 10) and of
its JSON logs (one access line every 30 s), in the runtime's own formats. It measures:

- baseline `tar -czf` of the site's runtime directories (what a person would copy by
  hand: no redaction, no signature, no bound);
- baseline: the runtime's own export (`runtime.export.write_export`) of one service;
- `appliance support export` (collect, redact, gzip, sign; written via temp + rename);
- `appliance support report` of that export (target: under 10 s), and of `--sites`
  exports at once (the fleet report).

Each step runs in a child process and is timed with its peak RSS (os.wait4).
Run: `python bench/support_bench.py [--days 7] [--step 10] [--services 2] [--sites 3]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kit import busy_site, write_runtime  # noqa: E402

DAY = 86400.0


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MiB and stdout of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read().decode() if p.stdout else ""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        err = p.stderr.read().decode() if p.stderr else ""
        raise SystemExit(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out


def make_site(root: Path, days: float, step: float, services: int) -> None:
    now = time.time()  # the export takes the last --since (7 days) before the real clock
    site = busy_site(root, days=days, step_s=step, end=now)
    for i in range(1, services):
        write_runtime(site, start=now - days * DAY, end=now, step_s=step, service=f"svc{i}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--step", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--services", type=int, default=2)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        t = Path(tmp)
        roots = []
        for i in range(a.sites):
            r = t / f"site{i}"
            make_site(r, a.days, a.step, a.services)
            roots.append(r)
        raw = sum(p.stat().st_size for p in (roots[0] / "runtime").rglob("*") if p.is_file())
        samples = sum(1 for p in (roots[0] / "runtime").rglob("metrics-*.jsonl")
                      for _ in p.open())
        stick = t / "stick"
        stick.mkdir()
        rows: list[tuple[str, float, float, str]] = []
        wall, rss, _ = timed(["tar", "-czf", str(t / "by-hand.tar.gz"), "-C", str(roots[0]),
                              "runtime"], env)
        rows.append(("tar -czf runtime/ (baseline)", wall, rss,
                     f"{(t / 'by-hand.tar.gz').stat().st_size / 1024**2:.1f} MiB"))
        svc = roots[0] / "runtime" / "svc"
        code = ("import sys; from pathlib import Path; from runtime.export import write_export;"
                "from runtime.gpu import GpuUnavailableError\n"
                "class G:\n def devices(self): raise GpuUnavailableError('none')\n"
                f"print(write_export(Path({str(svc)!r}), Path({str(stick)!r}), gpu=G()))")
        wall, rss, out = timed([py, "-c", code], env)
        rows.append(("runtime export, 1 service (baseline)", wall, rss,
                     f"{Path(out.strip()).stat().st_size / 1024**2:.1f} MiB"))
        gpu = ROOT / "tests" / "site" / "gpu_states" / "none.json"
        exports = []
        for i, r in enumerate(roots):
            d = stick / f"s{i}"
            d.mkdir()
            wall, rss, out = timed([py, "-m", "appliance", "support", "export", "--to", str(d),
                                    "--root", str(r), "--gpu-state", str(gpu)], env)
            path = Path(out.splitlines()[0])
            exports.append(path)
            if i == 0:
                rows.append(("appliance support export", wall, rss,
                             f"{path.stat().st_size / 1024**2:.1f} MiB"))
        report = t / "report.html"
        wall, rss, _ = timed([py, "-m", "appliance", "support", "report", str(exports[0]),
                              "-o", str(report)], env)
        rows.append(("appliance support report, 1 site (target < 10 s)", wall, rss,
                     f"{report.stat().st_size / 1024:.0f} KiB html"))
        wall, rss, _ = timed([py, "-m", "appliance", "support", "report", *map(str, exports),
                              "-o", str(report)], env)
        rows.append((f"appliance support report, {len(exports)} sites", wall, rss,
                     f"{report.stat().st_size / 1024:.0f} KiB html"))
    print(f"site: {a.days:g} days, {a.services} service(s), a sample every {a.step:g} s "
          f"({samples} samples), {raw / 1024**2:.1f} MiB of runtime logs and history; "
          f"{os.cpu_count()} CPU(s)")
    print("| step | wall (s) | peak RSS (MiB) | output |")
    print("| --- | --- | --- | --- |")
    for name, wall, rss, what in rows:
        print(f"| {name} | {wall:.2f} | {rss:.0f} | {what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
