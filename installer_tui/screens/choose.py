"""Pick one of the installed releases to serve (a rollback, or forward again after one)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


class ChooseReleaseScreen(ModalScreen[int | None]):
    """Lists `choices` (sequence, label); Enter picks one, Esc none."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, choices: list[tuple[int, str]]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label("Serve which installed release?", id="confirm-question")
            yield OptionList(*(Option(label, id=str(seq)) for seq, label in self.choices),
                             id="releases")
            yield Label("Enter: choose    Esc: cancel", id="confirm-keys")

    @on(OptionList.OptionSelected, "#releases")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or "0"))

    def action_cancel(self) -> None:
        self.dismiss(None)
