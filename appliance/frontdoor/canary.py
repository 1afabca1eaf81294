"""Canary decisions: pure functions over the old and new releases' figures for one window.

`--canary 10%:5m` sends 10 % of live traffic to the new release for five minutes; then
`decide` promotes it when its error rate and p99 latency are within bounds of the old
release's over the same window, and rolls back otherwise, naming the figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from appliance.errors import CanaryFlagError
from appliance.progress import Progress

_FLAG = re.compile(r"(?P<share>\d+(?:\.\d+)?)%:(?P<window>\d+)(?P<unit>s|m|h)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
MAX_WINDOW_S = 24 * 3600
DEFAULT_CANARY = "10%:5m"  # what the screens offer first: a tenth of traffic, five minutes


@dataclass(frozen=True)
class CanaryPlan:
    """What share of requests the new release gets, and for how long."""

    share: float  # 0 < share < 1
    window_s: int

    def weights(self, scale: int = 256) -> tuple[int, int]:
        """HAProxy server weights (old, new) giving this share (weights are 0..256)."""
        new = max(1, round(self.share * scale))
        return scale - new, new


@dataclass(frozen=True)
class CanaryBounds:
    """How much worse than the old release the new one may be (documented defaults).

    The new release fails when its error rate exceeds the old one's by more than
    `max_error_rate_increase` (absolute, 0.01 = one point), or its p99 exceeds
    `max_p99_ratio` times the old one's plus `p99_slack_ms` (the slack keeps a
    sub-millisecond old p99 from failing a release over scheduler noise), or it saw
    fewer than `min_requests` (too little traffic to judge: roll back, say so).
    """

    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 5.0
    min_requests: int = 20


@dataclass(frozen=True)
class WindowFigures:
    """One release's figures over the canary window."""

    requests: int
    errors: int  # 5xx answers and failed connections
    p99_ms: float

    @property
    def error_rate(self) -> float:
        """Errors per request (0 when there were none)."""
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryVerdict:
    """Promote or roll back, with the one-line reason a person reads."""

    action: Literal["promote", "rollback"]
    reason: str


NO_FIGURES = WindowFigures(0, 0, 0.0)


@dataclass(frozen=True)
class CanaryEvent(Progress):
    """One service's canary figures so far (`verdict` "") or at its end, with the verdict.

    Sent through the install's progress callback every few seconds of the window, so the
    screens and the CLI show the figures as they come, not text to be parsed.
    """

    service: str = ""
    share: float = 0.0
    elapsed_s: float = 0.0
    window_s: int = 0
    new: WindowFigures = NO_FIGURES
    old: WindowFigures = NO_FIGURES
    verdict: Literal["", "promote", "rollback"] = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.message:  # renderers that know only Progress still print something
            object.__setattr__(self, "message", canary_line(self))

    def figures(self) -> dict[str, object]:
        """The event's figures as plain JSON values (for `--json` progress)."""
        def side(f: WindowFigures) -> dict[str, object]:
            return {"requests": f.requests, "errors": f.errors,
                    "error_rate": round(f.error_rate, 6), "p99_ms": f.p99_ms}
        return {"service": self.service, "share": self.share,
                "elapsed_s": round(self.elapsed_s, 1), "window_s": self.window_s,
                "new": side(self.new), "old": side(self.old), "verdict": self.verdict,
                "reason": self.reason}


def canary_line(ev: CanaryEvent) -> str:
    """One line a person reads: progress and both releases' figures, or the verdict."""
    def side(name: str, f: WindowFigures) -> str:
        return (f"{name} {f.requests} req, {f.errors} err ({f.error_rate:.2%}), p99 "
                f"{f.p99_ms:.1f} ms")
    if ev.verdict:
        word = "promoted" if ev.verdict == "promote" else "rolled back"
        return f"canary {ev.service}: {word}: {ev.reason}"
    return (f"canary {ev.service}: {min(ev.elapsed_s, ev.window_s):.0f}/{ev.window_s} s, "
            f"{side('new', ev.new)}; {side('old', ev.old)}")


def parse_canary(flag: str) -> CanaryPlan:
    """Parse `SHARE%:WINDOW` (`10%:5m`, `5%:90s`, `25%:1h`).

    Raises:
        CanaryFlagError: not of that shape, share not in (0, 100), or window 0 or over a day.
    """
    m = _FLAG.fullmatch(flag.strip())
    if m is None:
        raise CanaryFlagError(f"--canary {flag!r} is not SHARE%:WINDOW: write e.g. 10%:5m "
                              "(window in s, m or h)")
    share = float(m.group("share"))
    window = int(m.group("window")) * _UNIT_S[m.group("unit")]
    if not 0 < share < 100:
        raise CanaryFlagError(f"--canary share {share:g}% must be above 0 and below 100 "
                              "(100% is a plain update)")
    if not 0 < window <= MAX_WINDOW_S:
        raise CanaryFlagError(f"--canary window {window} s must be between 1 s and 24 h")
    return CanaryPlan(share / 100, window)


def parse_bounds(text: str, base: CanaryBounds | None = None) -> CanaryBounds:
    """Override bounds from `errors=+0.5%,p99=x2,slack=10ms,min=50` (any subset, any order).

    Raises:
        CanaryFlagError: an unknown key or a value that does not parse.
    """
    b = base or CanaryBounds()
    fields = {"max_error_rate_increase": b.max_error_rate_increase,
              "max_p99_ratio": b.max_p99_ratio, "p99_slack_ms": b.p99_slack_ms,
              "min_requests": float(b.min_requests)}
    pats = {"errors": ("max_error_rate_increase", r"\+?(\d+(?:\.\d+)?)%", 0.01),
            "p99": ("max_p99_ratio", r"x(\d+(?:\.\d+)?)", 1.0),
            "slack": ("p99_slack_ms", r"(\d+(?:\.\d+)?)ms", 1.0),
            "min": ("min_requests", r"(\d+)", 1.0)}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        if key not in pats:
            raise CanaryFlagError(f"canary bound {key!r} is unknown: use errors=, p99=, slack=, "
                                  "min=")
        name, pat, scale = pats[key]
        m = re.fullmatch(pat, value)
        if m is None:
            raise CanaryFlagError(f"canary bound {item!r} does not parse: e.g. errors=+1%, "
                                  "p99=x1.5, slack=5ms, min=20")
        fields[name] = float(m.group(1)) * scale
    return CanaryBounds(fields["max_error_rate_increase"], fields["max_p99_ratio"],
                        fields["p99_slack_ms"], int(fields["min_requests"]))


def decide(old: WindowFigures, new: WindowFigures, bounds: CanaryBounds | None = None
           ) -> CanaryVerdict:
    """Promote the new release or roll it back, naming the figures that decided."""
    b = bounds or CanaryBounds()
    figures = (f"new {new.errors}/{new.requests} errors ({new.error_rate:.2%}), p99 "
               f"{new.p99_ms:.1f} ms; old {old.errors}/{old.requests} errors "
               f"({old.error_rate:.2%}), p99 {old.p99_ms:.1f} ms")
    if new.requests < b.min_requests:
        return CanaryVerdict("rollback", f"canary saw only {new.requests} requests (fewer than "
                             f"{b.min_requests}): too little traffic to judge; {figures}")
    if new.error_rate > old.error_rate + b.max_error_rate_increase:
        return CanaryVerdict("rollback", f"canary error rate above the old release's + "
                             f"{b.max_error_rate_increase:.2%}: {figures}")
    p99_limit = old.p99_ms * b.max_p99_ratio + b.p99_slack_ms
    if new.p99_ms > p99_limit:
        return CanaryVerdict("rollback", f"canary p99 above {p99_limit:.1f} ms (old x"
                             f"{b.max_p99_ratio:g} + {b.p99_slack_ms:g} ms): {figures}")
    return CanaryVerdict("promote", f"canary within bounds: {figures}")
