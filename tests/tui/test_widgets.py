"""The reusable widgets on their own: the byte bar's rate and time left, the step marks."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult

from installer_tui.widgets import StepList, TransferBar

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Bench(App[None]):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield StepList()
        yield TransferBar("Verifying", clock=self.clock)


async def test_transfer_bar_shows_rate_and_time_left_then_done():
    clock = Clock()
    app = Bench(clock)
    async with app.run_test(size=(80, 24)):
        bar = app.query_one(TransferBar)
        bar.advance(0, 300 * 1024**2)
        assert bar.text == "0 B of 300.0 MiB"
        clock.now += 2.0
        bar.advance(100 * 1024**2, 300 * 1024**2)
        assert bar.text == "100.0 MiB of 300.0 MiB  50.0 MiB/s  about 4 s left"
        clock.now += 2.0
        bar.advance(300 * 1024**2, 300 * 1024**2)
        assert bar.text == "300.0 MiB done"
        bar.reset("Loading images")
        assert bar.text == ""
        # updates closer together than a quarter second are not drawn; the last one is
        bar.advance(0, 300 * 1024**2)
        clock.now += 0.1
        bar.advance(16 * 1024**2, 300 * 1024**2)
        assert bar.text == "0 B of 300.0 MiB"
        clock.now += 0.2
        bar.advance(32 * 1024**2, 300 * 1024**2)
        assert bar.text.startswith("32.0 MiB of 300.0 MiB")
        bar.advance(300 * 1024**2, 300 * 1024**2)
        assert bar.text == "300.0 MiB done"


async def test_step_list_marks_each_step():
    app = Bench(Clock())
    async with app.run_test(size=(80, 24)):
        steps = app.query_one(StepList)
        steps.set_status("preflight", "warn")
        steps.set_status("verify", "failed")
        steps.set_status("no-such-step", "ok")
        assert steps.status("preflight") == "warn" and steps.status("verify") == "failed"
        lines = str(steps.render()).splitlines()
        assert lines[0] == "! Preflight checks" and lines[1] == "✗ Verify and copy"
        assert lines[2] == "· GPUs and placement" and len(lines) == 9
