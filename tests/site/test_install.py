"""The install plan end to end on real bundles with the process engine."""

from __future__ import annotations

import json
import os
import socket

import pytest

from appliance.errors import (
    AcceptanceError,
    PlacementError,
    PreflightError,
    ReleaseFailedError,
    RollbackError,
    SiteError,
)
from appliance.progress import Progress
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import PLACEMENT_FILE
from appliance.site.placement import Placement
from appliance.site.plan import STEPS, CheckEvent, StepEvent
from appliance.site.rollback import rollback, rollback_target
from tests.enginekit import wait_for
from tests.site.bundlekit import make_bundle, sample
from tests.site.installkit import ready


def test_first_install_runs_every_step_in_order_and_serves(ps, port):
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port, samples=[sample([1, 2], [2, 4])])
    events: list[Progress] = []
    result = ps.install(b, events)
    steps = [(e.step, e.status) for e in events if isinstance(e, StepEvent)]
    # preflight ends "warn": no GPU, so the services run on the CPU
    assert steps == [(s.name, st) for s in STEPS
                     for st in ("running", "warn" if s.name == "preflight" else "ok")]
    checks = {e.message.split(":")[0].split(None, 1)[1]: e.level for e in events
              if isinstance(e, CheckEvent)}
    assert checks["trust root"] == "pass" and checks["gpu"] == "warn"  # CPU, said plainly
    assert result.sequence == 1 and result.previous is None
    assert result.endpoints == {"mlp": f"http://127.0.0.1:{port}"}
    assert ready(result.endpoints["mlp"])
    assert ps.site.current().sequence == 1
    assert ps.site.state().highest_sequence == 1
    assert ps.site.trust_path.read_bytes() == ps.vendor.root_path.read_bytes()
    rec = ps.site.release(1).record
    assert rec.status == "serving" and rec.slot == 0
    assert any("1 signed sample(s) answered" in e.message for e in events)
    assert any("All services run on the CPU" in e.message for e in events)
    log = [x["event"] for x in ps.site.release(1).log_lines()]
    assert log.count("StepEvent") == 2 * len(STEPS)


def test_update_starts_beside_old_then_switches_and_stops_it(ps, port):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    r2 = ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    assert r2.previous == 1
    assert r2.endpoints == {"mlp": f"http://127.0.0.1:{port + 100}"}
    assert ready(r2.endpoints["mlp"]) and not ready(f"http://127.0.0.1:{port}")
    assert ps.site.current().sequence == 2
    assert ps.site.release(1).record.status == "stopped"
    assert ps.engine.running() == {2}
    wants = ps.tmp / "units" / "multi-user.target.wants"
    assert [p.name for p in wants.iterdir()] == [ps.engine.unit_name(2, "mlp")]


def test_an_install_clears_what_a_killed_one_left_in_the_store(ps, port):
    """A temp blob of a killed ingest, and an image layout of a killed load (hard links
    to blobs): both go at the next install's preflight; the verified blobs stay."""
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    store = ps.site.store
    kept = store.digests()
    (store.tmp / "0123456789abcdef.partial").write_bytes(b"half a blob")
    layout = store.tmp / "oci-0123456789abcdef"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    os.link(store.path(kept[0]), layout / "blobs" / "sha256" / kept[0].split(":")[1])
    ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    assert list(store.tmp.iterdir()) == []
    assert set(kept) <= set(store.digests())
    for d in kept:
        store.verify(d)


def test_a_port_held_by_something_else_fails_the_start_and_the_old_release_serves(ps, port):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    with socket.socket() as squatter:  # another program on the new slot's port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port + 100))
        squatter.listen()
        events: list[Progress] = []
        with pytest.raises(ReleaseFailedError,
                           match=rf"port {port + 100} for service 'mlp' is in use by "
                                 rf"something else \(see: ss -ltnp"):
            ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port), events)
    assert ps.site.current().sequence == 1 and ready(f"http://127.0.0.1:{port}")
    assert ps.engine.running() == {1}
    assert [e.step for e in events if isinstance(e, StepEvent) and e.status == "failed"] == [
        "start"]


def test_a_leftover_release_in_the_new_slot_is_stopped_not_taken_for_the_new_one(ps, port):
    """An earlier update that could not stop release 1 (only a warning) leaves it on the
    port the next release gets; its health check must not be answered by release 1."""
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    old = ps.site.release(1)
    placement = Placement.from_dict(json.loads((old.path / PLACEMENT_FILE).read_bytes()))
    ps.engine.start(old.manifest(), old, placement, slot=0)  # release 1 back on `port`
    wait_for(lambda: ready(f"http://127.0.0.1:{port}"), 20, "release 1 to answer again")
    assert ps.engine.running() == {1, 2}
    events: list[Progress] = []
    r3 = ps.install(make_bundle(ps.tmp, ps.vendor, 3, port=port, scale=3.0), events)
    assert r3.endpoints == {"mlp": f"http://127.0.0.1:{port}"}
    assert any(e.message == "stopped release 1, still running in this slot" for e in events)
    assert ps.engine.running() == {3}
    assert ps.site.current().sequence == 3


def test_acceptance_mismatch_rolls_back_and_logs_the_worst_difference(ps, port):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    bad = make_bundle(ps.tmp, ps.vendor, 2, port=port, scale=2.5,
                      samples=[sample([1, 2], [2, 4]), sample([10, 0], [20, 0])])
    with pytest.raises(AcceptanceError) as e:
        ps.install(bad)
    msg = str(e.value)
    assert "release 2 failed at accept" in msg and "release 1 keeps serving" in msg
    assert "sample 1 output y[0]: got 25.0, expected 20" in msg  # the worst of the two
    assert ps.site.current().sequence == 1 and ready(f"http://127.0.0.1:{port}")
    assert ps.engine.running() == {1}
    assert ps.site.state().highest_sequence == 1
    rec = ps.site.release(2).record
    assert rec.status == "failed" and "difference 5" in rec.reason
    assert any(x["event"] == "rolled_back" and x["step"] == "accept"
               for x in ps.site.release(2).log_lines())


def test_never_ready_release_rolls_back_after_the_health_timeout(ps, port):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    with pytest.raises(ReleaseFailedError, match=r"failed at health: .*did not answer ready"):
        ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port, extra={"never_ready": True}),
                   health_timeout_s=2)
    assert ps.site.current().sequence == 1 and ready(f"http://127.0.0.1:{port}")
    assert ps.engine.running() == {1}


def test_previous_release_that_died_is_restarted_on_rollback(ps, port):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    ps.engine.stop(1)  # e.g. it crashed meanwhile
    with pytest.raises(ReleaseFailedError, match="release 1 keeps serving"):
        ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port, extra={"never_ready": True}),
                   health_timeout_s=2)
    assert ready(f"http://127.0.0.1:{port}")


def test_first_install_that_fails_says_nothing_serves(ps, port):
    with pytest.raises(ReleaseFailedError) as e:
        ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port, extra={"never_ready": True}),
                   health_timeout_s=1)
    assert not e.value.previous_serving and "nothing is serving" in str(e.value)
    assert ps.site.current() is None and ps.engine.running() == set()


def test_older_bundle_is_refused_and_same_bundle_reinstalls_without_restart(ps, port):
    b1 = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    b2 = make_bundle(ps.tmp, ps.vendor, 2, port=port)
    ps.install(b2)
    with pytest.raises(RollbackError):
        ps.install(b1)
    child = (ps.site.release(2).path / "run" / "mlp.child").read_text()
    r = ps.install(b2)  # a re-run of the serving bundle completes and keeps it running
    assert r.sequence == 2 and ps.site.current().sequence == 2
    assert (ps.site.release(2).path / "run" / "mlp.child").read_text() == child


def test_placement_that_does_not_fit_is_refused_before_anything_starts(ps, port):
    from pathlib import Path
    report = RecordedProbe.from_file(Path(__file__).parent / "gpu_states" / "two_uneven.json")
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port, gpu_mib=50000, gpu="required")
    with pytest.raises(PlacementError, match="mlp needs 50000 MiB"):
        ps.install(b, probe=report.probe())
    assert ps.site.current() is None and ps.engine.running() == set()


def test_missing_trust_root_fails_preflight_and_changes_nothing(ps, port):
    from appliance.site.plan import InstallOptions, InstallPlan
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    plan = InstallPlan(InstallOptions(bundle=b, site=ps.site, engine=ps.engine,
                                      gpu_probe=RecordedProbe(GpuReport())))
    with pytest.raises(PreflightError, match="trust root: no trust root"):
        plan.run()
    assert ps.site.releases() == [] and ps.site.store.digests() == []


def test_explicit_rollback_serves_the_earlier_release(ps, port):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    assert rollback_target(ps.site).sequence == 1  # what the TUI offers before it asks
    assert rollback(ps.site, ps.engine, health_timeout_s=20) == 1
    assert ps.site.current().sequence == 1 and ps.engine.running() == {1}
    assert ready(f"http://127.0.0.1:{port}")
    assert ps.site.state().highest_sequence == 2  # anti-rollback record unchanged
    assert json.loads((ps.site.root / "state.json").read_text())["highest_sequence"] == 2
    with pytest.raises(SiteError, match="no earlier release that has served"):
        rollback_target(ps.site)
    assert rollback_target(ps.site, 2).sequence == 2
    (ps.site.release(2).path / PLACEMENT_FILE).unlink()
    with pytest.raises(SiteError, match="release 2 never got as far as placement"):
        rollback_target(ps.site, 2)


def test_crash_looping_release_fails_fast_with_its_output(ps, port):
    import time
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    started = time.monotonic()
    with pytest.raises(ReleaseFailedError,
                       match=r"stopped before it was ready; .*model asks to crash"):
        ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port, extra={"crash": True}),
                   health_timeout_s=120)
    assert time.monotonic() - started < 60  # the crash loop, not the 120 s timeout
    assert ps.site.current().sequence == 1 and ps.engine.running() == {1}


def test_gpu_table_is_shown_in_the_placement_step(ps, port):
    from pathlib import Path
    report = RecordedProbe.from_file(Path(__file__).parent / "gpu_states" / "four_l4.json")
    events: list[Progress] = []
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port, gpu_mib=5000), events,
               probe=report.probe())
    lines = [e.message for e in events if e.step == "placement" and type(e).__name__ ==
             "Progress"]
    assert "GPU 3 NVIDIA L4: 500 of 23034 MiB free, 99% busy (driver 535.161.08, CUDA 12.2)" \
        in lines
    assert any(x.startswith("mlp: GPU 0 (NVIDIA L4, needs 5000 MiB") for x in lines)
    unit = (ps.tmp / "units" / ps.engine.unit_name(1, "mlp")).read_text()
    assert 'Environment="CUDA_VISIBLE_DEVICES=GPU-l40"' in unit


def test_partial_blob_left_by_a_killed_ingest_is_cleared(ps, port):
    tmp = ps.site.root / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "0123456789abcdef.partial").write_bytes(b"half a layer")
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    assert list(tmp.iterdir()) == []


def test_failure_at_the_switch_puts_current_back(ps, port):
    from appliance.errors import EngineError
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    real_enable = ps.engine.enable

    def enable(seq):
        if seq == 2:
            raise EngineError("systemctl enable failed: read-only /etc")
        real_enable(seq)

    ps.engine.enable = enable
    with pytest.raises(ReleaseFailedError, match=r"failed at switch: .*read-only /etc.*"
                                                 r"release 1 keeps serving"):
        ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    assert ps.site.current().sequence == 1 and ps.engine.running() == {1}
    assert ready(f"http://127.0.0.1:{port}")
    wants = ps.tmp / "units" / "multi-user.target.wants"
    assert [p.name for p in wants.iterdir()] == [ps.engine.unit_name(1, "mlp")]


def test_trust_root_rotation_in_a_bundle_is_adopted_at_the_switch(ps, port):
    from signing import PrivateKey, TrustRoot, sign_root
    from tests.site.bundlekit import resign

    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    new_key = PrivateKey.generate()
    v2 = TrustRoot.create([new_key.public_key], version=2)
    rotation = sign_root(v2, [ps.vendor.key, new_key]).decode()
    b2 = resign(make_bundle(ps.tmp, ps.vendor, 2, port=port), ps.tmp / "rot-2.tar",
                [ps.vendor.key], trust_root=rotation)
    ps.install(b2)
    assert TrustRoot.from_json(ps.site.trust_path.read_bytes()).version == 2
    assert ps.site.state().trust_root_version == 2
    # the next bundle is signed by the new key alone, and the old key no longer suffices
    b3 = resign(make_bundle(ps.tmp, ps.vendor, 3, port=port), ps.tmp / "new-3.tar", [new_key])
    old4 = resign(make_bundle(ps.tmp, ps.vendor, 4, port=port), ps.tmp / "old-4.tar",
                  [ps.vendor.key])
    from appliance.site.plan import InstallOptions, InstallPlan
    opts = {"site": ps.site, "engine": ps.engine, "health_timeout_s": 20.0,
            "gpu_probe": RecordedProbe(GpuReport())}
    assert InstallPlan(InstallOptions(bundle=b3, **opts)).run().sequence == 3
    from appliance.errors import SignatureError
    with pytest.raises(SignatureError, match="signature refused"):
        InstallPlan(InstallOptions(bundle=old4, **opts)).run()
    assert ps.site.current().sequence == 3


def test_bad_rotation_refuses_the_bundle_before_anything_starts(ps, port):
    from appliance.errors import SignatureError, TrustError
    from signing import PrivateKey, TrustRoot, sign_root
    from tests.site.bundlekit import resign

    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    new_key = PrivateKey.generate()
    skip = sign_root(TrustRoot.create([new_key.public_key], version=3),
                     [ps.vendor.key, new_key]).decode()
    b2 = resign(make_bundle(ps.tmp, ps.vendor, 2, port=port), ps.tmp / "bad-2.tar",
                [ps.vendor.key], trust_root=skip)
    # verify refuses it (and the plan checks the rotation again before anything starts)
    with pytest.raises((SignatureError, TrustError), match="only 2 is accepted"):
        ps.install(b2)
    assert ps.site.current().sequence == 1 and ps.engine.running() == {1}
    assert TrustRoot.from_json(ps.site.trust_path.read_bytes()).version == 1
