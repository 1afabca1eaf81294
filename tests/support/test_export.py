"""The support export: what it holds, redaction, size bound, signature, pulled sticks."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.errors import ExportIntegrityError, ExportWriteError
from appliance.site.layout import Site
from appliance.support.export import write_support_export
from appliance.support.verify import verify_export
from signing import PrivateKey, sign
from tests.support.kit import DAY, NOW, ONE_GPU, add_release, iso, write_runtime

# One of each kind the export must never carry, planted in the site's logs.
PEM = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPlantedPrivateKeyMaterial0123456789ab\n"
       "-----END PRIVATE KEY-----")
PLANTED = {
    "person-name": "MUSTERMANN^ERIKA^Q",
    "patient-id": "MRN: 0048151623",
    "accession": "AccessionNumber=ACC20261120",
    "bare-id": "X12345678",
    "date-of-birth": "DOB 1961-04-12",
    "bearer": "Bearer sk-planted-bearer-token-abcdef",
    "token-kv": "token=plantedtokenvalue99",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlcGxhbnRlZA",
}
SECRETS = [*PLANTED.values(), "PlantedPrivateKeyMaterial", "client tensor 0.123456789",
           "plantedheadertoken", "MUSTERMANN", "0048151623", "1961-04-12", "ACC20261120"]


def _site(tmp_path: Path, days: float = 2.0) -> Site:
    site = Site(tmp_path / "site")
    site.ensure()
    key = PrivateKey.generate()
    add_release(site, 1, status="stopped", key=key, current=False)
    add_release(site, 2, key=key)
    write_runtime(site, start=NOW - days * DAY, end=NOW, step_s=300)
    return site


def _members(path: Path) -> dict[str, bytes]:
    """Every member's bytes, read one by one (and decompressed when gzip'd)."""
    out = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            assert m.isreg(), m.name
            f = tar.extractfile(m)
            assert f is not None, m.name  # a regular member always has a file
            data = f.read()
            out[m.name.split("/", 1)[1]] = data
            if m.name.endswith(".gz"):
                out[m.name.split("/", 1)[1][:-3]] = gzip.decompress(data)
    return out


def test_export_holds_releases_install_logs_audit_runtime_history_and_facts(tmp_path):
    from appliance.site import audit
    site = _site(tmp_path)
    audit.append(site.root, "install", sequence=2)
    out = tmp_path / "stick"
    out.mkdir()
    r = write_support_export(site, out, now=NOW, gpu_probe=ONE_GPU)
    assert r.path.parent == out and r.path.name.endswith(".tar") and not r.trimmed
    v = verify_export(r.path)
    files = set(v.files)
    for need in ("releases/1/install.log", "releases/2/install.log", "releases/2/release.json",
                 "releases/2/placement.json", "audit/audit.jsonl", "audit/verify.json",
                 "site/releases.json", "runtime/svc/logs/runtime.jsonl", "system.json",
                 "gpu.json", "export.json", "redaction.json", "site-key.pub"):
        assert need in files, need
    assert any(f.startswith("runtime/svc/history/metrics-") for f in files)
    rels = v.json("site/releases.json")
    assert rels["current"] == 2 and rels["state"]["highest_sequence"] == 0
    ident = rels["releases"][1]
    assert (ident["name"], ident["version"], ident["sequence"]) == ("demo", "1.0.2", 2)
    assert ident["manifest_digest"].startswith("sha256:") and len(ident["signer_key_ids"]) == 1
    system = v.json("system.json")
    assert system["kernel"] and system["os"] and system["disks"]
    assert system["clock"]["offset_from_signing_s"] == pytest.approx(
        NOW - 1767225600.0)  # 2026-01-01, when the test bundle says it was made
    assert v.json("gpu.json")["gpus"][0]["name"] == "NVIDIA L4"
    assert v.json("audit/verify.json") == {"ok": True, "entries": 1, "error": ""}
    assert v.key_id == PrivateKey.from_pem(
        (site.root / "support" / "site.key").read_bytes()).key_id


def test_planted_secrets_and_patient_identifiers_never_reach_the_archive(tmp_path):
    site = _site(tmp_path)
    text = " ".join(PLANTED.values())
    write_runtime(site, start=NOW - 3600, end=NOW, step_s=600, service="leaky", extra_lines=[
        {"ts": iso(NOW - 60), "level": "ERROR", "logger": "runtime.app",
         "msg": f"bad study {text}"},
        {"ts": iso(NOW - 50), "level": "INFO", "logger": "runtime.access", "msg": "POST infer",
         "body": "client tensor 0.123456789", "headers": {"authorization": "plantedheadertoken"}},
        {"ts": iso(NOW - 40), "level": "ERROR", "logger": "runtime.app", "msg": "key follows",
         "exc": PEM},
    ])
    with (site.root / "runtime" / "leaky" / "logs" / "runtime.jsonl").open("a") as f:
        f.write(f"plain text line {text}\n{PEM}\n")
    site.release(2).log("note", message=f"operator pasted {text}")
    run = site.release(2).path / "run"
    run.mkdir()
    (run / "svc.log").write_text(f"Traceback: {text}\n{PEM}\n")
    os.utime(run / "svc.log", (NOW, NOW))
    out = tmp_path / "stick"
    out.mkdir()
    r = write_support_export(site, out, now=NOW, gpu_probe=ONE_GPU)
    members = _members(r.path)
    for name, data in members.items():
        for s in SECRETS:
            assert s.encode() not in data, f"{s!r} reached {name}"
    report = json.loads(members["redaction.json"])
    for kind in ("person-name", "patient-id", "date-of-birth", "token", "private-key",
                 "client-data"):
        assert report["by_kind"].get(kind, 0) >= 1, kind
    assert report["by_file"]["runtime/leaky/logs/runtime.jsonl"]["person-name"] >= 2
    assert "[REDACTED person-name]" in members["releases/2/install.log"].decode()
    assert "[REDACTED private-key]" in members["releases/2/run/svc.log"].decode()
    assert r.redactions == report["total"]


def test_max_size_trims_the_oldest_logs_first_and_says_so(tmp_path):
    site = _site(tmp_path, days=6)
    out = tmp_path / "stick"
    out.mkdir()
    whole = write_support_export(site, out, now=NOW, gpu_probe=ONE_GPU)
    limit = whole.size - 20_000
    r = write_support_export(site, out, now=NOW + 1, gpu_probe=ONE_GPU, max_bytes=limit)
    assert r.size <= limit and r.trimmed
    v = verify_export(r.path)
    meta = v.json("export.json")
    assert meta["trimmed"] == r.trimmed and "left out" in meta["trimmed_note"]
    kept = sorted(f for f in v.files if "/history/" in f)
    dropped = [t["file"] for t in r.trimmed]
    # whatever was dropped is older than everything kept
    assert max(t["modified"] for t in r.trimmed) <= min(
        iso(os.stat(site.root / "runtime/svc/history" / Path(f).name).st_mtime)
        .replace("Z", "+00:00") for f in kept)
    assert all(d.endswith(".jsonl.gz") for d in dropped)
    assert "releases/2/install.log" in v.files  # the essentials are never trimmed


def test_since_leaves_out_older_lines(tmp_path):
    site = _site(tmp_path, days=6)
    out = tmp_path / "stick"
    out.mkdir()
    v = verify_export(write_support_export(site, out, now=NOW, since_s=DAY,
                                           gpu_probe=ONE_GPU).path)
    times = [d["t"] for d in v.jsonl("runtime/svc/history/")]
    assert times and min(times) >= NOW - DAY


def test_a_failing_write_leaves_nothing_that_looks_whole(tmp_path):
    site = _site(tmp_path)
    out = tmp_path / "stick"
    out.mkdir()

    class PulledStick(io.FileIO):
        """The stick goes away after 20 kB."""

        written = 0

        def write(self, b):
            self.written += len(b)
            if self.written > 20_000:
                raise OSError(errno.EIO, "Input/output error")
            return super().write(b)

    with pytest.raises(ExportWriteError, match="cannot write the export"):
        write_support_export(site, out, now=NOW, gpu_probe=ONE_GPU,
                             opener=lambda p: PulledStick(p, "xb"))
    assert list(out.iterdir()) == []


@pytest.fixture
def tiny_stick(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)],
                       capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_stick_leaves_nothing_and_says_so_in_one_line(tmp_path, tiny_stick, capsys):
    site = _site(tmp_path)
    rc = main(["support", "export", "--to", str(tiny_stick), "--root", str(site.root),
               "--gpu-state", str(Path(__file__).parents[1] / "site/gpu_states/none.json")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: cannot write the export") and "space" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tiny_stick.iterdir()) == []


def test_a_cut_edited_or_resigned_export_fails_verification(tmp_path):
    site = _site(tmp_path)
    out = tmp_path / "stick"
    out.mkdir()
    good = write_support_export(site, out, now=NOW, gpu_probe=ONE_GPU).path
    key_id = verify_export(good).key_id
    data = good.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])  # a stick pulled while copying
    with pytest.raises(ExportIntegrityError, match="not a whole, untouched"):
        verify_export(cut)
    members = _raw_members(good)
    edited = dict(members)
    name = next(n for n in members if n.endswith("system.json"))
    edited[name] = members[name].replace(b'"hostname"', b'"hostnamX"')
    with pytest.raises(ExportIntegrityError, match="changed after signing"):
        verify_export(_write(tmp_path / "edited.tar", edited))
    # re-signed with another key: whole, but not from this site
    forged = dict(edited)
    top = name.split("/")[0]
    other = PrivateKey.generate()
    sums = "".join(f"{__import__('hashlib').sha256(d).hexdigest()}  {n.split('/', 1)[1]}\n"
                   for n, d in forged.items() if not n.split("/", 1)[1].startswith("SHA256SUMS")
                   and not n.endswith("site-key.pub")) + \
        f"{__import__('hashlib').sha256(other.public_key.to_pem()).hexdigest()}  site-key.pub\n"
    forged[f"{top}/site-key.pub"] = other.public_key.to_pem()
    forged[f"{top}/SHA256SUMS"] = sums.encode()
    forged[f"{top}/SHA256SUMS.dsse.json"] = sign(
        sums.encode(), "application/vnd.appliance.support-sums.v1+text", [other]).to_json()
    path = _write(tmp_path / "forged.tar", forged)
    assert verify_export(path).key_id == other.key_id
    with pytest.raises(ExportIntegrityError, match="not the expected"):
        verify_export(path, expect_key_id=key_id)


def _raw_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:") as tar:
        out = {}
        for m in tar:
            f = tar.extractfile(m)
            assert f is not None, f"{m.name} is not a regular file"
            out[m.name] = f.read()
        return out


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def test_logs_export_is_the_site_export_with_root(tmp_path, capsys):
    site = _site(tmp_path)
    out = tmp_path / "stick"
    out.mkdir()
    gpu = str(Path(__file__).parents[1] / "site/gpu_states/none.json")
    assert main(["logs", "export", "--to", str(out), "--root", str(site.root),
                 "--gpu-state", gpu]) == 0
    printed = capsys.readouterr().out.splitlines()
    path = Path(printed[0])
    assert path.parent == out and "files" in printed[1]
    v = verify_export(path)
    assert "releases/2/install.log" in v.files
    # the current release's engine was asked for its version
    assert v.json("system.json")["engine"]["version"].startswith("process supervisor")
    assert main(["support", "verify", str(path), "--key-id", v.key_id]) == 0
    assert f"signed by site key {v.key_id}" in capsys.readouterr().out
    assert main(["support", "verify", str(path), "--key-id", "0" * 64]) == 1
    assert "not the expected" in capsys.readouterr().err
    # a root that is no site is an error, not an empty export
    assert main(["logs", "export", "--to", str(out), "--root", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no site at") and "--root" in err
    assert len(list(out.iterdir())) == 1
