"""First screen: bundles found on mounted media, or a path typed in."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, Input, Label, OptionList
from textual.widgets.option_list import Option

from appliance.bundle import find_bundle_parts, read_manifest_unverified
from appliance.units import human
from installer_tui.media import FoundBundle, find_bundles
from installer_tui.messages import BundleOpened, BundlesFound, Failed
from installer_tui.screens.base import InstallerScreen
from installer_tui.widgets import ErrorPanel


class FindBundleScreen(InstallerScreen):
    """Lists bundles on the media roots; Enter on one (or on a typed path) opens it."""

    BINDINGS = [
        Binding("r", "rescan", "Rescan media"),
        Binding("p", "focus_path", "Type a path"),
        Binding("s", "status", "Status"),
    ]

    def __init__(self, initial: Path | None = None) -> None:
        super().__init__()
        self.initial = initial
        self.found: list[FoundBundle] = []

    def compose(self) -> ComposeResult:
        roots = ", ".join(str(r) for r in self.config.media_roots)
        yield Header()
        with Vertical(id="find-body"):
            yield Label(f"Bundles on mounted media ({roots}):", id="find-title")
            yield OptionList(id="bundles")
            yield Label("Or type the path of a bundle (or its first part, NAME.001):")
            yield Input(placeholder="/media/usb/bundle.tar", id="path")
            yield ErrorPanel(id="find-error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#find-error").display = False
        if self.initial is not None:
            self.query_one("#path", Input).value = str(self.initial)
            self.open_bundle(self.initial)
        self.scan()

    # -- scanning ----------------------------------------------------------------
    @work(thread=True, exclusive=True, group="scan")
    def scan(self) -> None:
        """Look for bundles on the media roots (a slow stick must not freeze the screen)."""
        self.post_message(BundlesFound(find_bundles(self.config.media_roots)))

    @on(BundlesFound)
    def show_bundles(self, message: BundlesFound) -> None:
        self.found = message.bundles
        options = self.query_one("#bundles", OptionList)
        options.clear_options()
        for i, b in enumerate(message.bundles):
            parts = f", {b.parts} parts" if b.parts > 1 else ""
            root = "  root.json beside it" if b.trust_root_beside else ""
            options.add_option(Option(f"{b.path}  ({human(b.size)}{parts}){root}", id=str(i)))
        if not message.bundles:
            options.add_option(Option("No bundle found. Plug in the stick and press r, or type "
                                      "a path below.", disabled=True))
        else:
            options.highlighted = 0
        if self.initial is None and not self.query_one("#path", Input).has_focus:
            options.focus()

    def action_rescan(self) -> None:
        self.query_one("#bundles", OptionList).clear_options()
        self.scan()

    def action_focus_path(self) -> None:
        self.query_one("#path", Input).focus()

    def action_status(self) -> None:
        self.nav.show_status()

    # -- opening ----------------------------------------------------------------
    @on(OptionList.OptionSelected, "#bundles")
    def bundle_chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.open_bundle(self.found[int(event.option.id)].path)

    @on(Input.Submitted, "#path")
    def path_typed(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if text:
            self.open_bundle(Path(text).expanduser())

    @work(thread=True, exclusive=True, group="open")
    def open_bundle(self, path: Path) -> None:
        """Read the bundle's manifest and signature envelope (checked later, in verify)."""
        try:
            parts = find_bundle_parts(path)
            manifest, envelope = read_manifest_unverified(parts)
        except Exception as e:  # every failure is shown on the screen, none crashes it
            self.post_message(Failed(e, str(path)))
            return
        self.config.opened_bundle = parts[0]  # logs go back to the stick it came from
        self.post_message(BundleOpened(parts, manifest, envelope))

    @on(BundleOpened)
    def bundle_opened(self, message: BundleOpened) -> None:
        self.query_one("#find-error").display = False
        self.nav.show_trust(message.parts, message.manifest, message.envelope)

    @on(Failed)
    def bundle_failed(self, message: Failed) -> None:
        panel = self.query_one("#find-error", ErrorPanel)
        panel.show_error(message.error, message.where)
        panel.display = True
