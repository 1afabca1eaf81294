"""The status screen says where each model runs (asked of the real runtime) and draws one
sparkline per GPU figure; the figures come from /metrics and the runtime's history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.site.gpu import GpuReport
from installer_tui.figures import FigureSample, GpuFigure, _from_history, gpu_figures, parse_metrics
from installer_tui.screens.install import InstallScreen
from installer_tui.screens.status import StatusScreen
from installer_tui.widgets.gpu_figures import GpuFigures, spark
from tests.tui.kit import build_demo, text_of, wait_for, write_root
from tests.tui.test_install_flow import open_first_bundle, state_is

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

METRICS = """\
# HELP runtime_gpu_utilization_percent GPU utilisation
runtime_gpu_utilization_percent{gpu="0"} 37.0
runtime_gpu_utilization_percent{gpu="1"} 90.0
runtime_gpu_memory_used_bytes{gpu="0"} 1073741824.0
runtime_gpu_memory_used_bytes{gpu="1"} 2147483648.0
runtime_gpu_temperature_celsius{gpu="0"} 55.0
runtime_gpu_temperature_celsius{gpu="1"} 71.0
"""


def test_per_gpu_figures_come_from_metrics_and_history() -> None:
    assert gpu_figures(parse_metrics(METRICS)) == (GpuFigure(0, 37.0, 1024.0, 55.0),
                                                   GpuFigure(1, 90.0, 2048.0, 71.0))
    sample = _from_history({"rps": 1.0, "p99_ms": 2.0, "gpus": [
        {"index": 0, "name": "L4", "memory_total_mib": 23034, "memory_free_mib": 22010,
         "utilization_pct": 12.0, "temperature_c": 48.0}]})
    assert sample.gpus == (GpuFigure(0, 12.0, 1024.0, 48.0),)
    assert _from_history({"rps": 1.0}).gpus == ()


def test_spark_scales_to_a_fixed_top_or_the_maximum() -> None:
    assert spark([0.0, 50.0, 100.0], 100.0) == "▁▅█"
    assert spark([1.0, 2.0]) == "▅█"
    assert spark([0.0, 0.0]) == "▁▁" and spark([]) == ""


class GpuServerFigures:
    """Figures as a runtime on a two-GPU server reported them (no GPU exists here)."""

    def __init__(self, _urls: object) -> None:
        pass

    def history(self) -> list[FigureSample]:
        return [FigureSample(1.0, 2.0, 3072.0, (GpuFigure(0, float(i), 1024.0, 50.0 + i),
                                                GpuFigure(1, 90.0, 2048.0, 71.0)))
                for i in range(10)]

    def sample(self) -> FigureSample | None:
        return None


@pytest.mark.slow
async def test_status_shows_each_models_device_and_per_gpu_sparklines(rig, vendor_key, port):
    bundle = build_demo(rig.media / "usb", 1, port, vendor_key, gpu="preferred")
    rig.install_headless(bundle, write_root(rig.media / "usb" / "root.json", [vendor_key]))
    rig.figures = GpuServerFigures
    app = rig.app(start_on_status=True, poll_interval_s=3600.0)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StatusScreen)
                       and "model mlp" in text_of(app.screen.query_one("#devices")),
                       what="the devices")
        devices = text_of(app.screen.query_one("#devices"))
        assert "mlp: model mlp on cpu (no GPU visible)" in devices
        gpus = app.screen.query_one(GpuFigures)
        await wait_for(pilot, lambda: gpus.display and gpus.series, what="the GPU figures")
        shown = text_of(gpus)
        for row in ("GPU 0 util", "GPU 0 memory", "GPU 0 temp", "GPU 1 util", "GPU 1 temp"):
            assert row in shown, shown
        assert "59 °C" in shown and "71 °C" in shown and "2048 MiB" in shown


def test_no_gpu_figures_hide_the_rows(tmp_path: Path) -> None:
    w = GpuFigures()
    w.push(())
    assert w.series == {}


@pytest.mark.slow
async def test_the_end_screen_says_a_gpu_preferring_service_runs_on_the_cpu(
        rig, vendor_key, port):
    """Placed on a recorded GPU, the runtime finds none here: the end screen, not only a
    log, says that the service runs on the CPU and why."""
    build_demo(rig.media, 1, port, vendor_key, gpu="preferred", gpu_mib=2048)
    write_root(rig.media / "root.json", [vendor_key])
    rig.gpus = GpuReport.from_dict(json.loads(
        (Path(__file__).parents[1] / "site" / "gpu_states" / "two_uneven.json").read_text()))
    app = rig.app()
    async with app.run_test(size=(100, 40)) as pilot:
        await open_first_bundle(pilot)
        await pilot.press("space", "c")
        await wait_for(pilot, state_is(app, "review", "failed"), what="the review")
        assert app.screen.state == "review", app.screen.error
        await pilot.press("i")
        await wait_for(pilot, state_is(app, "done", "failed"), what="the install")
        install = app.screen
        assert isinstance(install, InstallScreen) and install.state == "done", install.error
        done = text_of(install.query_one("#done-text"))
        best = max(rig.gpus.gpus, key=lambda g: g.memory_free_mib)
        assert f"mlp: GPU {best.index}" in done  # the placement wanted the GPU
        assert "mlp: model mlp on cpu" in done  # the runtime says where it really runs
        # why, in the words of the process engine's cause (no NVML here), or a CPU image
        assert ("mlp runs on the CPU (gpu: preferred): the runtime sees no GPU" in done
                or "mlp runs on the CPU (gpu: preferred): its runtime image is the CPU "
                   "variant" in done), done
