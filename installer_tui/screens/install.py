"""The install: preflight, verify (with a byte progress bar), review, then the rest, then done.

The plan runs in a worker thread and reports through its progress callback,
which posts `PlanProgress` messages, so the screen keeps redrawing while a
multi-gigabyte bundle is hashed. The plan pauses after placement: the person
sees the verified manifest, the GPU table and the placement plan, and only
then starts the steps that change what serves.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Footer, Header, RichLog, Static

from appliance.bundle.manifest import Manifest
from appliance.frontdoor.canary import CanaryEvent
from appliance.progress import Progress
from appliance.site.acceptance import is_ready
from appliance.site.plan import STEPS, CheckEvent, InstallOptions, InstallPlan, StepEvent
from appliance.units import human
from installer_tui.devices import devices_text
from installer_tui.errors import InstallCancelledError
from installer_tui.messages import Failed, InstallFinished, PlanProgress, ReviewReady
from installer_tui.screens.base import InstallerScreen
from installer_tui.screens.confirm import CanaryChoice, CanaryOfferScreen
from installer_tui.widgets import CanaryPanel, ErrorPanel, StepList, TransferBar
from signing import fingerprint

REVIEW_STEPS = ("preflight", "verify", "placement")
LEVEL_STYLE = {"pass": "green", "warn": "bold yellow", "fail": "bold red"}
BAR_TITLES = {"verify": "Verifying the signature and every blob",
              "load": "Loading images into the engine"}


class InstallScreen(InstallerScreen):
    """Runs one install of one bundle; its state is preparing, review, running, done or failed."""

    BINDINGS = [
        Binding("i", "install", "Install"),
        Binding("escape", "back", "Back"),
        Binding("s", "status", "Status"),
        Binding("l", "show_log", "Log"),
    ]

    def __init__(self, parts: list[Path], manifest: Manifest, trust: Path | None) -> None:
        super().__init__()
        self.parts = parts
        self.unverified = manifest
        self.trust = trust
        self.state = "preparing"
        self.plan: InstallPlan | None = None
        self.error: Exception | None = None
        self._lock = ExitStack()
        self._cancel = threading.Event()
        # the release serving behind a running front door: the install offers a canary
        self.canary_from: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="install-body"):
            yield StepList(id="steps")
            with ContentSwitcher(initial="progress", id="install-main"):
                with Vertical(id="progress"):
                    yield ErrorPanel(id="install-error")
                    yield TransferBar("Waiting for preflight", id="transfer")
                    yield CanaryPanel(id="install-canary")
                    yield RichLog(id="events", wrap=True, markup=False, highlight=False,
                                  min_width=20)
                with Vertical(id="review"):
                    with VerticalScroll(id="review-scroll"):
                        yield Static(id="review-text")
                    yield Static(id="review-hint")
                with VerticalScroll(id="done"):
                    yield Static(id="done-text")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.unverified.name} {self.unverified.version}"
        self.query_one("#install-error").display = False
        self.query_one("#install-canary").display = False
        self.prepare()

    def on_unmount(self) -> None:
        if self.state not in ("preparing", "running"):  # a worker still needs the lock
            self._lock.close()

    # -- what the footer offers -----------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "install":
            return self.state == "review"
        if action == "back":
            return self.state in ("preparing", "review", "failed", "done")
        if action == "show_log":
            return self.state in ("review", "done")
        return True

    def _set_state(self, state: str) -> None:
        self.state = state
        # the review needs the whole width for its tables; the steps come back after
        self.query_one(StepList).display = state != "review"
        self.refresh_bindings()

    # -- the worker side -----------------------------------------------------------------
    def _relay(self, event: Progress) -> None:
        # Raising here stops verify at its next event, mid-blob too; the store keeps only
        # whole, checked blobs.
        if self._cancel.is_set() and self.state == "preparing":
            raise InstallCancelledError("the install was stopped before it changed what "
                                        "serves; choose the bundle again to start over")
        self.post_message(PlanProgress(event))

    def cancel(self) -> bool:
        """Stop a preparing install at its next progress event; False once past the review."""
        if self.state != "preparing":
            return False
        self._cancel.set()
        return True

    @work(thread=True, exclusive=True, group="plan")
    def prepare(self) -> None:
        """Preflight, verify and placement, holding the site lock until the install ends."""
        step = "preflight"
        try:
            c = self.config
            self.plan = InstallPlan(InstallOptions(
                bundle=self.parts, site=c.site, engine=c.get_engine(), gpu_probe=c.gpu_probe,
                trust=self.trust, now=c.now, allow_expired=c.allow_expired,
                max_expired=c.max_expired,
                health_timeout_s=c.health_timeout_s), progress=self._relay)
            self._lock.enter_context(self.plan.locked())
            for step in REVIEW_STEPS:
                self.plan.run_step(step)
            self.canary_from = self._serving_behind_door(self.plan)
        except Exception as e:  # every failure is shown on the screen, none crashes it
            self._lock.close()
            self.post_message(Failed(e, step))
            return
        self.post_message(ReviewReady())

    @staticmethod
    def _serving_behind_door(plan: InstallPlan) -> int | None:
        """The release serving behind a running front door that this one would replace."""
        m, prev = plan.manifest, plan.previous
        if m is None or prev is None or prev.sequence == m.sequence:
            return None
        return prev.sequence if plan.door.applies(m) and plan.door.can_canary() else None

    @work(thread=True, exclusive=True, group="plan")
    def finish(self) -> None:
        """The steps that change what serves: load, start, health, samples, switch, stop old."""
        assert self.plan is not None
        step = "load"
        try:
            for s in STEPS:
                if s.name not in REVIEW_STEPS:
                    step = s.name
                    self.plan.run_step(s.name)
            result = self.plan.result()
            manifest = self.plan.manifest
            assert manifest is not None
            paths = {s.name: s.health for s in manifest.services}
            health = {svc: is_ready(url + paths.get(svc, "/v2/health/ready"))
                      for svc, url in result.endpoints.items()}
        except Exception as e:  # every failure is shown on the screen, none crashes it
            self.post_message(Failed(e, step))
            return
        finally:
            self._lock.close()
        self.post_message(InstallFinished(result, health))

    # -- rendering events ----------------------------------------------------------------
    @on(PlanProgress)
    def plan_progress(self, message: PlanProgress) -> None:
        ev = message.event
        log = self.query_one("#events", RichLog)
        if isinstance(ev, StepEvent):
            self.query_one(StepList).set_status(ev.step, ev.status)
            if ev.status == "running":
                if ev.step in BAR_TITLES:
                    self.query_one(TransferBar).reset(BAR_TITLES[ev.step])
                log.write(Text(f"{ev.message}", style="bold"))
            elif ev.status == "failed":
                log.write(Text(f"  failed: {ev.message}", style="bold red"))
        elif isinstance(ev, CheckEvent):
            log.write(Text(f"  {ev.message}", style=LEVEL_STYLE.get(ev.level, "")))
        elif isinstance(ev, CanaryEvent):
            panel = self.query_one(CanaryPanel)
            panel.display = True
            panel.show_event(ev)
            if ev.verdict:  # the live figures stay in the panel; the log keeps the verdict
                log.write(Text(f"  {ev.message}", style="green" if ev.verdict == "promote"
                               else "bold red"))
        elif ev.total:
            self.query_one(TransferBar).advance(ev.done, ev.total)
        elif ev.message:
            log.write(Text(f"  {ev.message}"))

    @on(ReviewReady)
    def review_ready(self) -> None:
        assert self.plan is not None
        self.query_one("#review-text", Static).update(self._review())
        m = self.plan.manifest
        assert m is not None
        hint = Text.assemble(
            "Press ", ("i", "bold reverse"), f" to install release {m.sequence}, ",
            ("Esc", "bold reverse"), " to go back (nothing changes what serves).")
        if self.canary_from is not None:
            hint.append(f" Release {self.canary_from} serves behind the front door: a canary "
                        "is offered first.")
        self.query_one("#review-hint", Static).update(hint)
        self.query_one(ContentSwitcher).current = "review"
        self.query_one("#review-scroll").focus()
        self._set_state("review")

    @on(InstallFinished)
    def install_finished(self, message: InstallFinished) -> None:
        self.query_one("#done-text", Static).update(self._done(message))
        self.query_one(ContentSwitcher).current = "done"
        self.query_one("#done").focus()
        self._set_state("done")

    @on(Failed)
    def install_failed(self, message: Failed) -> None:
        self.error = message.error
        if isinstance(message.error, InstallCancelledError):
            self._set_state("failed")
            self.action_back()
            return
        panel = self.query_one("#install-error", ErrorPanel)
        panel.show_error(message.error, message.where)
        panel.display = True
        self.query_one(ContentSwitcher).current = "progress"
        self.query_one(TransferBar).display = False
        self._set_state("failed")

    # -- actions ---------------------------------------------------------------------------
    def action_install(self) -> None:
        if self.state != "review":
            return
        if self.canary_from is None or self.plan is None or self.plan.manifest is None:
            self._start()
            return

        def chosen(choice: CanaryChoice | None) -> None:
            if choice is None or self.plan is None:
                return  # back to the review: nothing changed
            self.plan.o.canary, self.plan.o.canary_bounds = choice.plan, choice.bounds
            self._start()
        self.app.push_screen(CanaryOfferScreen(self.canary_from, self.plan.manifest.sequence),
                             chosen)

    def _start(self) -> None:
        self._set_state("running")
        self.query_one(ContentSwitcher).current = "progress"
        self.finish()

    def action_back(self) -> None:
        """Back to the bundle list (releasing the site lock if the install did not go on)."""
        if self.cancel():
            self.notify("Stopping the verification...")
            return
        self._lock.close()
        self.nav.show_bundles()

    def action_status(self) -> None:
        if self.state in ("running", "preparing"):
            self.notify("The install is running; the status screen opens when it is done.")
            return
        self.nav.show_status()

    def action_show_log(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        back = "review" if self.state == "review" else "done"
        switcher.current = back if switcher.current == "progress" else "progress"

    # -- what the review and done panes say ---------------------------------------------------
    def _review(self) -> RenderableType:
        plan = self.plan
        assert plan is not None and plan.manifest is not None and plan.placement is not None
        m = plan.manifest
        signers = len(plan.verified.signers) if plan.verified is not None else 0
        head = Text.assemble(("Verified: ", "bold green"), (f"{m.name} {m.version}", "bold"),
                             f", release {m.sequence}, signed by {signers} trusted key(s):")
        names = plan.trust_root.names if plan.trust_root is not None else {}
        for kid in plan.verified.signers if plan.verified is not None else []:
            head.append(f"\n  {fingerprint(kid)}  {names.get(kid, '')}")
        models = Table(title="Models", title_justify="left", expand=True, padding=(0, 1),
                       box=box.SIMPLE_HEAD)
        for col in ("Model", "Ver", "Framework", "Size", "GPU MiB"):
            models.add_column(col, no_wrap=col != "Model")
        for x in m.models:
            models.add_row(x.name, x.version, x.framework, human(x.weights_size),
                           str(x.gpu_memory_mib))
        prov = Text()
        for x in m.models:
            p = x.provenance
            prov.append(f"{x.name}: code {p.code_commit or '?'}, data {p.data_version or '?'}, "
                        f"run {p.training_run or '?'}\n", style="dim")
        gpus: RenderableType
        report = plan.gpus
        if report is not None and report.gpus:
            gpus = Table(title=f"GPUs (driver {report.driver or '?'}, CUDA {report.cuda or '?'})",
                         title_justify="left", expand=True, padding=(0, 1), box=box.SIMPLE_HEAD)
            for col in ("GPU", "Name", "Total MiB", "Free MiB", "Util"):
                gpus.add_column(col, no_wrap=col != "Name")
            for g in report.gpus:
                gpus.add_row(str(g.index), g.name, str(g.memory_total_mib),
                             str(g.memory_free_mib), f"{g.utilization_pct:.0f}%")
        else:
            why = report.unavailable if report is not None and report.unavailable else \
                "NVML found no GPU"
            gpus = Text(f"GPUs: none ({why}).", style="yellow")
        place = Text("Placement\n", style="bold")
        for line in plan.placement.lines():
            place.append(f"  {line}\n")
        warns = [c for c in plan.checks if c.level == "warn"]
        notes = Text()
        for c in warns:
            notes.append(f"Warning: {c.name}: {c.message}\n", style="yellow")
        return Group(head, models, prov, gpus, place, notes)

    def _done(self, message: InstallFinished) -> RenderableType:
        r = message.result
        m = self.plan.manifest if self.plan is not None else None
        name = f" ({m.name} {m.version})" if m is not None else ""
        head = Text.assemble(("Done: ", "bold green"), f"release {r.sequence}{name} is serving.")
        ends = Table(title="Endpoints", title_justify="left", expand=True, padding=(0, 1),
                     box=box.SIMPLE_HEAD)
        ends.add_column("Service")
        ends.add_column("URL", no_wrap=True)
        ends.add_column("Health")
        for svc, url in sorted(r.endpoints.items()):
            ok = message.health.get(svc, False)
            ends.add_row(svc, r.door.url(svc) if r.door is not None else url,
                         Text("ready", style="green") if ok
                         else Text("NOT READY", style="bold red"))
        door = Text()
        if r.door is not None and m is not None:
            for line in r.door.lines(m):
                door.append(f"{line}\n")
        if r.token:
            door.append("Site token (shown this once; kept 0600 in the site root):\n")
            door.append(f"  {r.token}\n", style="bold")
        where = Text()
        for line in r.placement.lines():
            where.append(f"{line}\n")
        canary = self.query_one(CanaryPanel)
        if canary.verdict:
            door.append("Canary: ", style="bold")
            for ev in canary.latest.values():
                door.append(f"{ev.message}\n")
        back = Text()
        if r.previous is not None and r.previous != r.sequence:
            back.append(f"Release {r.previous} was stopped and stays installed.\n")
        back.append("To roll back: press ")
        back.append("s", style="bold reverse")
        back.append(" (status), then ")
        back.append("r", style="bold reverse")
        back.append(", or run:\n")
        back.append(f"  appliance rollback --root {self.config.site.root}\n", style="bold")
        devices = devices_text(r.devices, m, r.placement,
                               container=self.plan is None or self.plan.engine.name != "process")
        return Group(head, ends, *([door] if door.plain else []), where,
                     *([devices] if devices.plain else []), back)
