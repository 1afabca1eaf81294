"""The vendor's report: each analyzer on an export made to trigger it, the fleet table,
one self-contained file, and what headless Chromium draws of it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from appliance.cli import main
from appliance.site import audit
from appliance.site.layout import Site
from appliance.support.analyzers import SiteData, analyze
from appliance.support.export import write_support_export
from appliance.support.verify import verify_export
from signing import PrivateKey
from tests.support.kit import DAY, NO_GPU, NOW, ONE_GPU, FixedProbe, add_release, write_runtime

SNAPSHOT = Path(__file__).parent / "__snapshots__" / "report_thumbnail.json"


def _export(tmp_path: Path, site: Site, probe: FixedProbe = NO_GPU, **kw) -> Path:
    out = tmp_path / "stick"
    out.mkdir(exist_ok=True)
    return write_support_export(site, out, now=NOW, gpu_probe=probe, **kw).path


def _site(tmp_path: Path, name: str = "site", **release) -> Site:
    site = Site(tmp_path / name)
    site.ensure()
    add_release(site, 1, key=PrivateKey.generate(), **release)
    write_runtime(site, start=NOW - DAY, end=NOW, step_s=600)
    return site


def _codes(path: Path) -> set[str]:
    return {f.code for f in analyze(SiteData.from_export(verify_export(path)))}


def _gpu_on_cpu(tmp_path):
    return _export(tmp_path, _site(tmp_path, cpu=True), ONE_GPU)


def _crash_loop(tmp_path):
    site = _site(tmp_path)
    write_runtime(site, start=NOW - DAY, end=NOW, step_s=600,
                  starts=[NOW - DAY, NOW - 900, NOW - 700, NOW - 500, NOW - 300])
    return _export(tmp_path, site)


def _clock_skew(tmp_path):
    # the serving bundle says it was made months after the site clock's "now"
    return _export(tmp_path, _site(tmp_path, created="2027-06-01T00:00:00Z",
                                   expires="2028-06-01T00:00:00Z"))


def _cert_expiry(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    site = _site(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "appliance.hospital.local")])
    start = datetime.fromtimestamp(NOW, UTC) - timedelta(days=355)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(start)
            .not_valid_after(start + timedelta(days=365)).sign(key, hashes.SHA256()))
    (site.root / "tls").mkdir()
    (site.root / "tls" / "site.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (site.root / "tls" / "site.key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path = _export(tmp_path, site)
    assert b"BEGIN EC PRIVATE" not in path.read_bytes() and b"PRIVATE KEY" not in \
        b"".join(v for k, v in verify_export(path).files.items() if "tls" in k)
    return path


def _refusals(tmp_path):
    site = _site(tmp_path)
    for reason in ("tampered", "tampered", "wrong key"):
        audit.append(site.root, "refused", reason=reason, bundle="update.tar", sequence=2)
    return _export(tmp_path, site)


def _expired_accepted(tmp_path):
    site = _site(tmp_path)
    audit.append(site.root, "allow_expired", sequence=1, version="1.0.1",
                 expired="2026-01-01T00:00:00Z")
    return _export(tmp_path, site)


def _audit_edited(tmp_path):
    site = _site(tmp_path)
    audit.append(site.root, "install", sequence=1)
    p = audit.audit_path(site.root)
    p.write_text(p.read_text().replace('"sequence": 1', '"sequence": 5'))
    return _export(tmp_path, site)


def _trimmed(tmp_path):
    site = _site(tmp_path)
    write_runtime(site, start=NOW - 5 * DAY, end=NOW, step_s=60)
    return _export(tmp_path, site, max_bytes=120_000)


CASES: dict[str, Callable[[Path], Path]] = {
    "gpu-on-cpu": _gpu_on_cpu, "crash-loop": _crash_loop, "clock-skew": _clock_skew,
    "cert-expiry": _cert_expiry, "refusals": _refusals, "expired-accepted": _expired_accepted,
    "audit-broken": _audit_edited, "trimmed": _trimmed,
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_analyzer_finds_what_its_export_was_made_to_show(tmp_path, code):
    assert code in _codes(CASES[code](tmp_path))


def test_a_healthy_site_has_no_findings(tmp_path):
    codes = _codes(_export(tmp_path, _site(tmp_path), NO_GPU)) - {"disk-full"}  # a real disk
    assert codes == set()


@pytest.fixture
def tiny_root(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_nearly_full_is_found(tmp_path, tiny_root):
    site = Site(tiny_root / "site")
    site.ensure()
    add_release(site, 1)
    with open(tiny_root / "filler", "wb") as f:  # the site's disk at about 95 %
        f.write(b"\0" * int(3.8 * 1024**2))
    path = _export(tmp_path, site)
    found = [f for f in analyze(SiteData.from_export(verify_export(path)))
             if f.code == "disk-full"]
    assert found and str(tiny_root) in found[0].title and "Free space" in found[0].action


def _two_site_report(tmp_path) -> tuple[Path, str]:
    a = _gpu_on_cpu(tmp_path / "a")
    b = _crash_loop(tmp_path / "b")
    out = tmp_path / "report.html"
    assert main(["support", "report", str(a), str(b), "-o", str(out)]) == 0
    return out, out.read_text()


def test_the_report_is_one_self_contained_file_with_a_fleet_table_first(tmp_path):
    _, text = _two_site_report(tmp_path)
    assert text.index("<h2>Fleet</h2>") < text.index("<h3>Findings</h3>")
    fleet = text[text.index("<h2>Fleet</h2>"):text.index("</table>")]
    assert fleet.count("<tr class=") == 2 and "critical" in fleet
    assert text.count("<svg") >= 2 and "GPU server serving on the CPU" in text
    assert "Runtime crash loop" in text and "what to do" in text
    for external in ("<script", "<link", "@import", "@font-face"):
        assert external not in text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", text)


def test_a_damaged_export_is_refused_in_one_line(tmp_path, capsys):
    path = _gpu_on_cpu(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    assert main(["support", "report", str(path), "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a whole, untouched" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.html").exists()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("headless Chromium is not installed (Debian package `chromium`; "
                ".ci/setup-system installs it)")


def _thumbnail(png: Path) -> list[int]:
    """How much ink each cell of a 24 x 40 grid holds (0 blank .. 255 solid): the page's
    layout, blind to anti-aliasing and font differences."""
    from PIL import Image
    with Image.open(png) as im:
        ink = im.convert("L").point(lambda v: 255 if v < 200 else 0)
        return list(ink.resize((24, 40), Image.Resampling.BOX).tobytes())


def test_chromium_draws_the_report_offline_with_its_plots(tmp_path):
    browser = _chromium()
    from PIL import Image
    out, _ = _two_site_report(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1200,2400", f"--screenshot={shot}", out.as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"],
                                                  check=False).returncode == 0:
        cmd = ["unshare", "-n", *cmd]  # no network at all: the file must need none
    r = subprocess.run(cmd, capture_output=True, timeout=120, check=False,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and shot.is_file(), r.stderr.decode()[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        # an RGB image counts (r, g, b) tuples; a float pixel belongs to mode "F" only
        colours = cast(list[tuple[int, tuple[int, ...]]], rgb.getcolors(maxcolors=1 << 20) or [])
        plot_blue = sum(n for n, (r_, g, b) in colours
                        if abs(r_ - 31) < 25 and abs(g - 119) < 25 and abs(b - 180) < 25)
    assert len(colours) > 200, "the page looks blank"
    assert plot_blue > 2000, "no plot lines drawn"  # matplotlib's first colour, #1f77b4
    thumb = _thumbnail(shot)
    if not SNAPSHOT.exists():
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(thumb) + "\n")
    held = json.loads(SNAPSHOT.read_text())
    diff = sum(abs(a - b) for a, b in zip(held, thumb, strict=True)) / len(thumb)
    # tolerant: fonts, the time it was made and the host name differ between machines
    assert diff < 8, f"the report looks different from its snapshot (mean diff {diff:.1f})"
