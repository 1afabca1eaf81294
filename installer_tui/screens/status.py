"""The serving release: health, live figures from its runtime, roll back, export logs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.timer import Timer
from textual.widgets import Footer, Header, Input, Label, Static

from appliance.errors import SiteError
from appliance.progress import Progress
from appliance.site.acceptance import is_ready
from appliance.site.door import DoorRecord
from appliance.site.layout import Site
from appliance.site.plan import StepEvent
from appliance.site.rollback import rollback, rollback_target
from appliance.units import human
from installer_tui.devices import devices_text
from installer_tui.figures import FiguresSource, GpuFigure
from installer_tui.format import engine_label
from installer_tui.messages import (
    DevicesRead,
    Failed,
    FallbacksRead,
    FiguresHistory,
    FiguresSampled,
    LogsExported,
    PlanProgress,
    RolledBack,
    StatusRead,
)
from installer_tui.screens.base import InstallerScreen
from installer_tui.screens.choose import ChooseReleaseScreen
from installer_tui.screens.confirm import ConfirmScreen
from installer_tui.widgets import ErrorPanel, FallbackPanel, Figure
from installer_tui.widgets.gpu_figures import GpuFigures

MEANINGS = {
    "rollback": ("The rollback did not complete: the release that was serving keeps serving.",
                 "Read the message below, export the logs (e) for the vendor."),
    "export": ("The logs were not exported.",
               "Check that the stick is mounted and writable, then press e again."),
    "status": ("The site could not be read.", "Read the message below; it says what to do."),
}


def other_releases(site: Site, current: int) -> list[tuple[int, str]]:
    """Every installed release but `current` that `appliance rollback N` can serve, newest
    first, labelled for a person."""
    out = []
    for rel in reversed(site.releases()):
        if rel.sequence == current:
            continue
        try:
            rollback_target(site, rel.sequence)
            m, rec = rel.manifest(), rel.record
        except SiteError:
            continue
        where = "newer" if rel.sequence > current else "earlier"
        out.append((rel.sequence, f"release {rel.sequence} ({m.name} {m.version}, {where}, "
                                  f"last {rec.status})"))
    return out


def rollback_to(site: Site) -> int | None:
    """The release `appliance rollback` would go back to, or None when there is none."""
    try:
        return rollback_target(site).sequence
    except SiteError:
        return None


class StatusScreen(InstallerScreen):
    """What serves now and how it is doing; r rolls back, e exports logs."""

    BINDINGS = [
        Binding("r", "rollback", "Roll back"),
        Binding("e", "export", "Export logs"),
        Binding("u", "refresh", "Refresh"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.status: StatusRead | None = None
        self.figures: FiguresSource | None = None
        self.busy = False
        self._timer: Timer | None = None
        self._switched = False  # a rollback ran from here

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="status-body"):
            yield Static("Reading the site...", id="release")
            yield FallbackPanel(id="fallbacks")
            yield Static("", id="devices")
            yield Figure("Requests", "req/s", id="fig-rps")
            yield Figure("Latency p99", "ms", id="fig-latency")
            yield Figure("GPU memory", "MiB", id="fig-gpu")
            yield GpuFigures(id="gpu-figures")
            yield Static("", id="status-message")
            with Horizontal(id="export-row"):
                yield Label("Export logs to: ")
                yield Input(id="export-dir")
            yield ErrorPanel(id="status-error")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "status"
        self.query_one("#export-row").display = False
        self.query_one("#status-error").display = False
        self.query_one(FallbackPanel).display = False
        self.read_status()

    def on_unmount(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "rollback":
            return not self.busy and self.status is not None and bool(self.status.others)
        if action == "export":
            return not self.busy and self.status is not None and bool(self.status.endpoints)
        return True

    # -- reading the site ------------------------------------------------------------
    @work(thread=True, exclusive=True, group="status")
    def read_status(self) -> None:
        """The current release, its endpoints and whether each answers ready."""
        site = self.config.site
        try:
            cur = site.current() if site.root.exists() else None
            if cur is None:
                self.post_message(StatusRead(None, "No release is installed on this server.",
                                             "", {}, {}, None))
                return
            m, rec = cur.manifest(), cur.record
            paths = {s.name: s.health for s in m.services}
            health = {svc: is_ready(url + paths.get(svc, "/v2/health/ready"))
                      for svc, url in rec.endpoints.items()}
            engine = engine_label(rec.engine, lambda: self.config.get_engine().ping())
            door = DoorRecord.read(site)
            self.post_message(StatusRead(cur.sequence, f"{m.name} {m.version}", engine,
                                         dict(rec.endpoints), health,
                                         rollback_to(site),
                                         other_releases(site, cur.sequence),
                                         door.lines(m) if door is not None and
                                         door.sequence == cur.sequence else []))
        except Exception as e:  # shown on the screen
            self.post_message(Failed(e, "status"))

    @on(StatusRead)
    def status_read(self, message: StatusRead) -> None:
        first = self.status is None or self.status.endpoints != message.endpoints
        self.status = message
        self.query_one("#release", Static).update(self._describe(message))
        self.refresh_bindings()
        self.read_fallbacks()
        self.read_devices(message)
        if first and message.endpoints:
            self.figures = self.config.figures(
                [message.endpoints[s] for s in sorted(message.endpoints)])
            self.load_history()
            if self._timer is not None:
                self._timer.stop()
            self._timer = self.set_interval(self.config.poll_interval_s, self.poll)

    def _describe(self, s: StatusRead) -> RenderableType:
        if s.sequence is None:
            return Text(s.title + " Press Esc and install a bundle.", style="bold yellow")
        all_ok = all(s.health.values()) and bool(s.health)
        head = Text.assemble(("Serving: ", "bold"), (s.title, "bold cyan"),
                             f", release {s.sequence}, engine {s.engine or '?'}  ",
                             ("healthy", "bold green") if all_ok else ("NOT HEALTHY", "bold red"))
        t = Table(expand=True, box=None, padding=(0, 1), show_header=False)
        t.add_column("Service")
        t.add_column("URL", no_wrap=True)
        t.add_column("Health")
        door = DoorRecord.read(self.config.site)
        door = door if door is not None and door.sequence == s.sequence else None
        for svc in sorted(s.endpoints):
            ok = s.health.get(svc, False)
            t.add_row(svc, door.url(svc) if door is not None else s.endpoints[svc],
                      Text("ready", style="green") if ok
                      else Text("NOT READY", style="bold red"))
        if [seq for seq, _ in s.others] == ([s.rollback_to] if s.rollback_to else []) and \
                s.rollback_to is not None:
            back = Text(f"Roll back (r) to release {s.rollback_to}", style="dim")
        elif s.others:
            back = Text("Serve another installed release (r): " + ", ".join(
                str(seq) for seq, _ in s.others), style="dim")
        else:
            back = Text("No other installed release to switch to.", style="dim")
        # the certificate, each model's stable infer URL and a curl line to try
        reach = Text("\n".join(s.door_lines))
        return Group(head, t, *([reach] if s.door_lines else []), back)

    # -- where the models run ------------------------------------------------------------
    @work(thread=True, exclusive=True, group="devices")
    def read_devices(self, status: StatusRead) -> None:
        """Ask each ready service's runtime where its models run."""
        from appliance.site.devices import ask_devices, site_token
        site = self.config.site
        try:
            cur = site.current()
            m = cur.manifest() if cur is not None and cur.sequence == status.sequence else None
        except SiteError:
            m = None
        if m is None:
            return
        token = site_token(site.root)
        self.post_message(DevicesRead({
            s.name: ask_devices(status.endpoints[s.name], list(s.models), token)
            for s in m.services if status.health.get(s.name) and s.name in status.endpoints}))

    @on(DevicesRead)
    def devices_read(self, message: DevicesRead) -> None:
        self.query_one("#devices", Static).update(devices_text(message.devices))

    def _push_gpus(self, gpus: tuple[GpuFigure, ...]) -> None:
        self.query_one(GpuFigures).push(gpus)

    # -- live figures --------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="figures")
    def load_history(self) -> None:
        assert self.figures is not None
        self.post_message(FiguresHistory(self.figures.history()))

    @work(thread=True, exclusive=True, group="figures-poll")
    def poll(self) -> None:
        if self.figures is not None:
            self.post_message(FiguresSampled(self.figures.sample()))
        self._post_fallbacks()  # already in a worker thread

    # -- fallbacks -----------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="fallbacks")
    def read_fallbacks(self) -> None:
        """What each service's fallback answered; a start or end is audited (observe)."""
        self._post_fallbacks()

    def _post_fallbacks(self) -> None:
        from appliance.site.fallbacks import observe
        try:
            self.post_message(FallbacksRead(observe(self.config.site)))
        except Exception:  # the panel keeps what it showed; status itself says what is wrong
            return

    @on(FallbacksRead)
    def fallbacks_read(self, message: FallbacksRead) -> None:
        self.query_one(FallbackPanel).show_figures(message.figures)

    @on(FiguresHistory)
    def figures_history(self, message: FiguresHistory) -> None:
        for s in message.samples:
            self._push(s.rps, s.p99_ms, s.gpu_memory_mib)
            self._push_gpus(s.gpus)

    @on(FiguresSampled)
    def figures_sampled(self, message: FiguresSampled) -> None:
        s = message.sample
        if s is not None:
            self._push(s.rps, s.p99_ms, s.gpu_memory_mib)
            self._push_gpus(s.gpus)

    def _push(self, rps: float, p99: float | None, gpu: float | None) -> None:
        self.query_one("#fig-rps", Figure).push(rps)
        self.query_one("#fig-latency", Figure).push(p99)
        fig_gpu = self.query_one("#fig-gpu", Figure)
        if gpu is None and fig_gpu.latest is None:
            fig_gpu.set_empty("no GPU in use")
        fig_gpu.push(gpu)

    # -- actions -------------------------------------------------------------------------
    def action_refresh(self) -> None:
        self.read_status()

    def action_back(self) -> None:
        # after a rollback the screens below describe a release that no longer serves
        if len(self.app.screen_stack) > 2 and not self._switched:
            self.app.pop_screen()
        else:
            self.nav.show_bundles()

    def action_rollback(self) -> None:
        s = self.status
        if s is None or not s.others or self.busy:
            return
        if len(s.others) == 1:
            self._confirm(s.others[0][0])
            return

        def chosen(seq: int | None) -> None:
            if seq is not None:
                self._confirm(seq)
        self.app.push_screen(ChooseReleaseScreen(s.others), chosen)

    def _confirm(self, target: int) -> None:
        s = self.status
        assert s is not None
        verb = "Roll back" if s.sequence is None or target < s.sequence else "Switch"
        question = f"{verb} from release {s.sequence} to release {target}?"

        def answered(yes: bool | None) -> None:
            if yes:
                self._busy(True, f"Switching to release {target}...")
                self.do_rollback(target)
        self.app.push_screen(ConfirmScreen(question), answered)

    @work(thread=True, exclusive=True, group="rollback")
    def do_rollback(self, sequence: int) -> None:
        c = self.config
        try:
            seq = rollback(c.site, c.get_engine(), sequence, progress=self._relay,
                           health_timeout_s=c.health_timeout_s)
        except Exception as e:  # shown on the screen
            self.post_message(Failed(e, "rollback"))
            return
        self.post_message(RolledBack(seq))

    def _relay(self, event: Progress) -> None:
        self.post_message(PlanProgress(event))

    @on(PlanProgress)
    def rollback_progress(self, message: PlanProgress) -> None:
        ev = message.event
        if isinstance(ev, StepEvent) or (ev.message and not ev.total):
            self.query_one("#status-message", Static).update(ev.message)

    @on(RolledBack)
    def rolled_back(self, message: RolledBack) -> None:
        self._switched = True
        self._busy(False, f"Release {message.sequence} is serving again.")
        self.read_status()

    def action_export(self) -> None:
        if self.busy or self.status is None or not self.status.endpoints:
            return
        row = self.query_one("#export-row")
        row.display = True
        field = self.query_one("#export-dir", Input)
        if not field.value:
            field.value = str(self.config.default_export_dir())
        field.focus()

    @on(Input.Submitted, "#export-dir")
    def export_dir_chosen(self, event: Input.Submitted) -> None:
        if self.status is None or not event.value.strip():
            return
        self._busy(True, "Exporting logs...")
        self.do_export(dict(self.status.endpoints), Path(event.value.strip()).expanduser())

    @work(thread=True, exclusive=True, group="export")
    def do_export(self, endpoints: dict[str, str], directory: Path) -> None:
        from appliance.support.export import write_support_export
        try:  # the whole site (every release, install logs, audit), not only what serves
            paths = [write_support_export(self.config.site, directory,
                                          engine=self.config.get_engine(),
                                          gpu_probe=self.config.gpu_probe).path]
        except Exception as e:  # shown on the screen
            self.post_message(Failed(e, "export"))
            return
        self.post_message(LogsExported(paths))

    @on(LogsExported)
    def logs_exported(self, message: LogsExported) -> None:
        self.query_one("#export-row").display = False
        self._busy(False, "Wrote " + ", ".join(f"{p} ({human(p.stat().st_size)})"
                                               for p in message.paths))

    @on(Failed)
    def failed(self, message: Failed) -> None:
        self._busy(False, "")
        panel = self.query_one("#status-error", ErrorPanel)
        panel.show_error(message.error, message.where, MEANINGS.get(message.where))
        panel.display = True

    def _busy(self, busy: bool, text: str) -> None:
        self.busy = busy
        if busy:
            self.query_one("#status-error").display = False
        self.query_one("#status-message", Static).update(text)
        self.refresh_bindings()
