"""The install under failures nobody planned for and under a hostile site or bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.errors import (
    EXIT_BUNDLE,
    EXIT_ENGINE,
    EXIT_PLACEMENT,
    EXIT_PREFLIGHT,
    EXIT_ROLLED_BACK,
    ApplianceError,
    ManifestError,
    PreflightError,
    SignatureError,
)
from appliance.site.audit import verify as audit_entries
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.plan import STEPS, InstallOptions, InstallPlan
from signing import PrivateKey, TrustRoot
from tests.site.bundlekit import make_bundle, resign, sample
from tests.site.installkit import ready


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under `root` with its bytes (files) or link target; the audit trail aside."""
    out: dict[str, bytes | str] = {}
    if not root.exists():
        return out
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel.startswith("audit"):
                continue
            out[rel] = os.readlink(p) if p.is_symlink() else (
                p.read_bytes() if p.is_file() else "dir")
    return out


# Exit code when the step fails with an exception it did not foresee (docs/field-guide.md).
EXPECTED_EXIT = {"preflight": EXIT_PREFLIGHT, "verify": EXIT_BUNDLE,
                 "placement": EXIT_PLACEMENT, "load": EXIT_ENGINE, "start": EXIT_ROLLED_BACK,
                 "health": EXIT_ROLLED_BACK, "accept": EXIT_ROLLED_BACK,
                 "switch": EXIT_ROLLED_BACK, "stop_old": 0}


@pytest.mark.parametrize("step", [s.name for s in STEPS])
def test_an_unexpected_exception_in_any_step_ends_with_its_exit_code_and_a_consistent_site(
        ps, port, step, monkeypatch):
    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    b2 = make_bundle(ps.tmp, ps.vendor, 2, port=port, samples=[sample([1, 2], [2, 4])])
    real = getattr(InstallPlan, f"_step_{step}")

    def broken(self: InstallPlan) -> None:
        real(self)  # the step did its work (started containers, switched) and then broke
        raise TypeError("'NoneType' object is not subscriptable (injected)")

    monkeypatch.setattr(InstallPlan, f"_step_{step}", broken)
    if step == "stop_old":  # the new release serves: a warning, not a failure
        events: list = []
        assert ps.install(b2, events).sequence == 2
        assert any("failed unexpectedly" in e.message for e in events)
        assert ps.site.current().sequence == 2 and ps.engine.running() == {2}
        return
    with pytest.raises(ApplianceError) as info:
        ps.install(b2)
    err = info.value
    assert err.exit_code == EXPECTED_EXIT[step], str(err)
    assert "failed unexpectedly (TypeError: 'NoneType'" in str(err) and "\n" not in str(err)
    # what it started is stopped; the old release serves; state and status agree
    assert ps.site.current().sequence == 1 and ps.engine.running() == {1}
    assert ready(f"http://127.0.0.1:{port}")
    # the anti-rollback record never goes back, so a switch that broke after it wrote it
    # leaves it at 2, as an explicit rollback would
    assert ps.site.state().highest_sequence == (2 if step == "switch" else 1)
    assert ps.site.current().record.status == "serving"
    if 2 in [r.sequence for r in ps.site.releases()]:
        assert ps.site.release(2).record.status in ("staged", "loaded", "failed")
    last = audit_entries(ps.site.root)[-1]
    assert last.event in ("install_failed", "refused") and last.fields["step"] == step


def test_a_first_install_whose_samples_crash_the_check_leaves_nothing_running(
        ps, port, monkeypatch):

    def crash(*_a, **_k):
        raise TypeError("string indices must be integers, not 'str'")

    b = make_bundle(ps.tmp, ps.vendor, 1, port=port, samples=[sample([1, 2], [2, 4])])
    monkeypatch.setattr("appliance.site.plan.check_samples", crash)
    with pytest.raises(ApplianceError) as info:
        ps.install(b)
    assert info.value.exit_code == 8 and "nothing is serving" in str(info.value)
    assert ps.engine.running() == set() and ps.site.current() is None
    assert ps.site.release(1).record.status == "failed"


def test_a_retired_trust_root_is_refused_after_a_rotation(ps, port):
    from signing import sign_root

    ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    new_key = PrivateKey.generate()
    v2 = TrustRoot.create([new_key.public_key], version=2)
    b2 = resign(make_bundle(ps.tmp, ps.vendor, 2, port=port), ps.tmp / "rot-2.tar",
                [ps.vendor.key], trust_root=sign_root(v2, [ps.vendor.key, new_key]).decode())
    ps.install(b2)
    assert ps.site.state().trust_root_version == 2
    # the attacker deletes root.json and brings the retired v1 root and its leaked key
    ps.site.trust_path.unlink()
    old3 = resign(make_bundle(ps.tmp, ps.vendor, 3, port=port), ps.tmp / "old-3.tar",
                  [ps.vendor.key])
    with pytest.raises(PreflightError, match="root version 1, older than version 2 this site "
                                             "already accepted"):
        ps.install(old3)  # --trust root-v1.json
    assert ps.site.current().sequence == 2 and ps.site.state().highest_sequence == 2


def test_a_symlink_at_the_store_temp_dir_is_refused_and_its_target_kept(ps, port, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.db").write_bytes(b"patient records")
    (ps.site.root / "blobs").mkdir(parents=True)
    (ps.site.root / "blobs" / "tmp").symlink_to(victim)
    with pytest.raises(PreflightError, match=r"blobs/tmp is a symbolic link to .*victim.*; "
                                             "remove the link"):
        ps.install(make_bundle(ps.tmp, ps.vendor, 1, port=port))
    assert (victim / "precious.db").read_bytes() == b"patient records"


def test_a_preflight_that_refuses_changes_nothing_on_a_fresh_or_installed_site(ps, port):
    b1 = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    plan = InstallPlan(InstallOptions(bundle=b1, site=ps.site, engine=ps.engine,
                                      gpu_probe=RecordedProbe(GpuReport())))  # no trust root
    with pytest.raises(PreflightError):
        plan.run()
    assert not (ps.site.root / "releases").exists() and not (ps.site.root / "logs").exists()
    assert not (ps.site.root / "blobs").exists()
    ps.install(b1)
    before = tree(ps.site.root)
    from datetime import UTC, datetime
    b2 = make_bundle(ps.tmp, ps.vendor, 2, port=port)
    with pytest.raises(PreflightError, match="clock"):  # expired by the site clock
        InstallPlan(InstallOptions(bundle=b2, site=ps.site, engine=ps.engine,
                                   gpu_probe=RecordedProbe(GpuReport()),
                                   now=lambda: datetime(2099, 1, 1, tzinfo=UTC))).run()
    assert tree(ps.site.root) == before


def _with_front(bundle: Path, out: Path, manifest: bytes, keys: list[PrivateKey]) -> Path:
    """`bundle` with its first two members replaced by `manifest` and an envelope by `keys`."""
    import tarfile

    from appliance.bundle.manifest import ENVELOPE_PATH, MANIFEST_PATH, PAYLOAD_TYPE
    from appliance.bundle.tarfmt import END_OF_ARCHIVE, file_header, padding
    from signing import sign

    env = sign(manifest, PAYLOAD_TYPE, keys).to_json()
    with tarfile.open(bundle, "r:") as src, open(out, "wb") as dst:
        for name, payload in ((MANIFEST_PATH, manifest), (ENVELOPE_PATH, env)):
            dst.write(file_header(name, len(payload)) + payload + b"\0" * padding(len(payload)))
        for m in src.getmembers()[2:]:
            payload = src.extractfile(m).read()  # type: ignore[union-attr]
            dst.write(file_header(m.name, m.size) + payload + b"\0" * padding(m.size))
        dst.write(END_OF_ARCHIVE)
    return out


DEEP = b'{"schema": ' + b"[" * 50000 + b"]" * 50000 + b"}"


def test_preflight_checks_the_signature_before_it_parses_the_manifest(ps, port):
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    stranger = _with_front(b, ps.tmp / "stranger.tar", DEEP, [PrivateKey.generate()])
    with pytest.raises(SignatureError, match="bundle signature refused"):
        ps.install(stranger)  # the unsigned, deeply nested manifest is never parsed
    assert ps.site.releases() == []


def test_a_deeply_nested_signed_manifest_is_refused_in_one_line(ps, port, capsys):
    from appliance.cli import main
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    deep = _with_front(b, ps.tmp / "deep.tar", DEEP, [ps.vendor.key])
    with pytest.raises(ManifestError, match="nested 50001 levels deep, over the limit of 32"):
        ps.install(deep)
    for argv in (["bundle", "inspect", str(deep)],
                 ["bundle", "verify", str(deep), "--trust", str(ps.vendor.root_path)],
                 ["install", str(deep), "--yes", "--trust", str(ps.vendor.root_path),
                  *ps.cli_args()]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0 and "nested 50001 levels deep" in err, argv
        assert "Traceback" not in err and err.count("\n") == 1, err


def test_a_deeply_nested_envelope_is_refused_in_one_line(ps, port):
    import tarfile

    from appliance.bundle import read_manifest_unverified
    from appliance.bundle.manifest import ENVELOPE_PATH, MANIFEST_PATH
    from appliance.bundle.tarfmt import END_OF_ARCHIVE, file_header, padding
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    out = ps.tmp / "deep-env.tar"
    env = b'{"payloadType": ' + b"[" * 40000 + b"]" * 40000 + b"}"
    with tarfile.open(b, "r:") as src, open(out, "wb") as dst:
        manifest = src.extractfile(src.getmembers()[0]).read()  # type: ignore[union-attr]
        for name, payload in ((MANIFEST_PATH, manifest), (ENVELOPE_PATH, env)):
            dst.write(file_header(name, len(payload)) + payload + b"\0" * padding(len(payload)))
        dst.write(END_OF_ARCHIVE)
    with pytest.raises(SignatureError, match="nested 40001 levels deep"):
        read_manifest_unverified(out)
    with pytest.raises(SignatureError, match="nested 40001 levels deep"):
        ps.install(out)


def test_allow_expired_is_bounded_and_recorded_in_the_audit_trail(ps, port):
    from datetime import UTC, datetime, timedelta

    from appliance.bundle.manifest import format_time
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    b = make_bundle(ps.tmp, ps.vendor, 1, port=port, expires=format_time(expires))
    base = {"bundle": b, "site": ps.site, "engine": ps.engine, "trust": ps.vendor.root_path,
            "gpu_probe": RecordedProbe(GpuReport()), "health_timeout_s": 20.0,
            "allow_expired": True}
    late = expires + timedelta(days=59, hours=1)
    with pytest.raises(PreflightError, match="expired 59 days ago"):
        InstallPlan(InstallOptions(**base, now=lambda: late)).run()
    assert ps.site.releases() == []
    InstallPlan(InstallOptions(**base, now=lambda: late, max_expired=timedelta(days=60))).run()
    use = [e.fields for e in audit_entries(ps.site.root) if e.event == "allow_expired"]
    assert len(use) == 1 and use[0]["max_days"] == 60 and use[0]["days_past_expiry"] == 59.0
    assert json.loads((ps.site.root / "state.json").read_text())["highest_sequence"] == 1
