"""The GPU image variants' plan, checked with stand-in wheels (the real ones are GBs)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from images import cuda
from images.build import HERE, VARIANTS
from images.errors import WheelhouseError

ROOT = HERE.parent


def fake_torch_wheel(tmp_path: Path, pins: dict[str, str]) -> Path:
    """A wheel holding only METADATA, with torch's style of Requires-Dist lines."""
    wheel = tmp_path / "torch-2.13.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl"
    meta = ["Metadata-Version: 2.1", "Name: torch", "Version: 2.13.0+cu128",
            "Requires-Dist: filelock", "Requires-Dist: sympy>=1.13.3",
            'Requires-Dist: triton==3.5.0; platform_system == "Linux"']
    meta += [f'Requires-Dist: {n}=={v}; platform_system == "Linux" and '
             f'platform_machine == "x86_64"' for n, v in pins.items()]
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("torch-2.13.0+cu128.dist-info/METADATA", "\n".join(meta) + "\n")
    return wheel


PINS = {n: f"12.{i}.0.1" for i, n in enumerate((*cuda.ORT_CUDA_LIBS, *cuda.TORCH_CUDA_LIBS))}


def stand_in_libs(tmp_path: Path, pins: dict[str, str]) -> list[Path]:
    out = []
    for n, v in pins.items():
        p = tmp_path / f"{n.replace('-', '_')}-{v}-py3-none-manylinux2014_x86_64.whl"
        p.write_bytes(b"")
        out.append(p)
    return out


def test_the_cuda_layer_takes_torchs_pins_for_every_library_both_load(tmp_path):
    pins = cuda.torch_pins(fake_torch_wheel(tmp_path, PINS))
    assert pins == PINS  # triton and the unpinned ones are not CUDA libraries
    reqs = cuda.cuda_lib_requirements(pins)
    assert "nvidia-cudnn-cu12==" + PINS["nvidia-cudnn-cu12"] in reqs
    assert len(reqs) == len(PINS)


def test_a_torch_that_pins_an_unknown_set_is_refused_naming_it(tmp_path):
    pins = {n: v for n, v in PINS.items() if n != "nvidia-nccl-cu12"}
    with pytest.raises(WheelhouseError, match=r"pins no nvidia-nccl-cu12; update"):
        cuda.cuda_lib_requirements(cuda.torch_pins(fake_torch_wheel(tmp_path, pins)))


def test_a_cuda_layer_with_other_versions_than_torch_pins_is_refused(tmp_path):
    staged = cuda.staged_libs(stand_in_libs(tmp_path, PINS))
    cuda.check_pins(PINS, staged)  # the same: fine
    other = {**PINS, "nvidia-cudnn-cu12": "9.1.0.70"}
    with pytest.raises(WheelhouseError, match=rf"pins nvidia-cudnn-cu12 9\.1\.0\.70 but the "
                                              rf"CUDA layer holds {PINS['nvidia-cudnn-cu12']}"):
        cuda.check_pins(other, staged)
    del staged["nvidia-cublas-cu12"]
    with pytest.raises(WheelhouseError, match=r"lacks nvidia-cublas-cu12"):
        cuda.check_pins(PINS, staged)


def test_both_gpu_variants_start_from_the_one_cuda_layer():
    def chain(name: str) -> list[str]:
        v = VARIANTS[name]
        below = chain(v.parent) if v.parent else ["base"]
        return [*below, name]

    for name in ("slim", "torch", "cuda", "torch-cuda"):
        layers = cuda.layer_plan(name)
        assert len(chain(name)) == len(layers)  # one image per layer, as built
    assert chain("cuda")[:2] == chain("torch-cuda")[:2] == ["base", "cuda-libs"]
    assert "cuda-libs" not in chain("slim") + chain("torch")
    assert chain("torch-cuda")[:3] == chain("cuda")
    assert not VARIANTS["cuda-libs"].archive  # a layer, never a bundle's runtime image alone


def test_the_gpu_runtime_layer_swaps_onnxruntime_for_its_gpu_build():
    reqs = cuda.ort_gpu_requirements(ROOT)
    assert cuda.ORT_GPU in reqs
    assert not [r for r in reqs if r.startswith("onnxruntime>") or r == "onnxruntime"]
    assert any(r.startswith("fastapi") for r in reqs)
    assert not [r for r in reqs if r.startswith("nvidia-") and "ml-py" not in r]


def test_the_cuda_layer_is_labelled_with_the_cuda_it_holds():
    text = (HERE / "Containerfile.cuda-libs").read_text()
    assert f'LABEL {cuda.CUDA_LABEL}="{cuda.CUDA_VERSION}"' in text
    for name in ("Containerfile.cuda", "Containerfile.torch-cuda"):
        body = (HERE / name).read_text()
        assert "--no-index" in body and "nvidia_" not in body  # no CUDA library above it


def fake_ort_gpu_wheel(tmp_path: Path, version: str, cuda_version: str) -> Path:
    """An onnxruntime-gpu wheel holding only its build info, as the real one says it."""
    wheel = tmp_path / f"onnxruntime_gpu-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(cuda.ORT_BUILD_INFO, f"package_name = 'onnxruntime-gpu'\n"
                                        f"__version__ = '{version}'\n"
                                        f"cuda_version = '{cuda_version}'\n")
    return wheel


def test_an_onnxruntime_gpu_built_for_another_cuda_is_refused_naming_both(tmp_path):
    """PyPI's onnxruntime-gpu 1.31.1 is a CUDA 13 build: on the CUDA 12 layer its
    provider cannot load libcublasLt.so.13, so the image would serve on the CPU."""
    cuda.check_ort_cuda([fake_ort_gpu_wheel(tmp_path, "1.26.0", "12.9")])
    with pytest.raises(WheelhouseError) as err:
        cuda.check_ort_cuda([fake_ort_gpu_wheel(tmp_path, "1.31.1", "13.0")])
    msg = str(err.value)
    assert "built for CUDA 13.0" in msg and f"CUDA {cuda.CUDA_VERSION}" in msg
    assert "ORT_GPU" in msg and "\n" not in msg
    assert "<1.27" in cuda.ORT_GPU  # the last CUDA 12 builds on PyPI


def test_the_cuda_layer_puts_every_library_onnxruntime_loads_on_the_loader_path():
    """The provider links the CUDA libraries by soname with no RUNPATH: without their
    directories on LD_LIBRARY_PATH (or a preload) it cannot load and the model runs on
    the CPU."""
    env = [x for x in (HERE / "Containerfile.cuda-libs").read_text().splitlines()
           if x.startswith("ENV LD_LIBRARY_PATH=")]
    assert len(env) == 1
    dirs = env[0].partition("=")[2].split(":")
    site = "/opt/runtime/lib/python3.11/site-packages"
    for name in cuda.ORT_CUDA_LIBS:  # nvidia-cuda-runtime-cu12 -> nvidia/cuda_runtime/lib
        sub = name.removeprefix("nvidia-").removesuffix("-cu12").replace("-", "_")
        assert f"{site}/nvidia/{sub}/lib" in dirs, name
    for name in ("Containerfile.cuda", "Containerfile.torch-cuda"):  # nothing above resets it
        assert "LD_LIBRARY_PATH" not in (HERE / name).read_text()
