"""Who signed the bundle, and (first install) accepting the vendor's trust root by eye.

The signature itself is checked in the install's verify step; this screen
shows the key fingerprints so the person can compare them with the ones the
vendor gave them (printed sheet, phone call) before a new root is trusted.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, Static

from appliance.bundle.manifest import Manifest
from appliance.units import human
from installer_tui.errors import TrustRootChoiceError
from installer_tui.media import TRUST_ROOT_NAME
from installer_tui.screens.base import InstallerScreen
from installer_tui.widgets import ErrorPanel
from signing import Envelope, SigningError, TrustRoot, fingerprint


class TrustScreen(InstallerScreen):
    """Signers of the bundle against the site's trust root, or a new root to accept."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("c", "continue", "Continue"),
    ]

    def __init__(self, parts: list[Path], manifest: Manifest, envelope: Envelope) -> None:
        super().__init__()
        self.parts = parts
        self.manifest = manifest
        self.envelope = envelope
        self.root: TrustRoot | None = None
        self.root_path: Path | None = None  # a root to accept (first install only)
        self.first_install = False
        self.problem: Exception | None = None
        self._chosen = False

    def _choose_root(self, typed: Path | None) -> None:
        """The site's root, else the typed or given root, else root.json beside the bundle."""
        self.root, self.root_path, self.problem = None, None, None
        self._chosen = True
        site_path = self.config.site.trust_path
        if site_path.exists():
            self.first_install = False
            try:
                self.root = TrustRoot.from_json(site_path.read_bytes())
            except (OSError, SigningError) as e:
                self.problem = TrustRootChoiceError(
                    f"this site's trust root {site_path} is unreadable ({e}); restore it "
                    "from the vendor's root.json")
            return
        self.first_install = True
        beside = self.parts[0].parent / TRUST_ROOT_NAME
        given = typed or self.config.trust
        candidate = given or (beside if beside.is_file() else None)
        if candidate is None:
            self.problem = TrustRootChoiceError(
                f"this server trusts no signing keys yet and there is no {TRUST_ROOT_NAME} "
                f"beside the bundle; type the path of the vendor's {TRUST_ROOT_NAME} below")
            return
        try:
            self.root = TrustRoot.from_json(Path(candidate).read_bytes())
            self.root_path = Path(candidate)
        except (OSError, SigningError) as e:
            self.problem = TrustRootChoiceError(
                f"{candidate} is not a usable trust root ({e}); type the path of the vendor's "
                f"{TRUST_ROOT_NAME}")

    # -- layout -------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        if not self._chosen:
            self._choose_root(None)
        yield Header()
        with VerticalScroll(id="trust-body"):
            yield Static(self._bundle_summary(), id="bundle-summary")
            yield Static(self._signers(), id="signers")
            if self.root is not None:
                yield Static(self._root_keys(), id="root-keys")
                warning = self._threshold_warning()
                if warning:
                    yield Static(Text(warning, style="bold red"), id="trust-warning")
            if self.problem is not None:
                panel = ErrorPanel(id="trust-error")
                panel.show_error(self.problem)
                yield panel
            if self.first_install and self.root is None:
                yield Label(f"Path of the vendor's {TRUST_ROOT_NAME}:")
                yield Input(placeholder=f"/media/usb/{TRUST_ROOT_NAME}", id="root-path")
            elif self.first_install:
                yield Checkbox(compared_label(False), id="compared")
                yield Button("Trust this root and continue", id="accept", disabled=True,
                             variant="warning")
            elif self.root is not None:
                yield Button("Continue to verify and install", id="continue", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        for sel in ("#root-path", "#compared", "#continue"):
            for w in self.query(sel):
                w.focus()
                return

    def _bundle_summary(self) -> RenderableType:
        m = self.manifest
        size = sum(p.stat().st_size for p in self.parts if p.exists())
        parts = f" in {len(self.parts)} parts" if len(self.parts) > 1 else ""
        return Group(
            Text.assemble(("Bundle ", "bold"), (f"{m.name} {m.version}", "bold cyan"),
                          f", release {m.sequence}, {len(m.models)} model(s), "
                          f"{human(size)}{parts}"),
            Text(f"made {m.created}, valid until {m.expires}", style="dim"),
        )

    def _signers(self) -> RenderableType:
        t = Table(title="Signed by (compare these with the vendor's fingerprints)",
                  title_justify="left", expand=True, box=None, padding=(0, 1))
        t.add_column("Fingerprint", no_wrap=True)
        t.add_column("Name")
        t.add_column("Trusted")
        for kid in dict.fromkeys(self.envelope.key_ids):
            known = self.root is not None and kid in self.root.keys
            name = self.root.names.get(kid, "") if self.root is not None else ""
            if known and self.first_install:  # in the root offered, which is not trusted yet
                verdict = Text("not yet", style="bold yellow")
            elif known:
                verdict = Text("yes", style="green")
            else:
                verdict = Text("NO", style="bold red")
            t.add_row(fingerprint(kid), name or "(the root names no signer)", verdict)
        if not self.envelope.key_ids:
            t.add_row(Text("nobody: the bundle is unsigned", style="bold red"), "", "")
        return t

    def _root_keys(self) -> RenderableType:
        assert self.root is not None
        r = self.root
        if self.first_install:
            title = (f"New trust root from {self.root_path} (version {r.version}, {r.threshold} "
                     f"of {len(r.keys)} key(s) must sign)")
        else:
            title = (f"This server trusts root version {r.version} ({r.threshold} of "
                     f"{len(r.keys)} key(s) must sign)")
        t = Table(title=title, title_justify="left", expand=True, box=None, padding=(0, 1))
        t.add_column("Fingerprint", no_wrap=True)
        t.add_column("Name")
        for kid in sorted(r.keys):
            t.add_row(fingerprint(kid), r.names.get(kid, ""))
        return t

    def _threshold_warning(self) -> str:
        assert self.root is not None
        trusted = {k for k in self.envelope.key_ids if k in self.root.keys}
        if len(trusted) >= self.root.threshold:
            return ""
        return (f"Only {len(trusted)} of the keys that signed this bundle are in the trust root "
                f"(it needs {self.root.threshold}): the install will refuse it. Ask the vendor "
                "for a bundle signed with the keys you trust.")

    # -- actions ------------------------------------------------------------------
    @on(Checkbox.Changed, "#compared")
    def compared_changed(self, event: Checkbox.Changed) -> None:
        # said in words too: a monochrome terminal draws the box the same ticked or not
        event.checkbox.label = compared_label(event.value)
        self.query_one("#accept", Button).disabled = not event.value

    @on(Input.Submitted, "#root-path")
    async def root_typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._choose_root(Path(event.value.strip()).expanduser())
            await self.recompose()
            self.on_mount()

    @on(Button.Pressed, "#accept")
    @on(Button.Pressed, "#continue")
    def button_pressed(self) -> None:
        self.action_continue()

    def action_continue(self) -> None:
        """Go on to the install; a new root only once the person ticked the comparison."""
        if self.root is None:
            self.notify("No trust root yet: type the path of the vendor's root.json.",
                        severity="error")
            return
        if self.first_install and not self.query_one("#compared", Checkbox).value:
            self.notify("Compare the fingerprints and tick the box first.", severity="warning")
            return
        self.nav.show_install(self.parts, self.manifest,
                              self.root_path if self.first_install else None)

    def action_back(self) -> None:
        self.app.pop_screen()


# What a person (and a test on a real terminal) reads on the trust screen of a first install.
COMPARED_TEXT = "I compared each fingerprint with the vendor's copy"


def compared_label(ticked: bool) -> str:
    """The fingerprint checkbox's label, which says whether it is ticked."""
    return f"{'YES' if ticked else 'NOT YET'} - {COMPARED_TEXT}"
