"""GPU choice: NVML behind one small seam (`GpuSource`), selection as a pure function."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from modelcontract import GpuState
from runtime.errors import GpuUnavailableError

log = logging.getLogger("runtime.gpu")
MIB = 1024 * 1024

# Why a model that could have had a GPU runs on the CPU. The site turns each into the
# likely cause and what to do (appliance.site.devices), so the codes are an interface.
CpuCause = Literal["no-gpu-visible", "no-cuda-provider", "cuda-init-failed", "no-gpu-memory",
                   "cpu-requested"]


@dataclass(frozen=True)
class CpuReason:
    """Why a model runs on the CPU: a stable cause code and what was seen."""

    cause: CpuCause
    detail: str

    def line(self) -> str:
        """One plain line: the cause and what the runtime saw."""
        return f"{self.cause}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "detail": self.detail}


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
                name = nvml.nvmlDeviceGetName(h)
                out.append(GpuState(
                    index=i, name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mib=int(mem.total) // MIB, memory_free_mib=int(mem.free) // MIB,
                    utilization_pct=_optional(
                        lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                    temperature_c=_optional(
                        lambda h=h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                ))
        except Exception as e:
            raise GpuUnavailableError(f"NVML query failed ({type(e).__name__}: {e})") from e
        if not out:
            raise GpuUnavailableError("NVML reports no GPU")
        return out


def _optional(read: Any) -> float:
    """A figure some boards do not report (MIG, vGPU): 0 then, not "no GPU"."""
    try:
        return float(read())
    except Exception:  # pynvml.NVMLError_NotSupported and kin
        return 0.0


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
    return plan_with_reasons(needs, source, setting)[0]


def plan_with_reasons(needs: Sequence[tuple[str, int]], source: GpuSource,
                      setting: str = "auto") -> tuple[dict[str, str], dict[str, CpuReason]]:
    """`plan_devices`, plus why each model placed on the CPU is there."""
    if setting == "cpu":
        log.info("device=cpu requested: every model runs on CPU")
        why = CpuReason("cpu-requested", "the runtime was started with device cpu")
        return {key: "cpu" for key, _ in needs}, {key: why for key, _ in needs}
    try:
        states = {s.index: s for s in source.devices()}
    except GpuUnavailableError as e:
        log.warning("no GPU: %s; every model runs on CPU", e)
        why = CpuReason("no-gpu-visible", str(e))
        return {key: "cpu" for key, _ in needs}, {key: why for key, _ in needs}
    if setting.startswith("cuda:"):
        wanted = int(setting.split(":", 1)[1])
        states = {i: s for i, s in states.items() if i == wanted}
    plan: dict[str, str] = {}
    reasons: dict[str, CpuReason] = {}
    for key, need in sorted(needs, key=lambda kn: -kn[1]):
        idx = choose_device(list(states.values()), need)
        if idx is None:
            log.warning("model %s needs %d MiB GPU memory and no GPU has it free; runs on CPU",
                        key, need)
            plan[key] = "cpu"
            free = ", ".join(f"cuda:{i} {s.memory_free_mib} MiB" for i, s in states.items())
            reasons[key] = CpuReason("no-gpu-memory",
                                     f"needs {need} MiB, free: {free or 'no such GPU'}")
            continue
        s = states[idx]
        states[idx] = GpuState(s.index, s.name, s.memory_total_mib,
                                  s.memory_free_mib - need, s.utilization_pct, s.temperature_c)
        plan[key] = f"cuda:{idx}"
        log.info("model %s on cuda:%d (%s, %d MiB free before it)", key, idx, s.name,
                 s.memory_free_mib)
    return plan, reasons
