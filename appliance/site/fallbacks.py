"""When a service is answered by its fallback, and how many requests the fallback answered.

HAProxy's `show stat` (runtime API) holds the figures: the `fallback` backup server of
`be_<svc>` answers while no slot of the service is up, and the `fallback` server of
`fb_<svc>` while more than the queue bound wait; the answered count is both servers'
sessions since the proxy started. `observe` compares what it reads with what the last
observer saw (`<root>/frontdoor/fallback.json`, under a lock) and writes one audit record
when a service starts being answered by its fallback and one when it stops, with the
counts. The watchdog observes every few seconds; `appliance status` and the status screen
observe whenever someone looks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.errors import ProxyApiError
from appliance.frontdoor import config
from appliance.frontdoor import site as files_of
from appliance.frontdoor.runtime_api import ProxyApi
from appliance.site import audit
from appliance.site.door import DoorRecord
from appliance.site.layout import Site

STATE_FILE = "fallback.json"  # in the front door's directory: services answered by fallback


@dataclass(frozen=True)
class FallbackFigures:
    """One service's fallback as the proxy sees it now."""

    service: str
    fallback: str  # the fallback service's name
    answering: bool  # no slot of the service is up: the fallback takes its requests
    answered: int  # requests the fallback answered since the proxy started
    main: str  # the service's slots, e.g. "a DOWN, b MAINT"


def fallback_line(f: FallbackFigures) -> str:
    """One line a person reads: whether the fallback answers now, and how much it answered."""
    now = (f"answered by its fallback {f.fallback} NOW (main: {f.main})" if f.answering
           else f"served by its main release; fallback {f.fallback}")
    return (f"{f.service}: {now}; {f.answered} request(s) answered by the fallback since the "
            "front door started")


def read_fallbacks(site: Site) -> list[FallbackFigures]:
    """Each fallback of the serving release behind the front door ([] when there is no
    front door, no fallback, or the proxy does not answer)."""
    record = DoorRecord.read(site)
    if record is None or not record.fallbacks:
        return []
    api = ProxyApi(site.root / files_of.RUN_DIR / files_of.SOCKET)
    out = []
    for svc, fb in sorted(record.fallbacks.items()):
        try:
            main = api.servers(config.backend_name(svc))
        except ProxyApiError:
            continue
        answered = main[config.FALLBACK].requests if config.FALLBACK in main else 0
        # (a proxy rendered before the overflow backend existed has none)
        with contextlib.suppress(ProxyApiError, KeyError):
            answered += api.servers(f"fb_{svc}")[config.FALLBACK].requests
        slots = [main[s] for s in config.SLOTS if s in main]
        out.append(FallbackFigures(svc, fb, not any(s.up for s in slots), answered,
                                   ", ".join(f"{s.name} {s.status}" for s in slots)))
    return out


def observe(site: Site, now: datetime | None = None) -> list[FallbackFigures]:
    """Read the fallbacks and record in the audit trail each service that started or
    stopped being answered by its fallback since the last observation; return what was read.

    Never raises for an unwritable state file or trail (logged by `audit.record`): status
    must still show the figures.
    """
    seen = read_fallbacks(site)
    if not seen:
        return seen
    when = (now or datetime.now(UTC)).astimezone(UTC)
    path = site.root / files_of.CONF_DIR / STATE_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as e:
        audit.log.warning("cannot keep the fallback state in %s: %s", path, e)
        return seen
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # status and the watchdog may look at once
        try:
            state = json.loads(f.read() or b"{}")
        except ValueError:
            state = {}
        for fig in seen:
            state[fig.service] = _step(site, fig, state.get(fig.service), when)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    return seen


def _step(site: Site, fig: FallbackFigures, before: dict[str, object] | None,
          when: datetime) -> dict[str, object]:
    """One service's next state; an audit record when its fallback started or stopped.

    An episode's count runs from the last observation that saw the main serving, so the
    requests answered before an observer first noticed are counted too.
    """
    prev = before or {}
    seen = int(str(prev.get("seen", 0)))
    baseline = int(str(prev.get("baseline", seen)))
    if fig.answered < seen:  # the proxy restarted: its counters began again
        seen = baseline = 0
    was = bool(prev.get("answering", False))
    since = str(prev.get("since", when.isoformat()))
    if fig.answering and not was:
        baseline, since = seen, when.isoformat()
        audit.record(site.root, "fallback_started", service=fig.service, fallback=fig.fallback,
                     main=fig.main, answered=fig.answered - baseline,
                     answered_total=fig.answered)
    elif was and not fig.answering:
        audit.record(site.root, "fallback_stopped", service=fig.service, fallback=fig.fallback,
                     main=fig.main, answered=fig.answered - baseline,
                     answered_total=fig.answered,
                     for_s=round((when - datetime.fromisoformat(since)).total_seconds(), 1))
    return {"answering": fig.answering, "seen": fig.answered,
            "baseline": baseline if fig.answering else fig.answered, "since": since}
