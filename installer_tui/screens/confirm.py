"""Questions over the current screen: a yes/no, and whether an update goes canary first."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from appliance.errors import CanaryFlagError
from appliance.frontdoor.canary import (
    DEFAULT_CANARY,
    CanaryBounds,
    CanaryPlan,
    parse_bounds,
    parse_canary,
)


class ConfirmScreen(ModalScreen[bool]):
    """Asks `question`; y answers True, n or Esc False."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="confirm-question")
            yield Label("y: yes    n: no", id="confirm-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True)
class CanaryChoice:
    """How the update goes: `plan` None switches at once; else canary first within `bounds`."""

    plan: CanaryPlan | None
    bounds: CanaryBounds = field(default_factory=CanaryBounds)


def bounds_hint(b: CanaryBounds) -> str:
    """The default bounds written the way `--canary-bounds` takes them."""
    return (f"errors=+{b.max_error_rate_increase:.0%},p99=x{b.max_p99_ratio:g},"
            f"slack={b.p99_slack_ms:g}ms,min={b.min_requests}")


class CanaryOfferScreen(ModalScreen[CanaryChoice | None]):
    """Offered when a release already serves behind the front door: canary first (share and
    window, checked by the same parser as `--canary`), switch at once, or go back (None)."""

    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, serving: int, sequence: int) -> None:
        super().__init__()
        self.serving, self.sequence = serving, sequence

    def compose(self) -> ComposeResult:
        with Vertical(id="canary-box"):
            yield Static(f"Release {self.serving} serves behind the front door. Send a share "
                        f"of live traffic to release {self.sequence} first, and promote it "
                        "only if its errors and p99 stay within bounds of the serving "
                        "release's?", id="canary-question")
            with Horizontal(classes="canary-row"):
                yield Label("Share:window ")
                yield Input(DEFAULT_CANARY, id="canary-flag")
            with Horizontal(classes="canary-row"):
                yield Label("Bounds       ")
                yield Input("", placeholder=bounds_hint(CanaryBounds()), id="canary-bounds")
            yield Static("", id="canary-error")
            with Horizontal(id="canary-buttons"):
                yield Button("Canary first", variant="primary", id="canary-go")
                yield Button("Switch at once", id="canary-skip")
                yield Button("Back", id="canary-back")

    def on_mount(self) -> None:
        self.query_one("#canary-flag", Input).focus()

    def choice(self) -> CanaryChoice | None:
        """The canary the fields ask for, or None with the one-line error shown."""
        error = self.query_one("#canary-error", Static)
        try:
            plan = parse_canary(self.query_one("#canary-flag", Input).value)
            bounds = parse_bounds(self.query_one("#canary-bounds", Input).value)
        except CanaryFlagError as e:
            error.update(str(e))
            return None
        error.update("")
        return CanaryChoice(plan, bounds)

    @on(Input.Submitted)
    @on(Button.Pressed, "#canary-go")
    def go(self) -> None:
        choice = self.choice()
        if choice is not None:
            self.dismiss(choice)

    @on(Button.Pressed, "#canary-skip")
    def skip(self) -> None:
        self.dismiss(CanaryChoice(None))

    @on(Button.Pressed, "#canary-back")
    def action_back(self) -> None:
        self.dismiss(None)
