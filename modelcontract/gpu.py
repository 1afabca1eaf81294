"""One GPU as NVML reports it at one moment: the installer places models by it, the
runtime chooses its device and reports its figures by it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuState:
    """One GPU's identity and memory, utilisation and temperature at one moment."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int
    utilization_pct: float = 0.0
    temperature_c: float = 0.0
    uuid: str = ""

    @property
    def memory_used_mib(self) -> int:
        """Memory in use by anyone."""
        return self.memory_total_mib - self.memory_free_mib
