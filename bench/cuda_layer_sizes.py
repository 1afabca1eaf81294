"""What the CUDA layers of the GPU runtime image hold, measured from the wheels themselves.

    python bench/cuda_layer_sizes.py --wheels /var/tmp/cudawheels

Downloads (once, into `--wheels`) the nvidia-*-cu12 wheels that ONNX Runtime's CUDA
provider loads, onnxruntime-gpu and the CPU onnxruntime, then prints per wheel and per
layer: the wheel's bytes (deflate, about what the bundle's gzip layer holds) and the
bytes pip installs once the image build prunes headers and static libraries
(`images.cuda.PRUNE_GLOBS`). The baseline in the same run is the CPU onnxruntime wheel
that the slim image carries instead of onnxruntime-gpu.

This measures the wheels, not a built image: use it where the image cannot be built
(the torch CUDA 12.8 pins come from download.pytorch.org only).
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from images.cuda import ORT_CUDA_LIBS, ORT_GPU, PRUNE_GLOBS  # noqa: E402

# CUDA 12.8 builds of what ORT_CUDA_LIBS names (cuDNN 9, and the ORT GPU wheel the image
# takes: the newest CUDA 12 build, ORT_GPU).
REQUIREMENTS = {
    "nvidia-cuda-runtime-cu12": "==12.8.*", "nvidia-cublas-cu12": "==12.8.*",
    "nvidia-cudnn-cu12": ">=9,<10", "nvidia-cufft-cu12": "==11.3.3.*",
    "nvidia-curand-cu12": "==10.3.9.*", "nvidia-cuda-nvrtc-cu12": "==12.8.*",
    "nvidia-nvjitlink-cu12": "==12.8.*",
}
ORT = ("onnxruntime-gpu", "onnxruntime")
MIB = 1024 * 1024


def _pruned(member: str) -> bool:
    # PRUNE_GLOBS are paths inside site-packages, as the wheel's members are
    return any(fnmatch.fnmatch(member, g) or fnmatch.fnmatch(member, g + "/*")
               for g in PRUNE_GLOBS)


def installed_bytes(wheel: Path) -> tuple[int, int]:
    """(bytes installed, bytes of them the image build prunes)."""
    total = pruned = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            total += info.file_size
            if _pruned(info.filename):
                pruned += info.file_size
    return total, pruned


def find(wheels: Path, project: str) -> Path:
    """The downloaded wheel of `project` (pip writes `-` as `_` in file names)."""
    stem = project.replace("-", "_")
    hits = sorted(p for p in wheels.glob("*.whl")
                  if p.name.split("-")[0].lower() == stem)
    if not hits:
        sys.exit(f"no wheel of {project} in {wheels}: run without --no-download")
    return hits[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=Path("/var/tmp/cudawheels"))
    ap.add_argument("--no-download", action="store_true", help="use what --wheels holds")
    args = ap.parse_args()
    missing = set(ORT_CUDA_LIBS) - set(REQUIREMENTS)
    if missing:
        sys.exit(f"images.cuda.ORT_CUDA_LIBS names {sorted(missing)}: add its version here")
    if not args.no_download:
        args.wheels.mkdir(parents=True, exist_ok=True)
        reqs = [f"{n}{v}" for n, v in REQUIREMENTS.items()] + [ORT_GPU, "onnxruntime"]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(args.wheels), *reqs], check=True)
    rows = []
    for project in (*ORT_CUDA_LIBS, *ORT):
        w = find(args.wheels, project)
        inst, pruned = installed_bytes(w)
        rows.append((project, w.name.split("-")[1], w.stat().st_size, inst - pruned, pruned))
    print(f"{'wheel':28} {'version':>12} {'wheel MiB':>10} {'installed MiB':>14} "
          f"{'pruned MiB':>11}")
    for name, ver, size, inst, pruned in rows:
        print(f"{name:28} {ver:>12} {size / MIB:10.0f} {inst / MIB:14.0f} {pruned / MIB:11.0f}")
    libs = [r for r in rows if r[0] in ORT_CUDA_LIBS]
    gpu, cpu = (next(r for r in rows if r[0] == p) for p in ORT)
    print()
    print(f"{'layer':28} {'wheel MiB':>10} {'installed MiB':>14}")
    print(f"{'cuda-libs (shared)':28} {sum(r[2] for r in libs) / MIB:10.0f} "
          f"{sum(r[3] for r in libs) / MIB:14.0f}")
    print(f"{'onnxruntime-gpu':28} {gpu[2] / MIB:10.0f} {gpu[3] / MIB:14.0f}")
    print(f"{'baseline: onnxruntime (CPU)':28} {cpu[2] / MIB:10.0f} {cpu[3] / MIB:14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
