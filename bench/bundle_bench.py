"""Bundle build and verify against the tools a person would otherwise use, in one run.

For each size of synthetic weights (default 0.5 and 2 GiB), it measures:

- baseline `tar -cf` of the model directory, and `openssl dgst -sha256` of that tar
  (the two-pass way to get a hashed archive: the build's target);
- `appliance bundle build` (one pass: hashes while it writes, see bundler/build.py);
- baseline `openssl dgst -sha256` of the bundle (the hashing ceiling: verify's target);
- `appliance bundle verify` alone and with `--store` (hash + copy into the store).

Each command runs as a child process; its peak RSS comes from `os.wait4`, so
`/usr/bin/time` reports the figure for that process alone. Times are the median of
`--repeat` runs. Scratch files live in /dev/shm by default, so the figures measure
hashing and copying rather than a disk shared with other work; give `--dir` to
measure a real disk (the build and `--store` then also pay for their fsyncs, which
`tar` does not do). Run: `python bench/bundle_bench.py [--sizes 0.5,2] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from signing import PrivateKey, TrustRoot  # noqa: E402

GIB = 1024**3
MODEL_JSON = """{"name": "big", "version": "1", "framework": "safetensors",
 "file": "weights-0.safetensors",
 "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
 "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}]}
"""


@dataclass
class Run:
    seconds: float
    rss_mib: float
    cpu: float  # user + system seconds


def timed(cmd: list[str]) -> Run:
    """Run `cmd` under /usr/bin/time: its wall time and its own peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        r = subprocess.run(["/usr/bin/time", "-f", "%e %M %U %S", "-o", report.name, *cmd],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                           check=False)
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.decode().strip()}")
        seconds, kib, user, system = report.read().split()[-4:]
    return Run(float(seconds), int(kib) / 1024, float(user) + float(system))


def median(runs: list[Run]) -> Run:
    return Run(statistics.median(r.seconds for r in runs), max(r.rss_mib for r in runs),
               statistics.median(r.cpu for r in runs))


def make_weights(directory: Path, size: int) -> None:
    """Two incompressible weights files totalling `size` bytes, plus model.json."""
    directory.mkdir(parents=True)
    (directory / "model.json").write_text(MODEL_JSON)
    chunk = bytearray(os.urandom(4 * 1024 * 1024))
    for i, part in enumerate((size // 2, size - size // 2)):
        with open(directory / f"weights-{i}.safetensors", "wb") as f:
            left = part
            while left:
                n = min(left, len(chunk))
                chunk[:8] = left.to_bytes(8, "little")  # no two chunks alike
                f.write(memoryview(chunk)[:n])
                left -= n


def bench_size(work: Path, size: int, repeat: int, py: str) -> dict[str, Run]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_weights(work / "models" / "big", size)
    (work / "appliance.yaml").write_text(
        "name: bench\nversion: '1'\nsequence: 1\nmodels:\n  - {name: big, path: models/big}\n")
    key = PrivateKey.generate()
    (work / "k.pem").write_bytes(key.to_pem())
    (work / "root.json").write_bytes(TrustRoot.create([key.public_key]).to_json())
    bundle, tar = work / "bundle.tar", work / "plain.tar"
    app = [py, "-m", "appliance", "bundle"]
    res: dict[str, list[Run]] = {k: [] for k in (
        "tar -cf", "openssl dgst (tar)", "bundle build", "openssl dgst (bundle)",
        "bundle verify", "bundle verify --store")}
    for _ in range(repeat):
        tar.unlink(missing_ok=True)
        res["tar -cf"].append(timed(["tar", "-cf", str(tar), "-C", str(work), "models"]))
        res["openssl dgst (tar)"].append(timed(["openssl", "dgst", "-sha256", str(tar)]))
        bundle.unlink(missing_ok=True)  # like tar's output: no old copy held during the run
        res["bundle build"].append(timed([*app, "build", "-q", "-f", str(work / "appliance.yaml"),
                                          "-o", str(bundle), "--key", str(work / "k.pem")]))
        res["openssl dgst (bundle)"].append(timed(["openssl", "dgst", "-sha256", str(bundle)]))
        res["bundle verify"].append(timed([*app, "verify", "-q", str(bundle), "--trust",
                                           str(work / "root.json")]))
        shutil.rmtree(work / "site", ignore_errors=True)
        res["bundle verify --store"].append(timed([*app, "verify", "-q", str(bundle),
                                                   "--trust", str(work / "root.json"),
                                                   "--store", str(work / "site")]))
    out = {k: median(v) for k, v in res.items()}
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5,2", help="GiB of weights, comma separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm",
                        help="scratch parent directory (default /dev/shm: memory, so the "
                             "figures measure hashing and copies rather than a shared disk)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bundle-bench-", dir=args.dir))
    py = sys.executable
    print(f"# bundle bench: {os.cpu_count()} cores, python {sys.version.split()[0]}, "
          f"median of {args.repeat}, scratch {scratch}, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    rows = []
    for gib in (float(s) for s in args.sizes.split(",")):
        r = bench_size(scratch / f"{gib}g", int(gib * GIB), args.repeat, py)
        two_pass = r["tar -cf"].seconds + r["openssl dgst (tar)"].seconds
        ceiling = r["openssl dgst (bundle)"].seconds
        rows.append((gib, r, two_pass, ceiling))
    print()
    print("| weights | step | wall (s) | GB/s | CPU (s) | peak RSS (MiB) | wall vs baseline "
          "| target |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for gib, r, two_pass, ceiling in rows:
        size = gib * GIB
        for name, run in r.items():
            ratio, target = "", ""
            if name == "bundle build":
                ratio = f"{run.seconds / two_pass:.2f}x tar+openssl"
                target = "<= 1.00x, RSS < 150"
            elif name == "bundle verify":
                ratio = f"{run.seconds / ceiling:.2f}x openssl"
                target = "<= 1.15x, RSS < 150"
            elif name == "bundle verify --store":
                ratio = f"{run.seconds / ceiling:.2f}x openssl"
                target = "RSS < 150"
            print(f"| {gib:g} GiB | {name} | {run.seconds:.2f} | {size / run.seconds / 1e9:.2f} "
                  f"| {run.cpu:.2f} | {run.rss_mib:.0f} | {ratio} | {target} |")
        cpu = r["tar -cf"].cpu + r["openssl dgst (tar)"].cpu
        print(f"| {gib:g} GiB | tar -cf + openssl (two passes) | {two_pass:.2f} | "
              f"{size / two_pass / 1e9:.2f} | {cpu:.2f} | | baseline | |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
