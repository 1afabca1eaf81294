"""The moves the installer makes on a running proxy: switch, canary share, token rotation.

Each is a short sequence of runtime-API calls that closes no client connection:
a switch points the idle slot at the new release, waits for its health check to
pass, drains the serving slot until its last request is answered, then parks it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.errors import ProxyApiError
from appliance.frontdoor.config import SLOTS, backend_name
from appliance.frontdoor.runtime_api import ProxyApi, ServerStats
from appliance.frontdoor.token import MAP_MODE, render_token_map, token_digest
from appliance.fsutil import atomic_write

UP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 120.0
_POLL_S = 0.05


def other_slot(slot: str) -> str:
    """The slot that is not `slot`."""
    return SLOTS[1 - SLOTS.index(slot)]


def serving_slot(api: ProxyApi, service: str) -> str | None:
    """The slot that takes new requests now (the higher weight when both do), or None.

    Raises:
        ProxyApiError: the proxy does not answer.
    """
    stats = api.servers(backend_name(service))
    live = [stats[s] for s in SLOTS if s in stats and stats[s].status.startswith(("UP", "DOWN"))
            and stats[s].weight > 0]
    return max(live, key=lambda st: st.weight).name if live else None


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise ProxyApiError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(_POLL_S)


def bring_up(api: ProxyApi, service: str, slot: str, host: str, port: int,
             weight: int = 100, timeout: float = UP_TIMEOUT_S) -> ServerStats:
    """Point `slot` at host:port, give it `weight`, and wait until its health check passes.

    Raises:
        ProxyApiError: refused, or not healthy within `timeout` (the slot is parked again).
    """
    be = backend_name(service)
    api.set_state(be, slot, "maint")
    api.point(be, slot, host, port)
    api.set_weight(be, slot, weight)
    api.set_state(be, slot, "ready")
    try:
        _wait(lambda: api.servers(be)[slot].up, timeout,
              f"{service}'s new runtime at {host}:{port} to pass the proxy's health check")
    except ProxyApiError:
        api.set_state(be, slot, "maint")
        raise
    return api.servers(be)[slot]


def drain(api: ProxyApi, service: str, slot: str, timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Stop new requests to `slot`, wait until its in-flight requests are answered, park it.

    Raises:
        ProxyApiError: refused, or requests still in flight after `timeout`.
    """
    be = backend_name(service)
    api.set_state(be, slot, "drain")
    _wait(lambda: api.servers(be)[slot].current_sessions == 0, timeout,
          f"{service}'s old runtime (slot {slot}) to finish its requests")
    api.set_state(be, slot, "maint")


def switch(api: ProxyApi, service: str, host: str, port: int) -> str:
    """Send all new requests of `service` to host:port, drain the old slot; return the new slot.

    The old release may be stopped once this returns. Rollback is the same call with
    the old release's address.

    Raises:
        ProxyApiError: the new runtime did not come up (the old one keeps serving) or
            the old one did not drain in time.
    """
    old = serving_slot(api, service)
    new = other_slot(old) if old is not None else SLOTS[0]
    bring_up(api, service, new, host, port)
    if old is not None:
        drain(api, service, old)
    return new


def set_share(api: ProxyApi, service: str, old_slot: str, weights: tuple[int, int]) -> None:
    """Split new requests between the old slot and the other one by HAProxy weights.

    Raises:
        ProxyApiError: refused.
    """
    be = backend_name(service)
    api.set_weight(be, old_slot, weights[0])
    api.set_weight(be, other_slot(old_slot), weights[1])


def rotate_token_begin(api: ProxyApi, map_file: Path, old: str, new: str) -> None:
    """Accept the new token beside the old one (in the proxy now and in the map file).

    Raises:
        ProxyApiError: the proxy refused the map change.
    """
    api.add_token(map_file, token_digest(new))
    atomic_write(map_file, render_token_map([old, new]).encode(), MAP_MODE)


def rotate_token_finish(api: ProxyApi, map_file: Path, old: str, new: str) -> None:
    """Stop accepting the old token, once clients have the new one.

    Raises:
        ProxyApiError: the proxy refused the map change.
    """
    atomic_write(map_file, render_token_map([new]).encode(), MAP_MODE)
    api.del_token(map_file, token_digest(old))


def end_canary(api: ProxyApi, service: str, old_slot: str, promote: bool) -> str:
    """Give one side all new requests and drain the other; return the slot left serving.

    promote: the canary slot takes everything and the old release drains (then stop it);
    otherwise the old release takes everything back and the canary drains.

    Raises:
        ProxyApiError: refused, or the drained side did not finish in time.
    """
    keep, leave = (other_slot(old_slot), old_slot) if promote else (old_slot,
                                                                      other_slot(old_slot))
    api.set_weight(backend_name(service), keep, 100)
    drain(api, service, leave)
    return keep
