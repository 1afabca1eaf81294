"""The install plan: ordered steps from a bundle on the stick to a serving release.

How a front end drives it (the headless CLI and the TUI do the same):

    plan = InstallPlan(InstallOptions(bundle=path, site=Site(root), engine=engine,
                                      gpu_probe=NvmlProbe(), trust=trust_file),
                       progress=on_event)
    result = plan.run()               # every step in order, under the site lock; or:
    with plan.locked():               # one step at a time (e.g. pause for a confirm
        for step in STEPS:            # after "placement"); same order, same checks
            plan.run_step(step.name)
        result = plan.result()

`on_event` receives `appliance.progress.Progress` events, from the worker
thread that runs the plan (a TUI posts them to its screen):
  - `StepEvent` (a Progress) when a step begins (status "running") and ends
    ("ok", "warn", "failed");
  - `CheckEvent` (a Progress) for each preflight line (level pass/warn/fail);
  - plain `Progress` for bytes (verify, load: done/total) and info lines.
After each step the plan's attributes hold what a screen shows: `checks`,
`manifest`, `verified` (signers), `gpus` (`gpus.table()` under
`appliance.site.gpu.TABLE_HEADER`), `placement` (`placement.lines()`), `endpoints`.
Rolling back later is `appliance.rollback.rollback(site, engine, seq)`.

Errors are `ApplianceError`s with one-line messages; after the new release
started, a failure stops it, restores the previous release and raises
`ReleaseFailedError` (or `AcceptanceError`) saying why. Killing the process
at any point leaves the previous release serving; running the same plan again
completes the install. Exit codes for each error: `appliance.cli.site.exit_code`.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import AbstractContextManager, suppress
from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.errors import (
    ApplianceError,
    CanaryRejectedError,
    EngineError,
    InstallError,
    PreflightError,
    SiteError,
    TrustError,
)
from appliance.fsutil import atomic_write
from appliance.progress import Progress, ProgressFn, no_progress
from appliance.site.acceptance import check_samples, wait_ready
from appliance.site.auditing import audit_allow_expired, audit_step, audit_trust
from appliance.site.devices import ModelDevice, ask_devices, check_required, cpu_lines, site_token
from appliance.site.door import DoorRecord, FrontDoor
from appliance.site.engine import behind_front_door, launches, port_in_use
from appliance.site.failures import STARTED_STEPS, unexpected
from appliance.site.gpu import GpuReport
from appliance.site.layout import PLACEMENT_FILE, Release
from appliance.site.lock import site_lock
from appliance.site.placement import Placement, plan_placement
from appliance.site.preflight import (
    Check,
    check_cdi,
    check_clock,
    check_disk,
    check_driver_for_cuda,
    check_driver_libraries,
    check_engine,
    check_front_door,
    check_gpu_runtime,
    check_gpus,
    check_site_paths,
    check_trust,
)
from appliance.site.steps import (
    STEPS,
    CheckEvent,
    InstallOptions,
    InstallResult,
    Step,
    StepEvent,
)
from appliance.site.undo import roll_back
from appliance.site.watchdog_units import WatchdogSetup, set_up_quietly
from signing import SigningError, TrustRoot, rotate_root

log = logging.getLogger(__name__)
__all__ = ["STEPS", "CheckEvent", "InstallOptions", "InstallPlan", "InstallResult", "Step",
           "StepEvent"]



class InstallPlan:
    """One install of one bundle on one site; steps run in `STEPS` order."""

    def __init__(self, options: InstallOptions, progress: ProgressFn = no_progress) -> None:
        self.o = options
        self.site = options.site
        self.engine = options.engine
        self.emit = progress
        self.checks: list[Check] = []
        self.manifest: Manifest | None = None  # unverified until `verify` has run
        self.verified: Any = None  # appliance.bundle.VerifiedBundle
        self.trust_root: TrustRoot | None = None
        self.gpus: GpuReport | None = None
        self.placement: Placement | None = None
        self.release: Release | None = None
        self.previous: Release | None = None
        self.endpoints: dict[str, str] = {}
        self.devices: dict[str, list[ModelDevice]] = {}
        self.slot = 0
        self.door = FrontDoor(self.site, self.engine, options.now(), tls_cert=options.tls_cert,
                              tls_key=options.tls_key, progress=progress)
        self.public: DoorRecord | None = None
        self.door_moved = False
        self._new_root: TrustRoot | None = None
        self._warnings: list[str] = []
        self._done: list[str] = []
        self._pending_log: list[dict[str, Any]] = []
        self.watchdog: WatchdogSetup | None = None

    # -- driving ---------------------------------------------------------------
    def run(self) -> InstallResult:
        """Run every remaining step in order; return what now serves.

        Raises:
            ApplianceError: the first failure (see the module docstring).
        """
        with site_lock(self.site):
            for step in STEPS:
                if step.name not in self._done:
                    self.run_step(step.name)
        return self.result()

    def result(self) -> InstallResult:
        if self.release is None or self.placement is None:
            raise InstallError("the install has not run yet")
        prev = self.previous.sequence if self.previous else None
        return InstallResult(self.release.sequence, prev, dict(self.endpoints), self.placement,
                             self.public or DoorRecord.read(self.site), self.door.token_made,
                             dict(self.devices), self.watchdog)

    def run_step(self, name: str) -> None:
        """Run one step (the ones before it must have run).

        Raises:
            ApplianceError: the step failed; after `start`, the previous release is restored.
        """
        order = [s.name for s in STEPS]
        missing = [s for s in order[: order.index(name)] if s not in self._done]
        if missing:
            raise InstallError(f"step {name!r} needs {missing[0]!r} first")
        title = dict((s.name, s.title) for s in STEPS)[name]
        self._event(StepEvent(name, message=title, status="running"))
        try:
            getattr(self, f"_step_{name}")()
        except Exception as raw:  # any failure ends as a documented exit code
            e = raw if isinstance(raw, ApplianceError) else unexpected(name, raw, self.release)
            if name == "stop_old":  # the new release serves; say so, do not undo it
                self._warnings.append(str(e))
                self._info("stop_old", str(e))
            else:
                if name in STARTED_STEPS:
                    e = roll_back(self, name, e)
                audit_step(self, name, e)
                self._event(StepEvent(name, message=str(e), status="failed"))
                raise e from (raw if e is not raw else raw.__cause__)
        self._done.append(name)
        audit_step(self, name, None)
        warned = (name == "preflight" and any(c.level == "warn" for c in self.checks)) or (
            name == "stop_old" and bool(self._warnings))
        self._event(StepEvent(name, message=title, status="warn" if warned else "ok"))

    def locked(self) -> AbstractContextManager[None]:
        """Hold the site's install lock for a front end that runs steps one by one."""
        return site_lock(self.site)

    # -- steps -------------------------------------------------------------------
    def _step_preflight(self) -> None:
        # Nothing on the site changes here: a refusal leaves it as it was (bar the audit
        # line), and nothing of the bundle is parsed before its signature checked out.
        from appliance.bundle import read_manifest_signed
        site_check = check_site_paths(self.site.directories())
        trust_path = self.o.trust or self.site.trust_path
        trust_check, self.trust_root = check_trust(trust_path,
                                                   self.site.state().trust_root_version)
        checks = [site_check, trust_check]
        if self.o.trust and self.site.trust_path.exists() and self.trust_root is not None:
            checks.append(self._check_trust_matches(self.trust_root))
        if self.trust_root is not None:
            self.manifest = read_manifest_signed(self.o.bundle, self.trust_root)
        m = self.manifest
        checks.append(check_engine(self.engine))
        if m is not None:
            extract = sum(x.weights_size for x in m.models) if self.engine.name == "process" \
                else 0
            checks.append(check_disk(m, self.site.store, extract))
            checks.append(check_front_door(self.engine, m))
            self.gpus = self.o.gpu_probe.probe()
            checks.append(check_gpus(self.gpus, m))
            # only container engines that take GPUs as CDI devices have this method; asked
            # only when a GPU is wanted and found (podman answers /info in about 0.3 s)
            gpu_in_use = bool(self.gpus.gpus) and any(s.gpu != "none" for s in m.services)
            uses_cdi = gpu_in_use and getattr(self.engine, "gpu_by_cdi", lambda: False)()
            checks.append(check_gpu_runtime(self.engine, self.gpus, m, uses_cdi))
            checks.append(check_driver_for_cuda(self.gpus, m))
            checks.append(check_cdi(self.gpus, m, uses_cdi))
            # only an engine that binds the host driver into its services has this method
            libs = getattr(self.engine, "missing_driver_libraries", None)
            checks.append(check_driver_libraries(self.gpus, m, libs))
            checks.append(check_clock(m, self.o.now(), self.o.allow_expired,
                                      self.o.max_expired))
        for c in checks:
            self._event(CheckEvent("preflight", message=c.line(), level=c.level))
        self.checks = checks
        failed = [c for c in checks if c.level == "fail"]
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise PreflightError(f"preflight failed: {failed[0].name}: {failed[0].message}{more}")
        self.site.ensure()
        self._clear_partial_blobs()
        self.door.recover()  # a canary a killed installer left goes back to the old release

    def _check_trust_matches(self, given: TrustRoot) -> Check:
        try:
            have = TrustRoot.from_json(self.site.trust_path.read_bytes())
        except (OSError, SigningError) as e:
            return Check("trust root", "fail", f"the site's trust root is unreadable: {e}")
        if have.to_json() == given.to_json():
            return Check("trust root", "pass", "same as the root this site already trusts")
        return Check("trust root", "fail",
                     f"this site already trusts root version {have.version}; a different root "
                     "is accepted only inside a signed bundle (rotation), not with --trust")

    def _step_verify(self) -> None:
        from appliance.bundle import verify_bundle
        assert self.manifest is not None and self.trust_root is not None
        last = self.site.state().highest_sequence
        seq = self.manifest.sequence
        if last == seq and self.site.manifest_digest_of(seq) is not None:
            last = seq - 1  # re-run of the installed bundle: stage_release checks the digest
        self.verified = verify_bundle(self.o.bundle, self.trust_root, now=self.o.now(),
                                      last_sequence=last, store=self.site.store,
                                      allow_expired=self.o.allow_expired,
                                      max_expired=self.o.max_expired, progress=self.emit)
        v = self.verified
        self.manifest = v.manifest
        self._new_root = self._rotated_root()  # a bad rotation refuses the bundle up front
        if self.o.trust and not self.site.trust_path.exists():
            atomic_write(self.site.trust_path, self.o.trust.read_bytes())
            audit_trust(self.site.root, self.trust_root, "first trust (--trust)")
        self.previous = self.site.current()
        self.release = self.site.stage_release(v.manifest_bytes, v.envelope_bytes,
                                               v.manifest.sequence, self.engine.name)
        for line in self._pending_log:
            self.release.log(**line)
        self._pending_log.clear()
        if self.o.allow_expired and self.o.now() > v.manifest.expires_at:
            self.release.log("override", reason=f"installed expired bundle (expired "
                                                f"{v.manifest.expires}) with --allow-expired")
            audit_allow_expired(self, v.manifest.expires, self.o.now() - v.manifest.expires_at)
        self._info("verify", f"signed by {', '.join(k[:16] for k in v.signers)}; "
                             f"release {v.manifest.sequence} ({v.manifest.version})")

    def _step_placement(self) -> None:
        assert self.manifest is not None and self.release is not None
        recorded = self.release.path / PLACEMENT_FILE
        if self.serving_already() and recorded.is_file():
            self.placement = Placement.from_dict(json.loads(recorded.read_bytes()))
            self._info("placement", "kept the placement of the release already serving")
        else:
            report = self.gpus or self.o.gpu_probe.probe()
            if report.gpus and not self.engine.gpu_runtime():
                report = GpuReport(unavailable=f"{self.engine.name} has no NVIDIA container "
                                               "runtime", driver=report.driver, cuda=report.cuda)
            for g in report.gpus:
                self._info("placement", f"GPU {g.index} {g.name}: {g.memory_free_mib} of "
                                        f"{g.memory_total_mib} MiB free, {g.utilization_pct:.0f}% "
                                        f"busy (driver {report.driver}, CUDA {report.cuda})")
            self.placement = plan_placement(self.manifest, report)
            atomic_write(recorded, self.placement.to_json())
        for line in self.placement.lines():
            self._info("placement", line)

    def _step_load(self) -> None:
        assert self.manifest is not None and self.release is not None
        self.engine.load(self.manifest, self.release, self.site.store, self.emit)
        self.record_status(status="loaded")

    def _step_start(self) -> None:
        assert self.manifest is not None and self.release and self.placement
        if self.serving_already():
            rec = self.release.record
            self.slot, self.endpoints = rec.slot, dict(rec.endpoints)
            self._info("start", f"release {self.release.sequence} is already serving")
            return
        cur = self.previous
        self.slot = 1 - cur.record.slot if cur is not None and cur.sequence != \
            self.release.sequence else 0
        self.record_status(status="starting", slot=self.slot, reason="")
        self._free_ports()
        if self.door.applies(self.manifest):
            self.door.runtime_tokens()  # the runtimes behind the door check it too
        self.endpoints = self.engine.start(self.manifest, self.release, self.placement,
                                           self.slot, self.emit)
        self.record_status(status="started", endpoints=self.endpoints)

    def _free_ports(self) -> None:
        """The new slot's ports must be free: a leftover still listening on one would
        answer the health check and the samples in the new release's place.

        Raises:
            EngineError: a port stays in use after our own leftovers are stopped.
        """
        assert self.manifest is not None and self.release is not None and self.placement
        ports = {x.port: x.service for x in launches(self.manifest, self.placement, self.slot,
                                                     door=self.door.applies(self.manifest))}
        if not any(port_in_use(p) for p in ports):
            return
        # Ours first: this release from an earlier run, or one an earlier update could
        # not stop (a warning then), never the release serving now.
        keep = {self.previous.sequence} if self.previous is not None else set()
        for seq in sorted(self.engine.running() - keep):
            try:
                self.engine.stop(seq)
                self._info("start", f"stopped release {seq}, still running in this slot")
            except ApplianceError as e:
                log.info("cannot stop leftover release %s: %s", seq, e)
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            raise EngineError(
                f"port {busy[0]} for service {ports[busy[0]]!r} is in use by something else "
                f"(see: ss -ltnp 'sport = :{busy[0]}'); stop it and install again")

    def _step_health(self) -> None:
        assert self.manifest is not None and self.release is not None
        seq = self.release.sequence
        health = {s.name: s.health for s in self.manifest.services}
        wait_ready({s: u + health[s] for s, u in self.endpoints.items()},
                   lambda s: self.engine.alive(seq, s), self.o.health_timeout_s,
                   lambda s: self.engine.logs_tail(seq, s),
                   lambda s, left: self.emit(Progress("health", message=f"waiting for {s}")),
                   self._check_gpu)
        self._check_devices()
        self.record_status(status="ready")

    def _check_gpu(self, service: str) -> None:
        """Fail a `gpu: required` service whose runtime runs a model on the CPU."""
        assert self.manifest is not None
        report = self.gpus or GpuReport()
        check_required(self.manifest, service, self.endpoints[service],
                       site_token(self.site.root), container=self.engine.name != "process",
                       driver=report.driver, cuda=report.cuda)

    def _check_devices(self) -> None:
        """Ask each ready service where its models run; refuse or report the CPU."""
        assert self.manifest is not None and self.placement is not None
        token = site_token(self.site.root)
        self.devices = {s.name: ask_devices(self.endpoints[s.name], list(s.models), token)
                        for s in self.manifest.services if s.name in self.endpoints}
        for svc in self.devices:
            self._check_gpu(svc)  # also a runtime that became ready though it runs on CPU
        for line in cpu_lines(self.manifest, self.placement, self.devices,
                              container=self.engine.name != "process"):
            self._info("health", line)

    def _step_accept(self) -> None:
        assert self.manifest is not None
        n = check_samples(self.manifest, self.endpoints,
                          lambda m, i: self.emit(Progress("accept", message=f"{m} sample {i}")),
                          token=site_token(self.site.root))
        self._info("accept", f"{n} signed sample(s) answered within tolerance" if n
                   else "the bundle carries no samples; nothing to check")

    def _step_switch(self) -> None:
        assert self.manifest is not None and self.release is not None
        seq = self.release.sequence
        new_root = self._new_root
        if self.door.applies(self.manifest):
            self._through_front_door()
        self.site.switch_current(seq)
        self.engine.enable(seq)
        if new_root is not None:
            atomic_write(self.site.trust_path, new_root.to_json())
            audit_trust(self.site.root, new_root, f"rotated by release {seq}")
        self.site.accept_sequence(seq, new_root.version if new_root else
                                  (self.trust_root.version if self.trust_root else None))
        self.record_status(status="serving", reason="")
        self._info("switch", f"current -> releases/{seq}")
        # Hook: the watchdog restarts a hung runtime, which neither engine does; set up
        # here, once the release serves, and never failing the install (it says why).
        self.watchdog = set_up_quietly(self.site.root, self.engine, self.o.unit_dir,
                                       lambda line: self._info("switch", line))

    def _through_front_door(self) -> None:
        """Move every service's traffic to the new release at the front door."""
        assert self.manifest is not None and self.release is not None
        prev = self.previous
        if prev is not None and prev.sequence != self.release.sequence \
                and not behind_front_door(prev.manifest()):
            # A release from before the front door holds the declared ports itself: once,
            # it stops first (a short gap) so the proxy can take them.
            self._info("switch", f"release {prev.sequence} served without a front door: "
                                 "stopping it so the front door can take its ports")
            self.engine.stop(prev.sequence)
        self.door_moved = True
        if self.o.canary is not None and prev is not None and self.door.can_canary():
            verdict = self.door.canary(self.manifest, self.release.sequence, self.endpoints,
                                       self.o.canary, self.o.canary_bounds)
            self.release.log("canary", action=verdict.action, reason=verdict.reason)
            self._info("switch", verdict.reason)
            if verdict.action == "rollback":
                self.door_moved = False  # the canary drained: the old release has it all
                raise CanaryRejectedError(f"the canary was rolled back: {verdict.reason}")
            self.public = DoorRecord.read(self.site)
        else:
            if self.o.canary is not None:
                self._info("switch", "no release serves behind the front door yet: no "
                                     "canary, a plain switch")
            self.public = self.door.serve(self.manifest, self.release.sequence,
                                          self.endpoints)
        assert self.public is not None
        for svc in self.manifest.services:
            self._info("switch", f"{svc.name} serves at {self.public.url(svc.name)}")

    def _step_stop_old(self) -> None:
        assert self.release is not None
        for seq in sorted(self.engine.running() - {self.release.sequence}):
            try:
                self.engine.stop(seq)
            except ApplianceError as e:  # the new release serves; say so, do not undo it
                self._warnings.append(f"release {seq} could not be stopped: {e}")
                self._info("stop_old", self._warnings[-1])
                continue
            with suppress(SiteError):  # running but no longer installed: stopping is enough
                self.site.update_record(self.site.release(seq), status="stopped")
            self._info("stop_old", f"release {seq} stopped")

    # -- helpers ---------------------------------------------------------------------
    def _clear_partial_blobs(self) -> None:
        """Remove temp files an installer killed mid-ingest left, and the image layouts of
        links one killed mid-load left (we hold the site lock)."""
        tmp = self.site.store.tmp
        if tmp.is_symlink():  # preflight refused this; never clean through a link
            raise SiteError(f"{tmp} is a symbolic link; remove it and run again")
        if tmp.is_dir():
            for p in tmp.iterdir():
                if p.is_file():
                    p.unlink(missing_ok=True)
                elif p.is_dir() and p.name.startswith("oci-"):
                    shutil.rmtree(p, ignore_errors=True)

    def serving_already(self) -> bool:
        """Whether the release being installed is `current` (a re-run after the switch)."""
        return (self.release is not None and self.previous is not None
                and self.previous.sequence == self.release.sequence)

    def _rotated_root(self) -> TrustRoot | None:
        assert self.manifest is not None
        if not self.manifest.trust_root or self.trust_root is None:
            return None
        try:
            new = rotate_root(self.trust_root, self.manifest.trust_root.encode())
        except SigningError as e:
            raise TrustError(f"the bundle's new trust root is not valid: {e}") from e
        return new

    def record_status(self, **changes: Any) -> None:
        assert self.release is not None
        self.site.update_record(self.release, **changes)

    def _info(self, step: str, message: str) -> None:
        self._event(Progress(step, message=message))

    def _event(self, ev: Progress) -> None:
        line: dict[str, Any] = {"event": type(ev).__name__, "step": ev.step,
                                "message": ev.message}
        if isinstance(ev, StepEvent):
            line["status"] = ev.status
        if isinstance(ev, CheckEvent):
            line["level"] = ev.level
        if self.release is not None:
            self.release.log(**line)
        else:
            self._pending_log.append(line)
        self.emit(ev)

