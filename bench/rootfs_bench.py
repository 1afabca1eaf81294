"""How long the process engine takes to unpack a runtime image into its root.

    python bench/rootfs_bench.py [--archive out/runtime-image.tar] [--repeat 3]

The image's layers (from a docker-archive, as the bundler reads it) are put into a
content store in a scratch directory; then, alternating, GNU `tar -xf` of each layer
in order into an empty directory (the baseline: no digest check, no whiteouts, no
per-member safety) and `appliance.engines.rootfs.ensure_root` (digest checked while
streaming, member by member, O_NOFOLLOW walks). Prints a table of medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from appliance.bundle.store import ContentStore
from appliance.engines.rootfs import ensure_root

REPO = Path(__file__).resolve().parents[1]


def store_layers(archive: Path, store: ContentStore) -> list[str]:
    """Copy the archive's layers into the store; return their digests, bottom first."""
    digests = []
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        for name in index["Layers"]:
            member = t.getmember(name)
            while member.issym():  # docker-archive: <id>/layer.tar -> ../<digest>.tar
                member = t.getmember(posixpath.normpath(
                    posixpath.join(posixpath.dirname(member.name), member.linkname)))
            src = t.extractfile(member)
            assert src is not None
            h = hashlib.sha256()
            tmp = store.tmp / "layer"
            with open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            digest = f"sha256:{h.hexdigest()}"
            tmp.replace(store.path(digest))
            digests.append(digest)
    return digests


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", type=Path, default=REPO / "out" / "runtime-image.tar")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rootfs-bench-", dir=args.scratch))
    try:
        store = ContentStore(work / "store")
        store.ensure()
        layers = store_layers(args.archive, store)
        size = sum(store.size(d) for d in layers)
        tar_s, ours_s = [], []
        for i in range(args.repeat):
            dest = work / f"tar-{i}"
            dest.mkdir()
            tar_s.append(timed(lambda dest=dest: [subprocess.run(
                ["tar", "-xf", str(store.path(d)), "-C", str(dest)], check=True)
                for d in layers]))
            ours_s.append(timed(lambda i=i: ensure_root(store, layers, work / f"roots-{i}")))
            shutil.rmtree(dest)
            shutil.rmtree(work / f"roots-{i}")
        tar_m, ours_m = statistics.median(tar_s), statistics.median(ours_s)
        print(f"image: {args.archive.name}, {len(layers)} layers, {size / 1e6:.0f} MB; "
              f"median of {args.repeat}")
        print("| unpack | wall (s) | MB/s | vs baseline |")
        print("|---|---:|---:|---:|")
        print(f"| GNU tar -xf, each layer | {tar_m:.2f} | {size / 1e6 / tar_m:.0f} | baseline |")
        print(f"| rootfs.ensure_root | {ours_m:.2f} | {size / 1e6 / ours_m:.0f} | "
              f"{ours_m / tar_m:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
