"""The appliance's watchdog: restart a serving service that lives but answers nothing.

A hung runtime (a deadlock, a stuck GPU call) keeps its process, so no engine
restarts it: Docker never restarts an unhealthy container, podman only with
`--health-on-failure` (4.6 and later), and a supervisor sees a live process. The
watchdog probes each service of `current` on its health path, and one that has not
answered ready for `unhealthy_s` is restarted through its engine and recorded in the
site's audit trail. After a restart it is given `start_grace_s` to come back. Each check
also records when a service starts or stops being answered by its fallback
(`appliance.site.fallbacks`).

Run it with `appliance watchdog` (a loop), or `appliance watchdog --once` from the
systemd timer the install sets up (`appliance.site.watchdog_units`) or from cron:
each run then carries how long a service has been unready in `STATE_FILE`, on the
wall clock, so the bound holds across runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.frontdoor import site as files_of
from appliance.fsutil import atomic_write, cap_log
from appliance.site import audit, fallbacks
from appliance.site.acceptance import is_ready
from appliance.site.engine import HEALTH_START_PERIOD_S, Engine
from appliance.site.layout import Site

log = logging.getLogger(__name__)
UNHEALTHY_S = 60.0  # the stated bound: not ready this long -> restarted
CHECK_EVERY_S = 5.0
STATE_FILE = "watchdog-state.json"  # in the site root: what one `--once` run leaves the next


def cap_output_logs(site: Site) -> list[Path]:
    """Keep the process engine's output logs (each release's `run/*.log`, HAProxy's
    `frontdoor-proc/haproxy.log`) under their cap where systemd writes them (its
    `StandardOutput=append:` never rotates); return those rotated. The supervisor caps
    its own where systemd is not PID 1."""
    logs = [*site.releases_dir.glob("*/run/*.log"),
            site.root / files_of.PROC_DIR / files_of.PROC_LOG]
    return [p for p in logs if cap_log(p)]


@dataclass
class Watchdog:
    """Probes the serving release's services and restarts the ones that stopped answering."""

    site: Site
    engine: Engine
    unhealthy_s: float = UNHEALTHY_S
    start_grace_s: float = float(HEALTH_START_PERIOD_S)
    probe: Callable[[str], bool] = is_ready
    clock: Callable[[], float] = time.monotonic
    _since: dict[str, float] = field(default_factory=dict)
    _grace: dict[str, float] = field(default_factory=dict)

    def check(self) -> list[str]:
        """Probe once; restart every service unhealthy for `unhealthy_s`; return their names."""
        try:
            cur = self.site.current()
            if cur is None:
                return []
            rec, m = cur.record, cur.manifest()
        except ApplianceError as e:
            log.warning("watchdog: %s", e)
            return []
        restarted = []
        for svc in m.services:
            key = f"{cur.sequence}/{svc.name}"
            base = rec.endpoints.get(svc.name)
            now = self.clock()
            if not base or now < self._grace.get(key, 0.0) or self.probe(base + svc.health):
                self._since.pop(key, None)
                continue
            first = self._since.setdefault(key, now)
            if now - first < self.unhealthy_s:
                continue
            try:
                self.engine.restart(cur.sequence, svc.name)
            except ApplianceError as e:
                log.error("watchdog: %s", e)
                audit.record(self.site.root, "watchdog_failed", sequence=cur.sequence,
                             service=svc.name, error=str(e))
                continue
            audit.record(self.site.root, "watchdog_restart", sequence=cur.sequence,
                         service=svc.name, unhealthy_s=round(now - first, 1))
            log.warning("watchdog: restarted %s of release %s, not ready for %.0fs",
                        svc.name, cur.sequence, now - first)
            self._since.pop(key, None)
            self._grace[key] = self.clock() + self.start_grace_s
            restarted.append(svc.name)
        fallbacks.observe(self.site)  # a service answered by its fallback: audit start/end
        cap_output_logs(self.site)
        return restarted

    def check_once(self) -> list[str]:
        """`check` as one run of many (timer, cron): state from the last run, then saved.

        The clock must be the wall clock (`time.time`), which runs on between processes.
        """
        path = self.site.root / STATE_FILE
        try:
            raw = json.loads(path.read_text())
            self._since = {str(k): float(v) for k, v in raw.get("unready_since", {}).items()}
            self._grace = {str(k): float(v) for k, v in raw.get("grace_until", {}).items()}
        except (OSError, ValueError, AttributeError):
            pass  # the first run, or a torn file: start counting afresh
        restarted = self.check()
        if self.site.root.is_dir():
            atomic_write(path, json.dumps({"checked_at": self.clock(),
                                           "unready_since": self._since,
                                           "grace_until": self._grace}).encode())
        return restarted

    def run(self, stop: threading.Event, every_s: float = CHECK_EVERY_S) -> None:
        """Check every `every_s` until `stop` is set."""
        while not stop.is_set():
            self.check()
            stop.wait(every_s)
