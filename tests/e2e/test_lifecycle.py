"""The product the way a site uses it, on real engines: podman's socket and dockerd 20.10.

One story per engine, in order: install from the stick, serve both models, a delta update,
a broken update that rolls back while the old release keeps answering, refusals (older,
tampered), log export onto the stick, and a runtime that needs no network at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.engines.docker import DockerEngine
from appliance.site.layout import Site as SiteDir
from installer_tui.figures import export_logs
from tests.e2e.kit import (
    MLP_SIZES,
    REPO,
    TORCH_SIZES,
    Release,
    Site,
    Vendor,
    assert_serves,
    check_sha256_list,
    cli_env,
    expected,
    flip_byte_in_largest_blob,
    infer,
    member_names,
    remove_vendor_images,
    sample_input,
    to_stick,
    vendor_images,
)
from tests.enginekit import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_delta_carries_only_the_changed_model(bundles: dict[int, Release]) -> None:
    full, delta = bundles[1], bundles[2]
    blobs_full = {n for n in member_names(full.path) if n.startswith("blobs/")}
    blobs_delta = {n for n in member_names(delta.path) if n.startswith("blobs/")}
    weights = {m.name: m.weights_digest for m in delta.manifest.models}
    old_weights = {m.name: m.weights_digest for m in full.manifest.models}
    assert weights["tmlp"] == old_weights["tmlp"] and weights["mlp"] != old_weights["mlp"]
    # only the new MLP layer and the image config/manifest that name it; no runtime layer,
    # not the unchanged torch model
    assert f"blobs/sha256/{weights['mlp'].removeprefix('sha256:')}" in blobs_delta
    assert f"blobs/sha256/{weights['tmlp'].removeprefix('sha256:')}" not in blobs_delta
    runtime_layers = set(full.manifest.image("mlp").layers[:-1])
    assert not {f"blobs/sha256/{d.removeprefix('sha256:')}" for d in runtime_layers} & blobs_delta
    assert not blobs_delta & blobs_full  # nothing the base already brought travels again
    assert len(blobs_delta) <= 5, sorted(blobs_delta)  # layer + 2 configs + 2 image manifests
    assert delta.path.stat().st_size < 2 * 1024 * 1024 < full.path.stat().st_size
    assert delta.manifest.base is not None and delta.manifest.base.sequence == 1


def test_lifecycle(tmp_path: Path, engine_url: str, vendor: Vendor,
                   bundles: dict[int, Release]) -> None:
    stick = tmp_path / "usb"
    site = Site(tmp_path / "site", engine_url, vendor)
    engine = DockerEngine(SiteDir(site.root), base_url=engine_url)
    try:
        _story(site, engine, stick, bundles)
    finally:
        for rel in SiteDir(site.root).releases():
            engine.stop(rel.sequence)
        remove_vendor_images(engine, vendor.name)
        engine.close()
        for d in (stick, site.root):  # copies of GB-sized bundles and the site's store
            shutil.rmtree(d, ignore_errors=True)


def _story(site: Site, engine: DockerEngine, stick: Path, bundles: dict[int, Release]) -> None:
    # 1-2: the full bundle from the stick, headless
    r = site.install(to_stick(bundles[1].path, stick))
    assert r.returncode == 0, r.stderr + r.stdout
    status = site.status()
    assert status["current"] == 1 and all(status["ready"].values()), status
    # 3: both models answer what they compute in-process
    assert_serves(status["endpoints"], bundles[1])
    # 8: the same image serves with no network at all; nothing gets out
    _assert_runs_offline(engine, bundles[1])

    # 4: a delta that changes the MLP only
    r = site.install(to_stick(bundles[2].path, stick))
    assert r.returncode == 0, r.stderr + r.stdout
    status = site.status()
    assert status["current"] == 2 and all(status["ready"].values()), status
    assert_serves(status["endpoints"], bundles[2])
    x = sample_input(MLP_SIZES[0])
    assert not np.allclose(expected(bundles[1], "mlp", x), expected(bundles[2], "mlp", x))

    # 5: a broken update rolls back; release 2 answers all along
    answered = _install_while_polling(site, to_stick(bundles[3].path, stick), bundles[2],
                                      status["endpoints"])
    assert answered >= 3, "the old release was not polled during the install"
    status = site.status()
    assert status["current"] == 2 and all(status["ready"].values()), status
    rec = SiteDir(site.root).release(3).record
    assert rec.status == "failed" and "mlp" in rec.reason, rec
    log = SiteDir(site.root).release(3).log_lines()
    rolled = [x for x in log if x.get("event") == "rolled_back"]
    assert rolled and rolled[0]["step"] == "health", log[-5:]
    assert any(x.get("status") == "failed" and x.get("step") == "health" for x in log)

    # 6: an older bundle is refused (anti-rollback) ...
    r = site.install(stick / bundles[1].path.name)
    assert r.returncode == 4, r.stderr
    assert "sequence" in r.stderr and "1" in r.stderr, r.stderr
    # ... and a tampered one before any image reaches the engine
    before = vendor_images(engine, site.vendor.name)
    tampered = to_stick(bundles[4].path, stick)
    flip_byte_in_largest_blob(tampered)
    r = site.install(tampered, "--json")
    assert r.returncode == 4, r.stderr
    assert "sha256" in r.stderr or "digest" in r.stderr, r.stderr
    steps = {json.loads(line)["step"] for line in r.stdout.splitlines() if line.startswith("{")}
    assert "verify" in steps and "load" not in steps, steps
    assert vendor_images(engine, site.vendor.name) == before
    ids = {img.config_digest for img in bundles[4].manifest.images}
    assert not ids & {i for i, _ in before}
    assert site.status()["current"] == 2

    # 7: log export of every service onto the stick (the installer's export), and each
    # archive's sha256 list holds
    archives = [export_logs(url, stick, prefix=f"{svc}-")
                for svc, url in sorted(status["endpoints"].items())]
    assert [a.parent for a in archives] == [stick, stick]
    assert sorted(p.name for p in stick.glob("*.tar.gz")) == sorted(a.name for a in archives)
    for archive in archives:
        listed = check_sha256_list(archive)
        assert "system.json" in listed and "release.json" in listed
        assert any(n.startswith("logs/") for n in listed), listed


def _install_while_polling(site: Site, bundle: Path, serving: Release,
                           endpoints: dict[str, str]) -> int:
    """Install `bundle` (it must fail and roll back) while the serving release is polled."""
    proc = subprocess.Popen(site.install_cmd(bundle), env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    answered = 0
    try:
        while True:
            for model, width in (("mlp", MLP_SIZES[0]), ("tmlp", TORCH_SIZES[0])):
                x = sample_input(width, rows=1)
                np.testing.assert_allclose(infer(endpoints[model], model, x),
                                           expected(serving, model, x), rtol=1e-4, atol=1e-5)
            answered += 1
            try:
                proc.wait(timeout=0.25)  # pace the polling on the installer's exit
                break
            except subprocess.TimeoutExpired:
                continue
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 7, f"exit {proc.returncode}: {err}{out}"
    assert "keeps serving" in err and "release 2" in err, err
    return answered




def _assert_runs_offline(engine: DockerEngine, rel: Release) -> None:
    """Run the release's MLP image with no network (loopback only): it loads, answers
    tritonclient from inside its namespace, and a connect to the outside fails."""
    if shutil.which("nsenter") is None:
        pytest.fail("nsenter (util-linux) is needed to reach a container with no network")
    ref = rel.manifest.image("mlp").reference
    c: Any = engine.client.containers.run(ref, detach=True, network_mode="none",
                                          name=f"{engine.tag}-offline-{rel.sequence}")
    try:
        pid = wait_for(lambda: c.reload() or c.attrs["State"]["Pid"], 60, "the container's pid")
        out = subprocess.run(
            ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-m",
             "tests.offline_client", "127.0.0.1:8000", str(rel.mlp_seed)],
            env=cli_env(), capture_output=True, text=True, timeout=180, check=False, cwd=REPO)
        assert out.returncode == 0 and "offline-ok" in out.stdout, out.stderr[-2000:]
        rc, text = c.exec_run(["python", "-c", "import socket; socket.create_connection("
                                               "('1.1.1.1', 80), timeout=3)"])
        assert rc != 0 and b"unreachable" in text.lower(), text
        rc, text = c.exec_run(["python", "-c", "import socket; print(socket.if_nameindex())"])
        assert rc == 0 and b"'lo'" in text and b"eth" not in text, text
    finally:
        c.remove(force=True)
