"""Readiness and the acceptance gate: does the new release answer, and answer as validated?

`wait_ready` polls each service's health path (V2 `/v2/health/ready`) until it
answers 200, failing early when the engine says the service died. `check_samples`
sends each model's signed sample inputs to the release and compares the outputs
with the signed expected outputs; any difference over the tolerance fails with
the worst one named.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from appliance.bundle.manifest import Manifest, Model, Sample
from appliance.errors import AcceptanceError, HealthTimeoutError

POLL_S = 0.2
REQUEST_TIMEOUT_S = 30.0


def is_ready(url: str) -> bool:
    """Whether GET `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - local http only
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


def wait_ready(urls: dict[str, str], alive: Callable[[str], bool], timeout_s: float,
               tail: Callable[[str], str] = lambda _s: "",
               on_wait: Callable[[str, float], None] = lambda _s, _t: None,
               check: Callable[[str], None] = lambda _s: None) -> None:
    """Wait until every service's health URL answers 200.

    `check(service)` runs for each service not ready yet and raises to stop waiting
    (a runtime that says it will never be ready, such as a GPU service on the CPU).

    Raises:
        HealthTimeoutError: a service died, or did not become ready within `timeout_s`,
            or `check` refused it.
    """
    deadline = time.monotonic() + timeout_s
    pending = dict(urls)
    while pending:
        for svc, url in list(pending.items()):
            if is_ready(url):
                del pending[svc]
            elif not alive(svc):
                raise HealthTimeoutError(f"service {svc!r} stopped before it was ready; "
                                         f"its last output: {_oneline(tail(svc))}")
            else:
                check(svc)
        if not pending:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            svc = next(iter(pending))
            raise HealthTimeoutError(
                f"service {svc!r} did not answer ready at {pending[svc]} within "
                f"{timeout_s:.0f}s; its last output: {_oneline(tail(svc))}")
        on_wait(next(iter(pending)), left)
        time.sleep(POLL_S)


@dataclass(frozen=True)
class Difference:
    """How far one answer was from the signed expectation."""

    model: str
    sample: int
    output: str
    index: int
    got: Any
    expected: Any
    diff: float
    tolerance: float

    def describe(self) -> str:
        return (f"model {self.model!r} sample {self.sample} output {self.output}[{self.index}]: "
                f"got {self.got}, expected {self.expected} (difference {self.diff:.3g}, "
                f"tolerance {self.tolerance:.3g})")


def check_samples(manifest: Manifest, endpoints: dict[str, str],
                  on_sample: Callable[[str, int], None] = lambda _m, _i: None,
                  token: str = "") -> int:
    """Send every signed sample to the release (with the site's bearer `token`, which
    runtimes behind the front door require); return how many were checked.

    Raises:
        AcceptanceError: an answer is missing, malformed or outside its tolerance;
            the message names the worst difference.
    """
    service_of = {m: s.name for s in manifest.services for m in s.models}
    worst: Difference | None = None
    checked = 0
    for model in manifest.models:
        for i, sample in enumerate(model.samples):
            on_sample(model.name, i)
            base = endpoints.get(service_of.get(model.name, ""), "")
            if not base:
                raise AcceptanceError(f"model {model.name!r} is served by no started service")
            answer = _infer(base, model, sample, i, token)
            for d in _compare(model, i, sample, answer):
                if worst is None or d.diff > worst.diff:
                    worst = d
            checked += 1
    if worst is not None and worst.diff > worst.tolerance:
        raise AcceptanceError(f"the new release answers differently from the signed samples; "
                              f"worst: {worst.describe()}")
    return checked


def _infer(base: str, model: Model, sample: Sample, i: int, token: str) -> dict[str, Any]:
    body = {"inputs": [{"name": n, **t} for n, t in sample.inputs.items()],
            "outputs": [{"name": n} for n in sample.outputs]}
    url = f"{base}/v2/models/{model.name}/versions/{model.version}/infer"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST",  # noqa: S310
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:  # noqa: S310
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode(errors="replace")
        raise AcceptanceError(f"model {model.name!r} sample {i}: the release answered "
                              f"{e.code} {detail}") from e
    except (OSError, ValueError) as e:
        raise AcceptanceError(f"model {model.name!r} sample {i}: no answer ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise AcceptanceError(f"model {model.name!r} sample {i}: the answer has no outputs")
    return doc


def _compare(model: Model, i: int, sample: Sample, answer: dict[str, Any]) -> list[Difference]:
    got = {o.get("name"): o for o in answer["outputs"] if isinstance(o, dict)}
    out = []
    for name, want in sample.outputs.items():
        if name not in got:
            raise AcceptanceError(f"model {model.name!r} sample {i}: output {name!r} missing "
                                  "from the answer")
        a, b = list(_flat(got[name].get("data"))), list(_flat(want.get("data")))
        if len(a) != len(b):
            raise AcceptanceError(f"model {model.name!r} sample {i}: output {name!r} has "
                                  f"{len(a)} values, the signed sample {len(b)}")
        diff_at, diff = 0, 0.0
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _distance(x, y)
            if d > diff:
                diff_at, diff = j, d
        ref = b[diff_at] if b else None
        out.append(Difference(model.name, i, name, diff_at, a[diff_at] if a else None, ref,
                              diff, sample.tolerance))
    return out


def _distance(x: Any, y: Any) -> float:
    if isinstance(x, bool) or isinstance(y, bool) or not (
            isinstance(x, int | float) and isinstance(y, int | float)):
        return 0.0 if x == y else math.inf
    if math.isnan(x) or math.isnan(y):
        return 0.0 if math.isnan(x) and math.isnan(y) else math.inf
    return abs(float(x) - float(y))


def _flat(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for v in data:
            yield from _flat(v)
    elif data is not None:
        yield data


def _oneline(text: str) -> str:
    t = " | ".join(x.strip() for x in text.strip().splitlines()[-3:] if x.strip())
    return t[-400:] or "(nothing)"
