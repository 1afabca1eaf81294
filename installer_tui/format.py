"""Plain words for times left, and for what an error means for the site."""

from __future__ import annotations

from collections.abc import Callable

from appliance.errors import (
    EXIT_BUNDLE,
    EXIT_ENGINE,
    EXIT_LOCKED,
    EXIT_NOTHING_SERVING,
    EXIT_PLACEMENT,
    EXIT_PREFLIGHT,
    EXIT_ROLLED_BACK,
    RollbackError,
    exit_code,
)


def duration(seconds: float) -> str:
    """Seconds for people: 42 s, 3 min 05 s, 1 h 02 min."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# What each kind of failure means for the site, and the general next step; the
# error's own message names the specific problem and fix.
_MEANING = {
    EXIT_PREFLIGHT: ("Preflight failed: nothing on this server was changed.",
                     "Fix the failed check shown below, then choose the bundle again."),
    EXIT_BUNDLE: ("The bundle was refused: nothing from it will run.",
                  "Get a fresh copy of the bundle from the vendor, or check that the trust root "
                  "is the vendor's."),
    EXIT_PLACEMENT: ("The models do not fit this server's GPUs: nothing was started.",
                     "Free GPU memory (stop other GPU work) or use a server with more."),
    EXIT_ENGINE: ("The container engine failed before the new release started: nothing "
                  "changed.", "Check that the engine runs (systemctl status docker or podman), "
                              "then try again."),
    EXIT_ROLLED_BACK: ("The new release failed and was stopped: the previous release keeps "
                       "serving.", "Send the exported logs to the vendor; the install log is "
                               "in the release's directory."),
    EXIT_NOTHING_SERVING: ("The new release failed and nothing earlier could be restored.",
                           "Follow the message below (it names the command to run)."),
    EXIT_LOCKED: ("Another installer is working on this site.",
                  "Wait for it to finish, then try again."),
}


def engine_label(recorded: str, ping: Callable[[], str]) -> str:
    """The engine a release runs on as a person knows it: "Podman 4.3.1" or "Docker 20.10.24"
    for the docker engine (the same API serves both), else the recorded kind."""
    if recorded != "docker":
        return recorded or "?"
    try:
        return ping().split(" (API", 1)[0]
    except Exception:  # the engine is down: the health column says so
        return recorded


def explain(error: BaseException) -> tuple[str, str]:
    """What a failure means for the site, and what to do next, in plain words."""
    if isinstance(error, RollbackError):  # genuine and intact, only older: not a bad copy
        return ("The bundle is older than (or the same as) a release this site already "
                "accepted: nothing from it will run.",
                "To serve an earlier release that is still installed, press s for the status "
                "screen and r to roll back; otherwise ask the vendor for the newest bundle.")
    return _MEANING.get(exit_code(error), ("The install stopped.",
                                           "Read the message below; it says what to do."))
