"""`appliance rollback`: serve an earlier release that is still installed.

Same moves as the tail of an install (load from the store, start beside the
serving release, wait ready, switch `current`, stop the others) under the same
site lock; if the old release does not come back, current keeps serving.
"""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import UTC, datetime

from appliance.errors import ApplianceError, ReleaseFailedError, SiteError
from appliance.progress import ProgressFn, no_progress
from appliance.site.acceptance import wait_ready
from appliance.site.audit import record as audit
from appliance.site.door import FrontDoor
from appliance.site.engine import Engine
from appliance.site.layout import PLACEMENT_FILE, Release, Site
from appliance.site.lock import site_lock
from appliance.site.placement import Placement
from appliance.site.plan import StepEvent


def rollback(site: Site, engine: Engine, sequence: int | None = None, *,
             progress: ProgressFn = no_progress, health_timeout_s: float = 300.0) -> int:
    """Serve an installed earlier release again: load, start, ready, switch, stop others.

    Returns the sequence now serving. The anti-rollback record is unchanged: this
    is the deliberate way back, to a release that is still installed.

    Raises:
        SiteError: no such release, or none earlier than current.
        ReleaseFailedError: the release did not come up; current keeps serving.
    """
    with site_lock(site):
        FrontDoor(site, engine, datetime.now(UTC), progress=progress).recover()
        cur = site.current()
        target = rollback_target(site, sequence)
        seq = target.sequence
        m = target.manifest()
        placement = Placement.from_dict(json.loads((target.path / PLACEMENT_FILE).read_bytes()))
        progress(StepEvent("rollback", message=f"roll back to release {seq}", status="running"))
        target.log("rollback", message=f"from release {cur.sequence if cur else None}")
        # the current release too, when a service of it is dead (its supervisor was killed)
        dead = cur is not None and cur.sequence == seq and not all(
            engine.alive(seq, s.name) for s in m.services)
        if cur is None or cur.sequence != seq or dead:
            engine.load(m, target, site.store, progress)
            slot = (cur.record.slot if dead else 1 - cur.record.slot) if cur is not None else 0
            endpoints = engine.start(m, target, placement, slot, progress)
            site.update_record(target, slot=slot, endpoints=endpoints, status="started")
            try:
                wait_ready({s.name: endpoints[s.name] + s.health for s in m.services},
                           lambda s: engine.alive(seq, s), health_timeout_s,
                           lambda s: engine.logs_tail(seq, s))
            except ApplianceError as e:
                engine.stop(seq)
                site.update_record(target, status="failed", reason=str(e))
                keeps = f"release {cur.sequence} keeps serving" if cur else "nothing serves"
                audit(site.root, "rollback_failed", sequence=seq, error=str(e))
                raise ReleaseFailedError(f"release {seq} did not come back: {e}; {keeps}") \
                    from e
            door = FrontDoor(site, engine, datetime.now(UTC), progress=progress)
            if door.applies(m):
                try:
                    door.serve(m, seq, endpoints)
                except ApplianceError as e:
                    engine.stop(seq)
                    site.update_record(target, status="failed", reason=str(e))
                    audit(site.root, "rollback_failed", sequence=seq, error=str(e))
                    raise ReleaseFailedError(f"release {seq} could not take the front door: "
                                             f"{e}; release {cur.sequence if cur else None} "
                                             "keeps serving") from e
            site.switch_current(seq)
            engine.enable(seq)
            site.update_record(target, status="serving", reason="")
        for other in sorted(engine.running() - {seq}):
            engine.stop(other)
            with suppress(SiteError):
                site.update_record(site.release(other), status="stopped")
        audit(site.root, "rollback", sequence=seq, previous=cur.sequence if cur else None)
        progress(StepEvent("rollback", message=f"release {seq} is serving", status="ok"))
        return seq


def rollback_target(site: Site, sequence: int | None = None) -> Release:
    """The release `appliance rollback` would serve: `sequence` when given, else the newest
    release earlier than current that has served.

    Raises:
        SiteError: no such release, no earlier one that has served, or it never got as
            far as placement.
    """
    if sequence is not None:
        rel = site.release(sequence)
    else:
        cur = site.current()
        earlier = [r for r in site.releases()
                   if (cur is None or r.sequence < cur.sequence)
                   and r.record.status in ("serving", "stopped")]
        if not earlier:
            raise SiteError("no earlier release that has served is installed; "
                            "see `appliance releases`")
        rel = earlier[-1]
    if not (rel.path / PLACEMENT_FILE).is_file():
        raise SiteError(f"release {rel.sequence} never got as far as placement; "
                        "install its bundle instead")
    return rel
