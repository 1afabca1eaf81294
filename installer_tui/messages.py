"""Messages the screens' workers post (from their threads) to the screens."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textual.message import Message

from appliance.bundle.manifest import Manifest
from appliance.progress import Progress
from appliance.site.devices import ModelDevice
from appliance.site.fallbacks import FallbackFigures
from appliance.site.plan import InstallResult
from installer_tui.figures import FigureSample
from installer_tui.media import FoundBundle
from signing import Envelope


@dataclass
class BundlesFound(Message):
    """The media scan finished."""

    bundles: list[FoundBundle]
    labels: list[str] = field(default_factory=list)  # one line per bundle, as listed


@dataclass
class BundleOpened(Message):
    """A bundle's front members were read (not yet trusted: the signature is checked later)."""

    parts: list[Path]
    manifest: Manifest
    envelope: Envelope


@dataclass
class Failed(Message):
    """Work in a worker failed; `error` is the one-line message, `kind` its class name."""

    error: Exception
    where: str


@dataclass
class PlanProgress(Message):
    """An event from the install plan (StepEvent, CheckEvent or Progress)."""

    event: Progress


@dataclass
class ReviewReady(Message):
    """Preflight, verify and placement are done: show the manifest, GPUs and placement."""


@dataclass
class InstallFinished(Message):
    """Every step ran; the new release is serving."""

    result: InstallResult
    health: dict[str, bool]


@dataclass
class DevicesRead(Message):
    """Where each model of the serving release runs, asked of its runtimes."""

    devices: dict[str, list[ModelDevice]]


@dataclass
class StatusRead(Message):
    """The serving release as the site records it, and whether each service answers."""

    sequence: int | None
    title: str
    engine: str
    endpoints: dict[str, str]
    health: dict[str, bool]
    rollback_to: int | None
    # every other installed release that can serve: (sequence, "release 1 (demo 1.1.0)")
    others: list[tuple[int, str]] = field(default_factory=list)
    # behind a front door: its certificate, each model's infer URL and a curl line
    door_lines: list[str] = field(default_factory=list)


@dataclass
class FiguresHistory(Message):
    """Earlier samples to fill the sparklines with."""

    samples: list[FigureSample]


@dataclass
class FiguresSampled(Message):
    """One new sample (None: the runtime did not answer)."""

    sample: FigureSample | None


@dataclass
class RolledBack(Message):
    """A rollback finished; `sequence` serves now."""

    sequence: int


@dataclass
class LogsExported(Message):
    """The log archives were written (one per service)."""

    paths: list[Path]


@dataclass
class FallbacksRead(Message):
    """Each service's fallback as the front door's proxy sees it now."""

    figures: list[FallbackFigures]
