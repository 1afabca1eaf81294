"""Build the front-door proxy image offline and save it as out/proxy-image.tar (docker-archive).

`python -m images.proxy`: HAProxy from Debian's packages on the runtime image's
debootstrap base. apt on the host downloads the .debs the base lacks (resolved against
the base's own dpkg status, so nothing already in the base is fetched twice), and
`podman build --network none` installs them with dpkg. Keyed by a hash of its inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from images.base import SUITE, ensure_base, recipe_digest
from images.build import (
    HERE,
    ROOT,
    BuiltImage,
    _link_or_copy,
    _locked,
    _save_if_stale,
    build_places,
)
from images.build import default_cache as default_cache
from images.errors import BaseImageError, ImageBuildError
from images.podman import Podman, run_tool

PROXY_VERSION = "1"
PROXY_PACKAGES = ("haproxy",)
REPO = "localhost/appliance-proxy"
ARCHIVE = "proxy-image.tar"
_INST = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", re.MULTILINE)
CONTAINERFILE = HERE / "Containerfile.proxy"


def build_proxy_image(
    *,
    root: Path = ROOT,
    out_dir: Path | None = None,
    cache: Path | None = None,
    podman: Podman | None = None,
    log: bool = False,
) -> BuiltImage:
    """Build (or reuse) the proxy image and save it as a docker-archive under out_dir.

    Raises:
        ImageBuildError: any step failed; the message says which and what to do.
    """
    started = time.monotonic()
    out_dir, cache, podman = build_places(root, out_dir, cache, podman, log)
    with _locked(cache / ".lock"):
        base_tag = ensure_base(podman, cache / "base", log=log)
        base_tar = cache / "base" / f"base-{SUITE}-{recipe_digest()[:12]}.tar"
        debs = download_debs(base_tar, cache / "proxy-debs", log=log)
        input_hash = _input_hash(base_tag, debs)
        tag = f"{REPO}:{input_hash[:16]}"
        built = False
        if podman.image_id(tag) is None:
            _build(podman, base_tag, debs, tag, input_hash, cache)
            built = True
        image_id = podman.image_id(tag) or ""
        podman.run("tag", tag, f"{REPO}:latest", what=f"podman tag {tag}")
        archive = out_dir / ARCHIVE
        saved = _save_if_stale(podman, tag, image_id, input_hash, archive)
        size = int(podman.run("image", "inspect", "--format", "{{.Size}}", tag, what="inspect"))
    return BuiltImage(
        variant="proxy", tag=tag, image_id=image_id, input_hash=input_hash, archive=archive,
        archive_bytes=archive.stat().st_size, image_bytes=size, built=built, saved=saved,
        seconds=round(time.monotonic() - started, 1),
    )


def download_debs(base_tar: Path, dest: Path, *, log: bool = False) -> list[Path]:
    """Download (or reuse) the .debs of PROXY_PACKAGES that the base rootfs lacks.

    apt resolves against the base's dpkg status, not the host's, so the list is exactly
    what dpkg needs inside the image; a repeat with the files present fetches nothing.

    Raises:
        BaseImageError: the base rootfs tar is missing or apt could not resolve or fetch.
    """
    if not base_tar.exists():
        raise BaseImageError(f"{base_tar} is missing: run `make runtime-image` to make the base")
    (dest / "partial").mkdir(parents=True, exist_ok=True)
    status = dest / "base-status"
    # The base's tar names its members with or without a leading "./" (it depends on how
    # the rootfs was archived), so ask for both spellings.
    for member in ("var/lib/dpkg/status", "./var/lib/dpkg/status"):
        with status.open("wb") as out:
            proc = subprocess.run(["tar", "-xOf", str(base_tar), member],
                                  stdout=out, stderr=subprocess.PIPE, check=False)
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        raise BaseImageError(f"cannot read dpkg status from {base_tar}: {proc.stderr[-200:]!r}")
    apt = ["apt-get", "-q", "-o", f"Dir::State::status={status}", "-o",
           f"Dir::Cache::archives={dest}", "-o", "Debug::NoLocking=1"]
    # Files already in `dest` are not fetched again: a rebuild with them present needs
    # no network.
    run_tool(
        [*apt, "install", "--download-only", "--no-install-recommends", "-y", *PROXY_PACKAGES],
        what="apt-get download of haproxy (run `apt-get update` on a networked host first)",
        verbose=log,
        error=BaseImageError,
    )
    # Exactly this resolution's files, not a stale .deb of an older point release.
    plan = run_tool([*apt, "-s", "install", "--no-install-recommends", *PROXY_PACKAGES],
                    what="apt-get -s install haproxy", error=BaseImageError)
    debs = [dest / f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
            for name, version, arch in _INST.findall(plan)]
    missing = [d.name for d in debs if not d.exists()]
    if missing or not any(d.name.startswith("haproxy_") for d in debs):
        raise BaseImageError(f"apt left {', '.join(missing) or 'haproxy'} out of {dest}: "
                             "run `apt-get update` and build again")
    return sorted(debs)


def _input_hash(base_tag: str, debs: list[Path]) -> str:
    """Everything that decides the image: builder, Containerfile, base, each .deb's bytes."""
    h = hashlib.sha256()
    for part in (f"proxy {PROXY_VERSION}", CONTAINERFILE.read_text(), base_tag):
        h.update(part.encode() + b"\0")
    for deb in debs:
        h.update(f"{deb.name} {hashlib.sha256(deb.read_bytes()).hexdigest()}\0".encode())
    return h.hexdigest()


def _build(podman: Podman, base_tag: str, debs: list[Path], tag: str, input_hash: str,
           cache: Path) -> None:
    context = Path(tempfile.mkdtemp(prefix=".proxy-context-", dir=cache))
    try:
        (context / "debs").mkdir()
        for deb in debs:
            _link_or_copy(deb, context / "debs" / deb.name)
        shutil.copy2(CONTAINERFILE, context / "Containerfile")
        podman.stream(
            "build", "--network", "none", "--pull=never", "--no-cache", "--layers=false",
            "--format", "docker", "--build-arg", f"BASE={base_tag}",
            "--label", f"org.opencontainers.image.revision={input_hash}",
            "--tag", tag, "--file", context / "Containerfile", context,
            what="podman build of the proxy image",
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: build the proxy image and print where the archive is and its size."""
    parser = argparse.ArgumentParser(prog="python -m images.proxy", description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not stream build output")
    args = parser.parse_args(argv)
    try:
        result = build_proxy_image(out_dir=args.out_dir, log=not args.quiet)
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**asdict(result), "archive": str(result.archive)}, indent=2))
        return 0
    how = "built" if result.built else "cached"
    print(f"{result.archive}: {result.archive_bytes / 1e6:.1f} MB "
          f"(image {result.tag}; {how}, {result.seconds} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
