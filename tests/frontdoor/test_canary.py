"""Canary: the flag, the bounds, the decision, and a real share of traffic through HAProxy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from appliance.errors import CanaryFlagError
from appliance.frontdoor import canary, config, switch
from appliance.frontdoor.canary import CanaryBounds, WindowFigures
from tests.enginekit import wait_for
from tests.frontdoor.kit import SERVICE, Proxy, Site, door
from tests.frontdoor.test_switch import after, steady_load
from tests.runtime.conftest import Server


@pytest.mark.parametrize(("flag", "share", "window"), [
    ("10%:5m", 0.10, 300), ("5%:90s", 0.05, 90), ("25%:1h", 0.25, 3600), ("0.5%:10s", 0.005, 10),
])
def test_canary_flag_parses(flag: str, share: float, window: int) -> None:
    plan = canary.parse_canary(flag)
    assert plan.share == pytest.approx(share) and plan.window_s == window


@pytest.mark.parametrize(("flag", "message"), [
    ("10", "is not SHARE%:WINDOW"), ("10%", "is not SHARE%:WINDOW"), ("10%:5d", "SHARE%:WINDOW"),
    ("0%:5m", "above 0"), ("100%:5m", "below 100"), ("10%:0s", "between 1 s and 24 h"),
    ("10%:25h", "between 1 s and 24 h"),
])
def test_canary_flag_refuses_with_one_line(flag: str, message: str) -> None:
    with pytest.raises(CanaryFlagError, match=message) as e:
        canary.parse_canary(flag)
    assert "\n" not in str(e.value)


def test_bounds_override_and_refusal() -> None:
    b = canary.parse_bounds("errors=+0.5%,p99=x2,slack=10ms,min=50")
    assert b == CanaryBounds(0.005, 2.0, 10.0, 50)
    assert canary.parse_bounds("") == CanaryBounds()
    with pytest.raises(CanaryFlagError, match="unknown"):
        canary.parse_bounds("latency=3")
    with pytest.raises(CanaryFlagError, match="does not parse"):
        canary.parse_bounds("p99=2")


OLD = WindowFigures(requests=9000, errors=9, p99_ms=20.0)


def test_good_canary_is_promoted() -> None:
    verdict = canary.decide(OLD, WindowFigures(1000, 2, 24.0))
    assert verdict.action == "promote"
    assert "new 2/1000 errors" in verdict.reason and "old 9/9000" in verdict.reason


def test_canary_failing_on_part_of_the_traffic_rolls_back_naming_figures() -> None:
    verdict = canary.decide(OLD, WindowFigures(1000, 150, 22.0))
    assert verdict.action == "rollback"
    assert "error rate" in verdict.reason and "15.00%" in verdict.reason


def test_slow_canary_rolls_back() -> None:
    verdict = canary.decide(OLD, WindowFigures(1000, 1, 80.0))
    assert verdict.action == "rollback" and "p99 above 35.0 ms" in verdict.reason


def test_too_little_traffic_rolls_back_and_says_so() -> None:
    verdict = canary.decide(OLD, WindowFigures(5, 0, 1.0))
    assert verdict.action == "rollback" and "too little traffic" in verdict.reason


def test_weights_give_the_share() -> None:
    assert canary.CanaryPlan(0.10, 60).weights() == (230, 26)
    assert canary.CanaryPlan(0.001, 60).weights()[1] == 1  # never zero: the canary gets some


def test_share_through_haproxy_matches_the_weights_then_promotion_fails_no_request(
        site: Site, runtimes: list[Server],
        proxy_for: Callable[[list[config.ServiceDoor]], Proxy]) -> None:
    a, b = runtimes
    proxy = proxy_for([door(site, a)])
    be = config.backend_name(SERVICE)
    wait_for(lambda: proxy.api.servers(be)["a"].up, 20, "slot a up")
    plan = canary.parse_canary("20%:5m")
    load = steady_load(site)
    try:
        switch.bring_up(proxy.api, SERVICE, "b", "127.0.0.1", b.port, weight=0)
        before = proxy.api.servers(be)
        switch.set_share(proxy.api, SERVICE, "a", plan.weights())
        after(load, 600, "during the canary")
        during = proxy.api.servers(be)
        verdict = canary.decide(WindowFigures(during["a"].requests - before["a"].requests,
                                              during["a"].responses_5xx, 10.0),
                                WindowFigures(during["b"].requests - before["b"].requests,
                                              during["b"].responses_5xx, 10.0))
        assert verdict.action == "promote", verdict.reason
        assert switch.end_canary(proxy.api, SERVICE, "a", promote=True) == "b"
        after(load, 200, "after the promotion")
        report = load.stop()
    finally:
        load.stop()
    new = during["b"].requests - before["b"].requests
    old = during["a"].requests - before["a"].requests
    assert report.failures == [], report.summary()
    assert new / (new + old) == pytest.approx(plan.share, abs=0.05)
    final = proxy.api.servers(be)
    assert final["a"].status == "MAINT" and final["b"].up
