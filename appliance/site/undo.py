"""Undoing an install that failed after its release started: stop the new release, put
the front door and `current` back, and make sure the previous release serves."""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from typing import TYPE_CHECKING

from appliance.errors import AcceptanceError, ApplianceError, ReleaseFailedError, RestoreError
from appliance.site.acceptance import is_ready, wait_ready
from appliance.site.layout import PLACEMENT_FILE, Release
from appliance.site.placement import Placement

if TYPE_CHECKING:
    from appliance.site.plan import InstallPlan

log = logging.getLogger(__name__)


def roll_back(plan: InstallPlan, step: str, error: ApplianceError) -> ApplianceError:
    """Stop `plan`'s new release, bring back the previous one; return the error to raise."""
    assert plan.release is not None
    seq = plan.release.sequence
    why = f"release {seq} failed at {step}: {error}"
    log.info(why)
    if plan.serving_already():
        return ReleaseFailedError(f"{why}; it stays current (it was already serving)")
    prev = plan.previous
    if step == "switch" and plan.door_moved and prev is not None \
            and plan.door.applies(prev.manifest()):
        with suppress(ApplianceError, OSError):  # traffic back to the previous release
            plan.door.serve(prev.manifest(), prev.sequence, prev.record.endpoints)
    if step == "switch":
        with suppress(ApplianceError, OSError):  # put `current` back before stopping
            if prev is not None:
                plan.site.switch_current(prev.sequence)
                plan.engine.enable(prev.sequence)
            else:
                plan.site.current_link.unlink(missing_ok=True)
    stop_failed = ""
    try:
        plan.engine.stop(seq)
    except Exception as e:  # still restore the previous release
        log.error("cannot stop release %s", seq, exc_info=e)
        stop_failed = f"; it could not be stopped ({e}): run `appliance status`"
    why += stop_failed
    plan.record_status(status="failed", reason=str(error))
    plan.release.log("rolled_back", step=step, reason=str(error))
    if prev is None:
        err = _failed(error, f"{why}; it was stopped; no earlier release exists, so "
                             "nothing is serving: fix the cause and install again")
        err.previous_serving = False
        return err
    try:
        ensure_serving(plan, prev)
    except Exception as e:  # any failure here means nothing serves
        return RestoreError(f"{why}; and release {prev.sequence} could not be restored "
                            f"({e}): run `appliance rollback {prev.sequence}`")
    return _failed(error, f"{why}; release {prev.sequence} keeps serving")

def ensure_serving(plan: InstallPlan, rel: Release) -> None:
    """Make sure `rel` runs and answers ready; restart it if it does not."""
    m = rel.manifest()
    rec = rel.record
    urls = {s.name: rec.endpoints.get(s.name, "") + s.health for s in m.services}
    if all(plan.engine.alive(rel.sequence, s.name) for s in m.services) and all(
            is_ready(u) for u in urls.values()):
        return
    placement = Placement.from_dict(json.loads((rel.path / PLACEMENT_FILE).read_bytes()))
    endpoints = plan.engine.start(m, rel, placement, rec.slot, plan.emit)
    wait_ready({s.name: endpoints[s.name] + s.health for s in m.services},
               lambda s: plan.engine.alive(rel.sequence, s), plan.o.health_timeout_s,
               lambda s: plan.engine.logs_tail(rel.sequence, s))


def _failed(cause: ApplianceError, message: str) -> ReleaseFailedError:
    cls = AcceptanceError if isinstance(cause, AcceptanceError) else ReleaseFailedError
    err = cls(message)
    err.__cause__ = cause
    return err
