"""Build the runtime image offline and save it as out/runtime-image.tar (docker-archive).

`python -m images.build [--variant slim|torch]`: makes (or reuses) the debootstrap
base, stages the wheels on the host, runs `podman build --network none`, and saves
the image. Every result is keyed by a hash of its inputs, so a repeat is seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from images import cuda
from images.base import ensure_base
from images.errors import ImageBuildError
from images.podman import Podman
from images.wheelhouse import (
    Wheelhouse,
    ensure_project_wheel,
    ensure_runtime_wheels,
    ensure_torch_wheels,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILDER_VERSION = "2"
VariantName = Literal["slim", "torch", "cuda-libs", "cuda", "torch-cuda"]


@dataclass(frozen=True)
class Variant:
    """One image the builder makes: its Containerfile, local repository and archive name."""

    name: VariantName
    containerfile: str
    repo: str
    archive: str  # "" for a layer only other variants start from (never saved alone)
    parent: VariantName | None = None  # None: the debootstrap base
    parent_arg: str = "BASE"  # the Containerfile's ARG naming the parent image


VARIANTS: dict[str, Variant] = {
    "slim": Variant("slim", "Containerfile", "localhost/appliance-runtime", "runtime-image.tar"),
    "torch": Variant(
        "torch", "Containerfile.torch", "localhost/appliance-runtime-torch",
        "runtime-image-torch.tar", "slim", "SLIM",
    ),
    # CUDA 12 and cuDNN 9 in one layer that both GPU variants start from (images/cuda.py)
    "cuda-libs": Variant("cuda-libs", "Containerfile.cuda-libs", "localhost/appliance-cuda-libs",
                         ""),
    "cuda": Variant("cuda", "Containerfile.cuda", "localhost/appliance-runtime-cuda",
                    "runtime-image-cuda.tar", "cuda-libs", "BASE"),
    "torch-cuda": Variant("torch-cuda", "Containerfile.torch-cuda",
                          "localhost/appliance-runtime-torch-cuda",
                          "runtime-image-torch-cuda.tar", "cuda", "SLIM"),
}


def variant_inputs(v: Variant, root: Path, cache: Path, *, log: bool = False
                   ) -> tuple[list[Wheelhouse], list[str]]:
    """The wheel sets a variant's build context holds, and its requirements.txt lines.

    Raises:
        WheelhouseError: a download failed (PyPI or PyTorch's index must be reachable).
    """
    if v.name == "torch":
        return [ensure_torch_wheels(cache, log=log)], []
    if v.name == "cuda-libs":
        return [cuda.ensure_cuda_lib_wheels(cache, log=log)], []
    if v.name == "cuda":
        return ([cuda.ensure_ort_gpu_wheels(root, cache, log=log),
                 ensure_project_wheel(root, cache, log=log)], cuda.ort_gpu_requirements(root))
    if v.name == "torch-cuda":
        return ([cuda.ensure_torch_cuda_wheel(cache, log=log),
                 cuda.ensure_torch_py_wheels(cache, log=log)], list(cuda.TORCH_PY_DEPS))
    return [ensure_runtime_wheels(root, cache, log=log),
            ensure_project_wheel(root, cache, log=log)], []


@dataclass(frozen=True)
class BuiltImage:
    """A built and saved runtime image."""

    variant: str
    tag: str
    image_id: str
    input_hash: str
    archive: Path
    archive_bytes: int
    image_bytes: int
    built: bool
    saved: bool
    seconds: float


def default_cache() -> Path:
    """Where bases, wheels and build contexts are kept ($APPLIANCE_IMAGE_CACHE or .cache/images)."""
    return Path(os.environ.get("APPLIANCE_IMAGE_CACHE", ROOT / ".cache" / "images"))


def build_runtime_image(
    variant: VariantName = "slim",
    *,
    root: Path = ROOT,
    out_dir: Path | None = None,
    cache: Path | None = None,
    podman: Podman | None = None,
    log: bool = False,
) -> BuiltImage:
    """Build (or reuse) a runtime image and save it as a docker-archive under out_dir.

    Raises:
        ImageBuildError: any step failed; the message says which and what to do.
    """
    started = time.monotonic()
    out_dir, cache, podman = build_places(root, out_dir, cache, podman, log)
    with _locked(cache / ".lock"):
        return _build_locked(VARIANTS[variant], root, out_dir, cache, podman, log, started)


def build_places(root: Path, out_dir: Path | None, cache: Path | None, podman: Podman | None,
                 log: bool) -> tuple[Path, Path, Podman]:
    """The output and cache directories (made when missing) and the podman to build with."""
    out_dir = out_dir or root / "out"
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir, cache, podman or Podman(verbose=log)


def _build_locked(
    v: Variant, root: Path, out_dir: Path, cache: Path, podman: Podman, log: bool, started: float
) -> BuiltImage:
    if v.parent is not None:
        parent = _build_locked(VARIANTS[v.parent], root, out_dir, cache, podman, log, started)
        parent_tag, parent_key = parent.tag, parent.input_hash
    else:
        parent_tag = ensure_base(podman, cache / "base", log=log)
        if podman.image_id(parent_tag) is None:
            raise ImageBuildError(f"base image {parent_tag} vanished during the build: run again")
        # The base tag names its debootstrap recipe; the image id would not do as a
        # key, since every `podman import` of the same rootfs gets a new id.
        parent_key = parent_tag
    wheels, requirements = variant_inputs(v, root, cache, log=log)
    containerfile = HERE / v.containerfile
    input_hash = _input_hash(v, containerfile, parent_key, wheels)
    tag = f"{v.repo}:{input_hash[:16]}"

    built = False
    if podman.image_id(tag) is None:
        _podman_build(podman, v, containerfile, parent_tag, wheels, requirements, tag,
                      input_hash, cache)
        built = True
    image_id = podman.image_id(tag) or ""
    podman.run("tag", tag, f"{v.repo}:latest", what=f"podman tag {tag}")

    archive = out_dir / (v.archive or f"{v.name}.tar")
    saved = bool(v.archive) and _save_if_stale(podman, tag, image_id, input_hash, archive)
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", tag, what="inspect"))
    return BuiltImage(
        variant=v.name,
        tag=tag,
        image_id=image_id,
        input_hash=input_hash,
        archive=archive,
        archive_bytes=archive.stat().st_size if v.archive else 0,
        image_bytes=size,
        built=built,
        saved=saved,
        seconds=round(time.monotonic() - started, 1),
    )


def _input_hash(v: Variant, containerfile: Path, parent_key: str, wheels: list[Wheelhouse]) -> str:
    """Everything that decides the image: builder, Containerfile, health check, parent, wheels."""
    h = hashlib.sha256()
    for part in (
        f"builder {BUILDER_VERSION} {v.name}",
        containerfile.read_text(),
        (HERE / "healthcheck.py").read_text(),
        parent_key,
        *(w.digest for w in wheels),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _podman_build(
    podman: Podman,
    v: Variant,
    containerfile: Path,
    parent_tag: str,
    wheels: list[Wheelhouse],
    requirements: list[str],
    tag: str,
    input_hash: str,
    cache: Path,
) -> None:
    context = Path(tempfile.mkdtemp(prefix=".context-", dir=cache))
    try:
        staged = context / "wheels"
        staged.mkdir()
        for house in wheels:
            for wheel in house.wheels():
                _link_or_copy(wheel, staged / wheel.name)
        shutil.copy2(containerfile, context / "Containerfile")
        shutil.copy2(HERE / "healthcheck.py", context / "healthcheck.py")
        (context / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
        arg = v.parent_arg
        podman.stream(
            "build",
            "--network", "none",
            "--pull=never",
            # buildah keys its layer cache on the instruction text, not on what a
            # RUN bind-mounts: a cached layer would keep stale wheels. Our own
            # cache is the input hash, so build every layer afresh.
            "--no-cache",
            "--layers=false",
            "--format", "docker",
            "--build-arg", f"{arg}={parent_tag}",
            "--label", f"org.opencontainers.image.revision={input_hash}",
            "--tag", tag,
            "--file", context / "Containerfile",
            context,
            what=f"podman build of the {v.name} runtime image",
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def prune_older(podman: Podman, variant: VariantName, *, keep: str) -> list[str]:
    """Remove this variant's images other than `keep`; return the tags removed.

    Only on request (`--prune`): worktrees and CI jobs on one machine share podman's
    storage, and a build must never untag an image another one is about to save or run.
    """
    repo = VARIANTS[variant].repo
    listed = podman.run(
        "images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}", "--filter", f"reference={repo}",
        what="podman images",
    )
    keep_id = podman.image_id(keep) or ""
    removed = []
    for line in listed.splitlines():
        image_id, ref = line.split()
        if ref.rsplit(":", 1)[0] != repo or keep_id.startswith(image_id):
            continue
        # In use by a container or a child image: then it stays.
        with contextlib.suppress(ImageBuildError):
            podman.run("rmi", ref, what=f"podman rmi {ref}")
            removed.append(ref)
    return removed


def _save_if_stale(
    podman: Podman, tag: str, image_id: str, input_hash: str, archive: Path
) -> bool:
    """Write the docker-archive unless the one on disk already holds this build."""
    meta_path = archive.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("input_hash") == input_hash
            and meta.get("image_id") == image_id
            and archive.stat().st_size == meta.get("archive_bytes")
        ):
            return False
    except (OSError, ValueError):
        pass
    part = archive.with_name(f".{archive.name}.part")
    part.unlink(missing_ok=True)
    podman.run("save", "--format", "docker-archive", "-o", part, tag, what=f"podman save {tag}")
    os.replace(part, archive)
    meta = {
        "tag": tag,
        "image_id": image_id,
        "input_hash": input_hash,
        "archive_bytes": archive.stat().st_size,
    }
    tmp = meta_path.with_name(f".{meta_path.name}.part")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build at a time per cache (make and pytest may race for it)."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    """Command line: build the chosen variant and print where the archive is and its size."""
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="slim")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not stream build output")
    parser.add_argument(
        "--prune", action="store_true", help="then remove this variant's older images"
    )
    args = parser.parse_args(argv)
    try:
        result = build_runtime_image(args.variant, out_dir=args.out_dir, log=not args.quiet)
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.prune:
        for ref in prune_older(Podman(), args.variant, keep=result.tag):
            print(f"removed {ref}", file=sys.stderr)
    if args.json:
        print(json.dumps({**asdict(result), "archive": str(result.archive)}, indent=2))
        return 0
    how = "built" if result.built else "cached"
    print(
        f"{result.archive}: {_mb(result.archive_bytes)} "
        f"(image {result.tag}, {_mb(result.image_bytes)}; {how}, {result.seconds} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
