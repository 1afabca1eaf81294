"""First screen: bundles found on mounted media, or a path typed in."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Header, Input, Label, OptionList
from textual.widgets.option_list import Option

from appliance.bundle import find_bundle_parts, read_manifest_unverified
from appliance.errors import ApplianceError
from appliance.site.layout import Site
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
        found = find_bundles(self.config.media_roots)
        serving = _serving(self.config.site)
        self.post_message(BundlesFound(found, [bundle_label(b, serving) for b in found]))

    @on(BundlesFound)
    def show_bundles(self, message: BundlesFound) -> None:
        self.found = message.bundles
        options = self.query_one("#bundles", OptionList)
        options.clear_options()
        for i, label in enumerate(message.labels):
            # one line each: a long name is cut with an ellipsis, never wrapped
            options.add_option(Option(Text(label, no_wrap=True, overflow="ellipsis"),
                                      id=str(i)))
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


def _serving(site: Site) -> tuple[int, str] | None:
    """The serving release's sequence and version, or None."""
    try:
        cur = site.current() if site.root.exists() else None
        return (cur.sequence, cur.manifest().version) if cur is not None else None
    except ApplianceError:
        return None


def bundle_label(b: FoundBundle, serving: tuple[int, str] | None) -> str:
    """What a person needs to pick a bundle: name, version, sequence, how it compares with
    what serves, size, where it is (read from the unverified manifest; verify checks it)."""
    parts = f", {b.parts} parts" if b.parts > 1 else ""
    root = ", root.json beside it" if b.trust_root_beside else ""
    tail = f"{human(b.size)}{parts}{root}  {b.path}"
    try:
        m, _ = read_manifest_unverified(find_bundle_parts(b.path))
    except Exception:  # listed anyway: opening it says what is wrong
        return f"(unreadable bundle)  {tail}"
    if serving is None:
        compare = "nothing serves yet"
    elif m.sequence > serving[0]:
        compare = f"newer than serving {serving[0]}"
    elif m.sequence == serving[0]:
        compare = "the release serving now"
    else:
        compare = f"OLDER than serving {serving[0]}"
    return f"{m.name} {m.version}  release {m.sequence}  {compare}  {tail}"
