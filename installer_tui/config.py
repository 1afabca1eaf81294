"""What the installer's screens are pointed at: the site, the engine, the GPU probe, media."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.bundle.verify import DEFAULT_MAX_EXPIRED
from appliance.site.engine import Engine
from appliance.site.gpu import GpuProbe
from appliance.site.layout import Site
from installer_tui.figures import FiguresSource, RuntimeFigures
from installer_tui.media import DEFAULT_MEDIA_ROOTS


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class InstallerConfig:
    """Everything the app needs, passed in, so tests point it at temp dirs and sockets."""

    site: Site
    engine: Callable[[Site], Engine]  # made when first needed (a socket may be down)
    gpu_probe: GpuProbe
    media_roots: Sequence[Path] = DEFAULT_MEDIA_ROOTS
    trust: Path | None = None  # a root.json given on the command line (first install)
    bundle: Path | None = None  # a bundle given on the command line: skip the search
    start_on_status: bool = False
    now: Callable[[], datetime] = _utc_now
    allow_expired: bool = False
    max_expired: timedelta = DEFAULT_MAX_EXPIRED
    health_timeout_s: float = 300.0
    poll_interval_s: float = 2.0
    figures: Callable[[Sequence[str]], FiguresSource] = RuntimeFigures
    export_dir: Path | None = None  # the directory the export field starts with
    opened_bundle: Path | None = None  # the bundle last opened on the find screen
    _engine: Engine | None = field(default=None, init=False, repr=False)

    def get_engine(self) -> Engine:
        """The engine, made once.

        Raises:
            EngineError: it cannot be made (unknown kind, SDK missing).
        """
        if self._engine is None:
            self._engine = self.engine(self.site)
        return self._engine

    def default_export_dir(self) -> Path:
        """Where logs go unless the person types another directory: the stick the bundle
        came from (the directory it was opened from, else the first bundle found on the
        media), else the first media root."""
        if self.export_dir is not None:
            return self.export_dir
        for bundle in (self.opened_bundle, self.bundle):
            if bundle is not None and bundle.parent.is_dir():
                return bundle.parent
        from installer_tui.media import find_bundles
        found = find_bundles(self.media_roots)
        if found:
            return found[0].path.parent
        for root in self.media_roots:
            if root.is_dir():
                return root
        return Path.cwd()
