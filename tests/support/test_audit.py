"""The audit trail: hash chain, its check, the command, and what installs write to it."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from appliance.cli import main
from appliance.errors import (
    ApplianceError,
    AuditChainError,
    EngineError,
    PreflightError,
    TruncatedBundleError,
)
from appliance.site import audit
from appliance.site.auditing import refusal_reason
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.plan import InstallOptions, InstallPlan
from appliance.site.rollback import rollback
from signing import PrivateKey
from tests.bundle.kit import flip_bit
from tests.site.bundlekit import make_bundle, resign, vendor
from tests.site.installkit import process_site
from tests.site.releasekit import free_port_pair


def _trail(tmp_path, n=3):
    for i in range(n):
        audit.append(tmp_path, "install", sequence=i + 1, user="alice",
                     now=datetime(2026, 1, 1 + i, tzinfo=UTC))
    return audit.audit_path(tmp_path)


def test_chain_verifies_and_an_edited_line_is_named(tmp_path):
    path = _trail(tmp_path)
    entries = audit.verify(tmp_path)
    assert [e.fields["sequence"] for e in entries] == [1, 2, 3]
    assert entries[0].user == "alice" and entries[0].time.startswith("2026-01-01")
    lines = path.read_text().splitlines()
    doc = json.loads(lines[1])
    doc["sequence"] = 7  # someone hides which release was installed
    lines[1] = json.dumps(doc, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditChainError, match="line 2 was edited"):
        audit.verify(tmp_path)


def test_removed_inserted_and_cut_off_lines_are_caught(tmp_path):
    path = _trail(tmp_path, 4)
    good = path.read_text().splitlines()
    path.write_text("\n".join(good[:1] + good[2:]) + "\n")  # line 2 removed
    with pytest.raises(AuditChainError, match="line 2 does not follow"):
        audit.verify(tmp_path)
    path.write_text("\n".join(good[:3]) + "\n")  # the last line cut off: the head knows
    with pytest.raises(AuditChainError, match="records line 4"):
        audit.verify(tmp_path)
    path.write_text("\n".join(good) + "\n")
    assert len(audit.verify(tmp_path)) == 4


def test_appends_from_two_writers_keep_one_chain(tmp_path):
    import threading
    threads = [threading.Thread(target=lambda i=i: [audit.append(tmp_path, "trust", i=i, j=j)
                                                    for j in range(10)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(audit.verify(tmp_path)) == 40


def test_audit_command_shows_the_trail_and_fails_on_an_edit(tmp_path, capsys):
    path = _trail(tmp_path)
    assert main(["audit", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.count("install") == 3 and "hash chain intact" in out.err
    assert main(["audit", "--root", str(tmp_path), "--json"]) == 0
    assert [json.loads(x)["sequence"] for x in capsys.readouterr().out.splitlines()] == [1, 2, 3]
    path.write_text(path.read_text().replace('"sequence": 3', '"sequence": 9'))
    assert main(["audit", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 3" in err and len(err.splitlines()) == 1


@pytest.fixture
def ps(tmp_path):
    s = process_site(tmp_path, vendor(tmp_path))
    yield s
    s.stop_all()


def test_installs_refusals_trust_and_rollback_are_audited_with_reasons(ps):
    port = free_port_pair()
    b1 = make_bundle(ps.tmp, ps.vendor, 1, port=port)
    ps.install(b1)
    ps.install(make_bundle(ps.tmp, ps.vendor, 2, port=port))
    opts = {"site": ps.site, "engine": ps.engine, "health_timeout_s": 20.0,
            "gpu_probe": RecordedProbe(GpuReport())}

    def refused(bundle, **kw):
        with pytest.raises(ApplianceError):
            InstallPlan(InstallOptions(bundle=bundle, **opts, **kw)).run()

    refused(b1)  # older
    tampered = ps.tmp / "tampered-3.tar"
    shutil.copy(make_bundle(ps.tmp, ps.vendor, 3, port=port), tampered)
    flip_bit(tampered, tampered.stat().st_size - 4096)  # inside the last blob
    refused(tampered)
    refused(resign(make_bundle(ps.tmp, ps.vendor, 4, port=port), ps.tmp / "wrong-4.tar",
                   [PrivateKey.generate()]))
    expired = make_bundle(ps.tmp, ps.vendor, 5, port=port)  # valid 365 days from now
    later = datetime.now(UTC) + timedelta(days=380)  # 15 days past expiry
    refused(expired, now=lambda: later)
    InstallPlan(InstallOptions(bundle=expired, allow_expired=True, now=lambda: later,
                               **opts)).run()
    rollback(ps.site, ps.engine, 2, health_timeout_s=20.0)

    entries = audit.verify(ps.site.root)
    got = [(e.event, e.fields.get("reason"), e.fields.get("sequence")) for e in entries]
    assert got == [
        ("trust", None, None), ("install", None, 1), ("update", None, 2),
        # a bundle whose signature is refused is not parsed, so no (unsigned) sequence
        ("refused", "older", 1), ("refused", "tampered", 3), ("refused", "wrong key", None),
        ("refused", "expired", 5), ("allow_expired", None, 5), ("update", None, 5),
        ("rollback", None, 2)]
    assert all(e.user and e.time for e in entries)
    assert entries[1].fields["manifest_digest"].startswith("sha256:")
    assert entries[1].fields["signers"] == [ps.vendor.key.key_id[:16]]
    # the first install made the key that will sign this site's support exports
    assert (ps.site.root / "support" / "site.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("error", "failed", "reason"), [
    (PreflightError("preflight failed: disk: needs 4 GiB"), ["disk"], "not enough space"),
    (PreflightError("preflight failed: clock: the bundle expired"), ["clock"], "expired"),
    (PreflightError("preflight failed: trust root: no trust root"), ["trust root"],
     "trust root"),
    (TruncatedBundleError("cut short"), [], "damaged (cut short)"),
    (PreflightError("preflight failed: engine: does not answer"), ["engine"], None),
    (EngineError("podman load failed"), [], None),
])
def test_refusal_reasons_are_the_auditors_words(error, failed, reason):
    assert refusal_reason(error, failed) == reason
