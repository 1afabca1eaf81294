"""Preflight's GPU lines: the driver against the image's CUDA, and the CDI spec."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from appliance.bundle.manifest import Manifest
from appliance.site.gpu import RecordedProbe
from appliance.site.preflight import check_cdi, check_driver_for_cuda, check_gpu_runtime
from tests.site.factory import manifest

STATES = Path(__file__).parent / "gpu_states"
NVIDIA_CTK_SPEC = """---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
{devices}
containerEdits:
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.{driver}
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.{driver}
  - hostPath: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{driver}
    containerPath: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{driver}
"""


def state(name: str):
    return RecordedProbe.from_file(STATES / f"{name}.json").probe()


def on_cuda(m: Manifest, cuda: str) -> Manifest:
    return replace(m, images=[replace(i, cuda=cuda) for i in m.images])


def write_spec(d: Path, uuids: list[str], driver: str) -> Path:
    d.mkdir(exist_ok=True)
    devices = "\n".join(f"- name: {u}\n  containerEdits:\n    deviceNodes:\n"
                        f"    - path: /dev/nvidia{i}" for i, u in enumerate(uuids))
    p = d / "nvidia.yaml"
    p.write_text(NVIDIA_CTK_SPEC.format(devices=devices, driver=driver))
    return p


def test_an_old_driver_is_refused_naming_both_versions():
    m = on_cuda(manifest([("mlp", [("mlp", 1000)], "required")]), "12.4")
    c = check_driver_for_cuda(state("old_driver"), m)
    assert c.level == "fail"
    assert "CUDA 12.4" in c.message and "525.60.13" in c.message and "470.223.02" in c.message
    assert "upgrade the driver" in c.message
    assert check_driver_for_cuda(state("four_l4"), m).level == "pass"  # 535 runs 12.x


def test_a_cpu_image_or_a_cpu_service_needs_no_driver():
    cpu_image = manifest([("mlp", [("mlp", 1000)], "required")])
    assert check_driver_for_cuda(state("old_driver"), cpu_image).level == "pass"
    cpu_service = on_cuda(manifest([("mlp", [("mlp", 0)], "none")]), "12.4")
    assert check_driver_for_cuda(state("old_driver"), cpu_service).level == "pass"
    assert check_driver_for_cuda(state("none"), on_cuda(cpu_image, "12.4")).level == "pass"


def test_cdi_spec_missing_says_what_to_run(tmp_path):
    m = manifest([("mlp", [("mlp", 1000)], "required")])
    c = check_cdi(state("four_l4"), m, True, dirs=[tmp_path / "cdi"])
    assert c.level == "fail" and "nvidia-ctk cdi generate" in c.message
    preferred = manifest([("mlp", [("mlp", 1000)], "preferred")])
    assert check_cdi(state("four_l4"), preferred, True, dirs=[tmp_path]).level == "warn"
    # an engine taking GPUs by device request needs no spec
    assert check_cdi(state("four_l4"), m, False, dirs=[tmp_path]).level == "pass"


def test_cdi_spec_made_for_another_driver_is_stale(tmp_path):
    m = manifest([("mlp", [("mlp", 1000)], "required")])
    report = state("four_l4")
    uuids = [g.uuid for g in report.gpus]
    write_spec(tmp_path, uuids, "535.161.08")
    assert check_cdi(report, m, True, dirs=[tmp_path]).level == "pass"
    write_spec(tmp_path, uuids, "530.30.02")
    c = check_cdi(report, m, True, dirs=[tmp_path])
    assert c.level == "fail" and "530.30.02" in c.message and "535.161.08" in c.message
    assert "stale" in c.message and "nvidia-ctk cdi generate" in c.message


def test_cdi_spec_without_a_gpu_of_this_server_is_stale(tmp_path):
    m = manifest([("mlp", [("mlp", 1000)], "required")])
    report = state("four_l4")
    write_spec(tmp_path, [g.uuid for g in report.gpus][:3], "535.161.08")
    c = check_cdi(report, m, True, dirs=[tmp_path])
    assert c.level == "fail" and "GPU-l43" in c.message
    # a spec of another kind is no spec for GPUs
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: vendor.com/fpga\n")
    assert "no CDI spec" in check_cdi(report, m, True, dirs=[tmp_path]).message


def test_an_engine_taking_gpus_by_cdi_is_sent_to_the_cdi_line_not_the_toolkit(tmp_path):
    class Podman:
        name = "docker"

        def gpu_runtime(self) -> bool:
            return False  # no CDI spec yet

    m = manifest([("mlp", [("mlp", 1000)], "required")])
    assert check_gpu_runtime(Podman(), state("four_l4"), m).level == "fail"  # type: ignore[arg-type]
    c = check_gpu_runtime(Podman(), state("four_l4"), m, uses_cdi=True)  # type: ignore[arg-type]
    assert c.level == "pass" and "CDI" in c.message
    assert "nvidia-ctk cdi generate" in check_cdi(state("four_l4"), m, True,
                                                  dirs=[tmp_path]).message
