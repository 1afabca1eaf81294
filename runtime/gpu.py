"""GPU choice: NVML behind one small seam (`GpuSource`), selection as a pure function."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from modelcontract import GpuState
from runtime.errors import GpuUnavailableError

log = logging.getLogger("runtime.gpu")
MIB = 1024 * 1024


class GpuSource(Protocol):
    """Where device states come from: NVML on a real box, a recording in tests."""

    def devices(self) -> list[GpuState]:
        """Current state of every device.

        Raises:
            GpuUnavailableError: no NVML, no driver, or no device.
        """
        ...


class NvmlSource:
    """Device states from NVML (`pynvml`, shipped as nvidia-ml-py)."""

    def __init__(self) -> None:
        self._nvml: Any = None

    def _init(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
            except Exception as e:  # ImportError, NVMLError_LibraryNotFound, driver errors
                raise GpuUnavailableError(f"NVML unavailable ({type(e).__name__}: {e})") from e
            self._nvml = pynvml
        return self._nvml

    def devices(self) -> list[GpuState]:
        """Query every device; see `GpuSource.devices`."""
        nvml = self._init()
        try:
            out = []
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                temp = nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
                name = nvml.nvmlDeviceGetName(h)
                out.append(GpuState(
                    index=i, name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mib=int(mem.total) // MIB, memory_free_mib=int(mem.free) // MIB,
                    utilization_pct=float(util.gpu), temperature_c=float(temp),
                ))
        except Exception as e:
            raise GpuUnavailableError(f"NVML query failed ({type(e).__name__}: {e})") from e
        if not out:
            raise GpuUnavailableError("NVML reports no GPU")
        return out


class RecordedSource:
    """Device states recorded earlier (tests, and boxes without a GPU)."""

    def __init__(self, states: Sequence[GpuState] | None) -> None:
        self._states = None if states is None else list(states)

    def devices(self) -> list[GpuState]:
        """The recorded states; `None` recorded means NVML was missing."""
        if self._states is None:
            raise GpuUnavailableError("NVML unavailable (recorded)")
        if not self._states:
            raise GpuUnavailableError("NVML reports no GPU")
        return list(self._states)


def choose_device(states: Sequence[GpuState], need_mib: int) -> int | None:
    """The index of the device with the most free memory that fits `need_mib`, or None."""
    fitting = [s for s in states if s.memory_free_mib >= need_mib]
    if not fitting:
        return None
    return max(fitting, key=lambda s: (s.memory_free_mib, -s.index)).index


def plan_devices(needs: Sequence[tuple[str, int]], source: GpuSource, setting: str = "auto"
                 ) -> dict[str, str]:
    """Assign each (model key, MiB needed) to "cuda:N" or "cpu", logging one line per fallback.

    Models are placed largest need first, and each placement takes its memory off the
    device's free figure, so two models never count on the same free memory.
    """
    if setting == "cpu":
        log.info("device=cpu requested: every model runs on CPU")
        return {key: "cpu" for key, _ in needs}
    try:
        states = {s.index: s for s in source.devices()}
    except GpuUnavailableError as e:
        log.warning("no GPU: %s; every model runs on CPU", e)
        return {key: "cpu" for key, _ in needs}
    if setting.startswith("cuda:"):
        wanted = int(setting.split(":", 1)[1])
        states = {i: s for i, s in states.items() if i == wanted}
    plan: dict[str, str] = {}
    for key, need in sorted(needs, key=lambda kn: -kn[1]):
        idx = choose_device(list(states.values()), need)
        if idx is None:
            log.warning("model %s needs %d MiB GPU memory and no GPU has it free; runs on CPU",
                        key, need)
            plan[key] = "cpu"
            continue
        s = states[idx]
        states[idx] = GpuState(s.index, s.name, s.memory_total_mib,
                                  s.memory_free_mib - need, s.utilization_pct, s.temperature_c)
        plan[key] = f"cuda:{idx}"
        log.info("model %s on cuda:%d (%s, %d MiB free before it)", key, idx, s.name,
                 s.memory_free_mib)
    return plan
