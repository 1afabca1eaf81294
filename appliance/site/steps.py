"""What the install plan takes, tells and gives: its options, its steps and their events,
and its result (`appliance.site.plan` runs the steps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.bundle.verify import DEFAULT_MAX_EXPIRED
from appliance.frontdoor.canary import CanaryBounds, CanaryPlan
from appliance.progress import Progress
from appliance.site.devices import ModelDevice
from appliance.site.door import DoorRecord
from appliance.site.engine import Engine
from appliance.site.gpu import GpuProbe
from appliance.site.layout import Site
from appliance.site.placement import Placement
from appliance.site.watchdog_units import WatchdogSetup


@dataclass(frozen=True)
class StepEvent(Progress):
    """A step began ("running") or ended ("ok", "warn", "failed")."""

    status: str = "running"


@dataclass(frozen=True)
class CheckEvent(Progress):
    """One preflight line."""

    level: str = "pass"


@dataclass(frozen=True)
class Step:
    name: str
    title: str


STEPS = (
    Step("preflight", "Preflight checks"),
    Step("verify", "Verify signature and copy into the store"),
    Step("placement", "Probe GPUs and place services"),
    Step("load", "Load images into the engine"),
    Step("start", "Start the new release"),
    Step("health", "Wait until the new release is ready"),
    Step("accept", "Check signed samples"),
    Step("switch", "Switch current to the new release"),
    Step("stop_old", "Stop the previous release"),
)


@dataclass
class InstallOptions:
    """Everything the plan needs, passed in (so tests point it at temp dirs and sockets)."""

    bundle: Path | list[Path]
    site: Site
    engine: Engine
    gpu_probe: GpuProbe
    trust: Path | None = None  # a root file to accept on first install
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    allow_expired: bool = False
    max_expired: timedelta = DEFAULT_MAX_EXPIRED  # how far past expiry allow_expired reaches
    health_timeout_s: float = 300.0
    tls_cert: Path | None = None  # the hospital's own pair for the front door
    tls_key: Path | None = None
    canary: CanaryPlan | None = None  # a share of live traffic first, then promote or not
    canary_bounds: CanaryBounds = field(default_factory=CanaryBounds)
    unit_dir: Path | None = None  # the watchdog's systemd units (default: the engine's, else
    # /etc/systemd/system); see appliance.site.watchdog_units


@dataclass(frozen=True)
class InstallResult:
    sequence: int
    previous: int | None
    endpoints: dict[str, str]
    placement: Placement
    door: DoorRecord | None = None  # the stable addresses, when behind the front door
    token: str = ""  # the site token, only when this install made it (show it once)
    # service -> where each of its models runs, as its runtime said after health
    devices: dict[str, list[ModelDevice]] = field(default_factory=dict)
    watchdog: WatchdogSetup | None = None  # how the watchdog runs (`line` says it in words)
