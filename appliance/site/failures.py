"""A failure no install step foresaw (a bug, a malformed signed field), as that step's error.

The install then ends with the exit code documented for the step (docs/field-guide.md)
rather than a traceback and exit code 1; after `start` the plan's rollback wraps it.
"""

from __future__ import annotations

import logging

from appliance.errors import (
    ApplianceError,
    BundleError,
    EngineError,
    InstallError,
    PlacementError,
    PreflightError,
)
from appliance.site.layout import Release

log = logging.getLogger("appliance.site.plan")
STARTED_STEPS = ("start", "health", "accept", "switch")  # a failure here rolls back

# The error each step ends with when it fails in a way it did not foresee: the same exit
# code as that step's own refusals (docs/field-guide.md); after `start` a rollback wraps it.
_UNEXPECTED: dict[str, type[ApplianceError]] = {
    "preflight": PreflightError, "verify": BundleError, "placement": PlacementError,
    "load": EngineError, "start": EngineError, "health": EngineError, "accept": EngineError,
    "switch": EngineError, "stop_old": EngineError,
}


def unexpected(step: str, raw: Exception, release: Release | None) -> ApplianceError:
    """The step's own error for `raw`, one line, saying what to do; the traceback is logged."""
    log.error("install step %s failed unexpectedly", step, exc_info=raw)
    if release is not None:
        release.log("internal_error", step=step, error=f"{type(raw).__name__}: {raw}")
    cls: type[ApplianceError] = _UNEXPECTED.get(step, InstallError)
    what = f"{type(raw).__name__}: {raw}".splitlines()[0][:300]
    done = "nothing was changed" if step == "preflight" else (
        "nothing was started" if step not in STARTED_STEPS else "the new release is stopped")
    return cls(f"step {step} failed unexpectedly ({what}); {done}; run the install again "
               "with --verbose and send the output and `appliance support export` to the "
               "vendor")
