"""The CUDA runtime images' wheels: one layer of NVIDIA libraries both GPU variants share.

No `nvidia/cuda` base image (no registry here): CUDA 12 and cuDNN 9 come from the
`nvidia-*-cu12` wheels on PyPI, installed into the venv in a layer of their own
(`Containerfile.cuda-libs`) under the ONNX Runtime GPU layer (`Containerfile.cuda`)
and the torch layer (`Containerfile.torch-cuda`). So every GPU bundle built from
these images holds the CUDA layer once, and a weights-only update carries none of it.

The torch CUDA wheel pins exact versions of these libraries. The CUDA layer is
staged with the torch wheel's own pins, and `check_pins` refuses a layer that
differs, because torch would then pull a second copy into its own layer.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from images.errors import WheelhouseError
from images.wheelhouse import Wheelhouse, _ensure_downloaded, runtime_requirements

CUDA_VERSION = "12.8"  # what the images' libraries are built for (the image label says so)
CUDA_LABEL = "io.appliance.runtime.cuda"
TORCH_CUDA = "torch==2.13.0+cu128"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
# ONNX Runtime's CUDA provider loads cudart, cuBLAS(Lt), cuDNN, cuFFT and cuRAND;
# cuDNN 9 compiles some engines at run time (nvrtc) and cuFFT links nvJitLink.
ORT_CUDA_LIBS = ("nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12",
                 "nvidia-cufft-cu12", "nvidia-curand-cu12", "nvidia-cuda-nvrtc-cu12",
                 "nvidia-nvjitlink-cu12")
# What libtorch_cuda.so links on top: every one is loaded when torch imports.
TORCH_CUDA_LIBS = ("nvidia-cusparse-cu12", "nvidia-cusolver-cu12", "nvidia-nccl-cu12",
                   "nvidia-cuda-cupti-cu12", "nvidia-cusparselt-cu12", "nvidia-nvtx-cu12",
                   "nvidia-cufile-cu12")
# PyPI's onnxruntime-gpu is a CUDA 12 build up to 1.26 and a CUDA 13 build from 1.27 on
# (its wheel's capi/build_and_package_info.py says which): on this CUDA 12 layer a CUDA 13
# build's provider cannot load (libcublasLt.so.13), so the bound keeps it CUDA 12, and
# `check_ort_cuda` refuses a staged wheel built for another CUDA major.
ORT_GPU = "onnxruntime-gpu>=1.20,<1.27"
ORT_BUILD_INFO = "onnxruntime/capi/build_and_package_info.py"
# torch's pure-Python dependencies (its METADATA's, less triton and the nvidia-* wheels)
TORCH_PY_DEPS = ("filelock", "typing-extensions>=4.10", "sympy>=1.13.3", "networkx",
                 "jinja2", "fsspec", "setuptools")
# Parts of the nvidia wheels no process loads: headers and static libraries.
PRUNE_GLOBS = ("nvidia/*/include", "nvidia/*/lib/*.a")

_PIN = re.compile(r"^(nvidia-[a-z0-9-]+)\s*==\s*([0-9][0-9.]*)")
_WHEEL = re.compile(r"^(nvidia_[a-z0-9_]+)-([0-9][0-9.]*)-")


def torch_pins(torch_wheel: Path) -> dict[str, str]:
    """The nvidia-* versions a torch wheel requires (name -> version), from its METADATA.

    Raises:
        WheelhouseError: the file is not a wheel with METADATA.
    """
    try:
        with zipfile.ZipFile(torch_wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode(errors="replace")
    except (OSError, zipfile.BadZipFile, StopIteration) as e:
        raise WheelhouseError(f"{torch_wheel} is not a wheel with METADATA: {e}") from e
    pins = {}
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            m = _PIN.match(line.removeprefix("Requires-Dist:").strip())
            if m:
                pins[m.group(1)] = m.group(2)
    return pins


def staged_libs(wheels: list[Path]) -> dict[str, str]:
    """The nvidia-* wheels staged for the CUDA layer (name -> version)."""
    out = {}
    for w in wheels:
        m = _WHEEL.match(w.name)
        if m:
            out[m.group(1).replace("_", "-")] = m.group(2)
    return out


def cuda_lib_requirements(pins: dict[str, str]) -> list[str]:
    """Requirements of the CUDA layer: the libraries both variants load, at torch's pins.

    Raises:
        WheelhouseError: the torch wheel does not pin one of them.
    """
    wanted = (*ORT_CUDA_LIBS, *TORCH_CUDA_LIBS)
    missing = [n for n in wanted if n not in pins]
    if missing:
        raise WheelhouseError(f"{TORCH_CUDA} pins no {', '.join(missing)}; update "
                              "ORT_CUDA_LIBS/TORCH_CUDA_LIBS in images/cuda.py for this torch")
    return [f"{n}=={pins[n]}" for n in wanted]


def check_pins(pins: dict[str, str], staged: dict[str, str]) -> None:
    """The CUDA layer holds exactly what torch pins, so torch's layer adds no second copy.

    Raises:
        WheelhouseError: naming the first library whose versions differ, and what to do.
    """
    for name, version in sorted(pins.items()):
        have = staged.get(name)
        if have is not None and have != version:
            raise WheelhouseError(
                f"{TORCH_CUDA} pins {name} {version} but the CUDA layer holds {have}; "
                "stage the CUDA layer from the same torch wheel (rm -rf its cache) and build "
                "again")
        if have is None and name in (*ORT_CUDA_LIBS, *TORCH_CUDA_LIBS):
            raise WheelhouseError(f"the CUDA layer lacks {name} {version}, which {TORCH_CUDA} "
                                  "loads; stage it and build again")


def layer_plan(variant: str) -> list[str]:
    """The layers of a runtime image variant, bottom first (shared names are shared layers)."""
    plans = {
        "slim": ["base", "runtime"],
        "torch": ["base", "runtime", "torch"],
        "cuda": ["base", "cuda-libs", "runtime-cuda"],
        "torch-cuda": ["base", "cuda-libs", "runtime-cuda", "torch-cuda"],
    }
    try:
        return plans[variant]
    except KeyError as e:
        raise WheelhouseError(f"unknown image variant {variant!r}; one of "
                              f"{', '.join(plans)}") from e


def ensure_torch_cuda_wheel(cache: Path, *, log: bool = False) -> Wheelhouse:
    """The torch CUDA wheel alone (once), whose pins decide the CUDA layer.

    Raises:
        WheelhouseError: the PyTorch CUDA index is not reachable from the host.
    """
    return _ensure_downloaded(cache / "wheels-torch-cuda", [TORCH_CUDA],
                              ["--no-deps", "--index-url", TORCH_CUDA_INDEX], log=log)


def ensure_cuda_lib_wheels(cache: Path, *, log: bool = False) -> Wheelhouse:
    """The nvidia-* wheels of the CUDA layer, at the torch CUDA wheel's pins, and pip.

    Raises:
        WheelhouseError: a download failed, or torch pins a library set we do not know.
    """
    (torch_wheel,) = ensure_torch_cuda_wheel(cache, log=log).wheels()
    reqs = cuda_lib_requirements(torch_pins(torch_wheel))
    house = _ensure_downloaded(cache / "wheels-cuda-libs", [*reqs, "pip"], ["--no-deps"],
                               log=log)
    check_pins({n: v for n, v in torch_pins(torch_wheel).items()
                if n in (*ORT_CUDA_LIBS, *TORCH_CUDA_LIBS)}, staged_libs(house.wheels()))
    return house


def ort_gpu_requirements(root: Path) -> list[str]:
    """The runtime extra with onnxruntime-gpu for onnxruntime (both are `onnxruntime`)."""
    return [ORT_GPU if re.match(r"^onnxruntime\b(?!-)", r) else r
            for r in runtime_requirements(root)]


def ensure_ort_gpu_wheels(root: Path, cache: Path, *, log: bool = False) -> Wheelhouse:
    """The GPU runtime layer's wheels: the runtime extra with onnxruntime-gpu, no nvidia-*.

    Raises:
        WheelhouseError: a download failed, or the onnxruntime-gpu wheel is built for
            another CUDA than the CUDA layer's.
    """
    house = _ensure_downloaded(cache / "wheels-ort-gpu", [*ort_gpu_requirements(root), "pip"],
                               [], log=log)
    check_ort_cuda(house.wheels())
    return house


def ort_cuda_version(wheel: Path) -> str:
    """The CUDA version an onnxruntime-gpu wheel was built with ("" when it does not say).

    Raises:
        WheelhouseError: the wheel cannot be read.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            text = z.read(ORT_BUILD_INFO).decode("utf-8", "replace")
    except KeyError:
        return ""
    except (OSError, zipfile.BadZipFile) as e:
        raise WheelhouseError(f"cannot read {wheel.name}: {e}; remove it from the wheel "
                              "cache and build again") from e
    m = re.search(r"^cuda_version\s*=\s*['\"]([0-9.]+)['\"]", text, re.MULTILINE)
    return m.group(1) if m else ""


def check_ort_cuda(wheels: list[Path]) -> None:
    """Refuse an onnxruntime-gpu wheel built for another CUDA major than the CUDA layer's.

    Raises:
        WheelhouseError: one line naming both CUDA versions and what to do.
    """
    want = CUDA_VERSION.split(".")[0]
    for wheel in wheels:
        if not wheel.name.startswith("onnxruntime_gpu-"):
            continue
        built = ort_cuda_version(wheel)
        if built.split(".")[0] != want:
            raise WheelhouseError(
                f"{wheel.name} is built for CUDA {built or 'unknown'} but the CUDA layer holds "
                f"CUDA {CUDA_VERSION}, so its CUDA provider could not load; bound "
                f"onnxruntime-gpu to a CUDA {want} build (images/cuda.py ORT_GPU), remove the "
                "wheel cache's wheels-ort-gpu and build again")


def ensure_torch_py_wheels(cache: Path, *, log: bool = False) -> Wheelhouse:
    """torch's pure-Python dependencies for the torch CUDA layer.

    Raises:
        WheelhouseError: a download failed.
    """
    return _ensure_downloaded(cache / "wheels-torch-py", [*TORCH_PY_DEPS, "pip"], [], log=log)
