# One virtual environment, made on first use; every target runs from it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test lint typecheck unit demo bench runtime-image proxy-image clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,torch]'
	touch $@

# Style, the layers of docs/architecture.md, and declared == imported dependencies.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

demo: venv
	$(PY) -m appliance demo

# Every benchmark, each printing its table with a baseline measured in the same run.
bench: bench-bundle bench-runtime bench-install bench-support bench-frontdoor

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out

# The runtime container image, built with no registry (docs/runtime-image.md):
# out/runtime-image.tar (ONNX only); the torch variant only when asked, it is big.
.PHONY: runtime-image-torch
runtime-image: venv
	$(PY) -m images.build

runtime-image-torch: venv
	$(PY) -m images.build --variant torch

# The front-door proxy image (HAProxy from Debian's packages, same base): out/proxy-image.tar.
proxy-image: venv
	$(PY) -m images.proxy

# The GPU variants (docs/runtime-image.md): CUDA 12 and cuDNN 9 from the nvidia-*-cu12
# wheels in one layer both share; several GB, never built by the tests.
.PHONY: runtime-image-cuda runtime-image-torch-cuda
runtime-image-cuda: venv
	$(PY) -m images.build --variant cuda

runtime-image-torch-cuda: venv
	$(PY) -m images.build --variant torch-cuda

.PHONY: bench-bundle bench-runtime
bench-bundle: venv
	$(PY) bench/bundle_bench.py --sizes 0.5,2 --repeat 5

bench-runtime: venv
	$(PY) bench/runtime_bench.py --seconds 10 --soak 300

# The front door's overhead against straight to the runtime (needs haproxy and wrk).
.PHONY: bench-frontdoor
bench-frontdoor: venv
	$(PY) bench/frontdoor_bench.py --seconds 10 --repeat 3
	$(PY) bench/frontdoor_killgap.py --rounds 3

# From a 1 GiB-weights bundle on the "stick" to the first inference, against
# podman load + podman run by hand (docs/benchmarks.md); needs root and podman.
.PHONY: bench-install
bench-install: venv
	$(PY) bench/install_bench.py --rounds 3

# Support export and report over a busy site's week, against tar -czf by hand.
.PHONY: bench-support
bench-support: venv
	$(PY) bench/support_bench.py --days 7 --step 10 --services 2 --sites 3

# The self-contained installer executable for a stick (docs/stick.md):
# out/appliance-installer, built in a Debian bullseye root (glibc >= 2.31) from
# pinned wheels; needs root and debootstrap. Cached by its inputs.
.PHONY: installer
installer: venv
	$(PY) -m installer_exe.build

# The GPU check (bench/gpu_check.py, docs/benchmarks.md): on a machine with an NVIDIA
# GPU, PyTorch with CUDA and nvidia-ml-py; no container engine, no network. It runs
# with the machine's python3 (not the venv); the rest comes from GPU_WHEELS, staged
# beforehand where PyPI is reachable (about 30 MiB). DEVICE=cpu is the dry run.
.PHONY: gpu-check gpu-check-wheels
DEVICE ?= cuda
GPU_WHEELS ?= out/gpu-check-wheels
GPU_CHECK_PY ?= 3.11
GPU_CHECK_ARGS ?=
GPU_CHECK_NEEDS := uvicorn numpy psutil orjson uvloop httptools pyyaml cryptography

gpu-check-wheels:
	mkdir -p $(GPU_WHEELS)
	printf '%s\n' $(GPU_CHECK_NEEDS) > $(GPU_WHEELS)/requirements.txt
	$(PYTHON) -m pip download -q --only-binary=:all: --implementation cp \
	    --python-version $(GPU_CHECK_PY) --platform manylinux2014_x86_64 \
	    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	    -d $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt
	du -sh $(GPU_WHEELS)

gpu-check:
	$(PYTHON) bench/gpu_check.py --device $(DEVICE) --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)
