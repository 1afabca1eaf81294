"""Write a signed bundle in one pass over its inputs.

Why one pass works: the manifest (member 1) pins every later member by digest,
yet those digests are known only after the layers are read. Every member's
*size* is known beforehand (layer tars are planned from file sizes; configs,
image manifests, index.json and the manifest itself are JSON whose digests are
fixed-length hex), so the writer computes the front (manifest, envelope,
oci-layout, index.json, manifest.json) with placeholder digests, skips that
many bytes, and streams each blob straight into the bundle, hashing each buffer
as it goes. A blob's tar header (whose name is its digest) is written as zeros
and patched once the blob is hashed; the front is patched last, and the code
checks that the real front is exactly as long as the placeholder one.

So each input byte is read once, copied once and hashed once: the CPU cost of
`tar -cf` plus `openssl dgst` without the second read. When a core is idle the
hash runs on a second thread over the same buffer while the first one writes it
(hashlib and file writes both release the GIL), so the wall time approaches the
longer of the two instead of their sum.

A delta (`base`) must know a blob's digest before deciding to omit it, so
for deltas the weights layers are hashed in a first pass. So are image layers
whose source states no digest (gzip'd docker-archive layers) when the bundle
carries the front door's image, so a layer it shares with the runtime is found,
and stored once, before the layout is planned.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance.bundle.imagearchive import blob_path, layout_members
from appliance.bundle.manifest import (
    ENVELOPE_PATH,
    MANIFEST_PATH,
    PAYLOAD_TYPE,
    Base,
    Manifest,
    Member,
    Model,
    Service,
)
from appliance.bundle.store import hex_of
from appliance.bundle.stream import idle_core
from appliance.bundle.tarfmt import BLOCK, END_OF_ARCHIVE, file_header, member_span, padding
from appliance.errors import SpecError
from appliance.progress import Progress, ProgressFn, no_progress
from bundler.compose import Blob, Composition
from bundler.layers import WeightsLayer, layer_mtime
from bundler.output import BundleOutput
from bundler.sources import LayerSource, open_base_image
from bundler.spec import Spec
from signing import PrivateKey, sign

CHUNK = 1024 * 1024
PROGRESS_EVERY = 16 * 1024 * 1024
MIN_SPLIT = 1024 * 1024
_PARALLEL_MIN = 64 * 1024


def hash_thread_pays() -> bool:
    """Whether to hash on a second thread, overlapping the copy: only with an idle core
    (measured on 2 shared cores: a 2 GiB build in 6-9 s sequential vs 9-11 s threaded)."""
    return idle_core()


class _HashingSink:
    """Writes to the output while a worker thread hashes the same bytes (GIL released)."""

    def __init__(self, out: BundleOutput | None, pool: ThreadPoolExecutor | None,
                 progress: ProgressFn, done: int, total: int, what: str) -> None:
        self.h = hashlib.sha256()
        self.size = 0
        self._out, self._pool = out, pool
        self._progress, self._done, self._total, self._what = progress, done, total, what
        self._next_report = done + PROGRESS_EVERY

    def __call__(self, data: bytes | memoryview) -> None:
        if self._pool is not None and self._out is not None and len(data) >= _PARALLEL_MIN:
            fut = self._pool.submit(self.h.update, data)
            self._out.write(data)
            fut.result()
        else:
            self.h.update(data)
            if self._out is not None:
                self._out.write(data)
        self.size += len(data)
        if self._done + self.size >= self._next_report:
            self._next_report += PROGRESS_EVERY
            self._progress(Progress("build", self._done + self.size, self._total, self._what))

    @property
    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


def _stream_layer(layer: LayerSource | WeightsLayer, sink: _HashingSink, size: int) -> None:
    if isinstance(layer, WeightsLayer):
        layer.write(sink)
        return
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with layer.open() as f:
        left = size
        while left:
            n = f.readinto(view[: min(CHUNK, left)])  # type: ignore[attr-defined]
            if not n:
                raise SpecError("a runtime image layer is shorter than its stated size")
            sink(view[:n])
            left -= n


def _base_blobs(base: Manifest) -> set[str]:
    have = {"sha256:" + m.sha256 for m in base.members if m.path.startswith("blobs/")}
    for img in base.images:
        have.update((img.manifest_digest, img.config_digest, *img.layers))
    return have


def _front(spec: Spec, comp: Composition, blobs: Sequence[Blob], base: Manifest | None,
           keys: Sequence[PrivateKey]) -> tuple[Manifest, list[tuple[str, bytes]]]:
    images = comp.images_for_manifest()
    layout = layout_members(images, comp.size_of())
    members = [Member(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in layout]
    members += [Member(blob_path(b.current), b.size, hex_of(b.current)) for b in blobs]
    models = [
        Model(name=m.name, version=m.version, framework=m.framework,
              image=comp.image_of_model(m.name), weights_digest=comp.weights[m.name].current,
              weights_size=comp.weights[m.name].size, path=f"models/{m.name}/{m.version}",
              inputs=m.inputs, outputs=m.outputs, gpu_memory_mib=m.gpu_memory_mib,
              max_batch_size=m.max_batch_size, max_queue_delay_ms=m.max_queue_delay_ms,
              provenance=m.provenance, samples=m.samples)
        for m in spec.models
    ]
    services = [Service(s.name, s.name, list(s.models), s.port, s.gpu, fallback=s.fallback)
                for s in spec.services]
    base_ref = None
    if base is not None:
        base_ref = Base(base.sequence, "sha256:" + hashlib.sha256(base.to_json()).hexdigest())
    manifest = Manifest(name=spec.name, version=spec.version, sequence=spec.sequence,
                        created=spec.created, expires=spec.expires, platform=spec.platform,
                        members=members, images=images, models=models, services=services,
                        base=base_ref, trust_root=spec.trust_root)
    manifest.validate()
    data = manifest.to_json()
    envelope = sign(data, PAYLOAD_TYPE, keys).to_json()
    return manifest, [(MANIFEST_PATH, data), (ENVELOPE_PATH, envelope), *layout]


def build_bundle(
    spec: Spec, out: Path, keys: Sequence[PrivateKey], *, base: Manifest | None = None,
    split_bytes: int | None = None, progress: ProgressFn = no_progress,
) -> Manifest:
    """Compose the spec's images and write them as a signed bundle at `out` (or its parts).

    Raises:
        SpecError: a runtime image or model file is missing, malformed or changed mid-build.
        OSError: the output cannot be written (no partial bundle is left under its name).
    """
    if not keys:
        raise SpecError("a bundle needs at least one signing key (--key)")
    if split_bytes is not None and split_bytes < MIN_SPLIT:
        raise SpecError(f"split size {split_bytes} is under the 1 MiB minimum; use e.g. 3900MiB")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out.parent,
                                                                   prefix=".bundle-")))
        base_image = (stack.enter_context(open_base_image(spec.runtime_image, spec.platform, tmp))
                      if spec.runtime_image is not None else None)
        frontdoor = (stack.enter_context(open_base_image(spec.frontdoor_image, spec.platform,
                                                         tmp, "front door image"))
                     if spec.frontdoor_image is not None else None)
        pool = (stack.enter_context(ThreadPoolExecutor(max_workers=1))
                if hash_thread_pays() else None)
        gpu_image = None
        if spec.runtime_image_gpu is not None:
            gpu_image = stack.enter_context(open_base_image(spec.runtime_image_gpu,
                                                            spec.platform, tmp))
        comp = Composition(spec, base_image, gpu_image, frontdoor)
        have: set[str] = set()
        if base is not None:
            have = _base_blobs(base)
            _resolve_layers(comp, comp.blobs(), pool, progress)
        elif frontdoor is not None:
            _resolve_layers(comp, [b for b in comp.blobs() if isinstance(b.layer, LayerSource)],
                            pool, progress)
        blobs = [b for b in comp.blobs() if not (b.digest and b.digest in have)]
        _, draft = _front(spec, comp, blobs, base, keys)
        front_size = sum(member_span(len(d)) for _, d in draft)
        total = front_size + sum(member_span(b.size) for b in blobs) + len(END_OF_ARCHIVE)
        output = BundleOutput(out, split_bytes)
        try:
            output.seek(front_size)
            _write_blobs(output, comp, blobs, pool, progress, total)
            end = output.tell()
            comp.refresh()
            manifest, front = _front(spec, comp, blobs, base, keys)
            if sum(member_span(len(d)) for _, d in front) != front_size:
                raise AssertionError("bundle front changed size between plan and write")
            output.seek(0)
            for name, data in front:
                output.write(file_header(name, len(data), layer_mtime()))
                output.write(data)
                output.write(b"\0" * padding(len(data)))
            output.seek(end)
            output.write(END_OF_ARCHIVE)
            output.commit()
        except BaseException:
            output.abort()
            raise
    progress(Progress("build", total, total, "done"))
    return manifest


def _resolve_layers(comp: Composition, blobs: Sequence[Blob], pool: ThreadPoolExecutor | None,
                    progress: ProgressFn) -> None:
    """Hash layers whose digest is not stated (for a delta, before choosing what to omit)."""
    for b in blobs:
        if b.layer is not None and b.digest is None:
            sink = _HashingSink(None, pool, progress, 0, b.size, "hashing layers")
            _stream_layer(b.layer, sink, b.size)
            b.digest = sink.digest
    comp.refresh()


def _write_blobs(output: BundleOutput, comp: Composition, blobs: Sequence[Blob],
                 pool: ThreadPoolExecutor | None, progress: ProgressFn, total: int) -> None:
    mtime = layer_mtime()
    for b in blobs:
        header_at = output.tell()
        output.write(b"\0" * BLOCK)
        if b.layer is not None:
            what = comp.describe(b)
            sink = _HashingSink(output, pool, progress, header_at, total, what)
            _stream_layer(b.layer, sink, b.size)
            if sink.size != b.size:
                raise SpecError(f"{what}: {sink.size} bytes read, {b.size} planned; "
                                "did a file change during the build?")
            if b.digest is not None and b.digest != sink.digest:
                raise SpecError(f"{what} does not match its digest {b.digest[:19]} (the "
                                "image is corrupted, or a model file changed mid-build)")
            b.digest = sink.digest
        else:
            comp.refresh()
            if b.data is None or len(b.data) != b.size:
                raise AssertionError("image config or manifest changed size after planning")
            output.write(b.data)
        output.write(b"\0" * padding(b.size))
        end = output.tell()
        assert b.digest is not None
        output.seek(header_at)
        output.write(file_header(blob_path(b.digest), b.size, mtime))
        output.seek(end)
