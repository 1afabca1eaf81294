"""Compose one image per service: the runtime image's layers plus a weights layer per model.

Like `crane append`, composing is data, not a build: a new config (diff ids
appended, labels naming each model, its version and weights digest, the
command override) and a new OCI manifest. Both are pure functions of the
blob digests, so the writer can compute them with placeholder digests first
(same length, hence same size) and with the real ones once the layers are
hashed.

The front door's proxy image is not composed: it is carried as it came (its
layers, its config bytes, and its OCI manifest when the source has one; from a
docker-archive the manifest is written over them here). A layer it shares with
the runtime image is the same `Blob`, so the bundle stores it once.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.bundle.imagearchive import (
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    canonical_json,
)
from appliance.bundle.manifest import FRONTDOOR_IMAGE, Image
from appliance.errors import SpecError
from bundler.layers import WeightsLayer, plan_weights_layer
from bundler.sources import BaseImage, LayerSource
from bundler.spec import ModelSpec, ServiceSpec, Spec

CUDA_LABEL = "io.appliance.runtime.cuda"  # set by images/Containerfile.cuda-libs
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def placeholder(token: str) -> str:
    """A digest-shaped stand-in for a blob not hashed yet (same length as the real one)."""
    return "sha256:" + hashlib.sha256(b"placeholder:" + token.encode()).hexdigest()


@dataclass(eq=False)
class Blob:
    """A blob the bundle may hold. `digest` is set once known (stated, hashed or computed)."""

    key: str  # placeholder digest: identity in the plan
    size: int
    media_type: str
    layer: LayerSource | WeightsLayer | None = None  # None for configs and manifests
    digest: str | None = None
    data: bytes | None = None  # configs and manifests, once computed

    @property
    def current(self) -> str:
        return self.digest or self.key


@dataclass(eq=False)
class PlannedImage:
    service: ServiceSpec
    reference: str
    layers: list[Blob]
    models: list[ModelSpec]
    base: BaseImage | None = None
    config: Blob = field(init=False)
    manifest: Blob = field(init=False)


@dataclass(eq=False)
class CarriedImage:
    """An image the bundle carries unchanged (the front door's proxy): no service runs it."""

    name: str
    reference: str
    layers: list[Blob]
    config: Blob
    manifest: Blob
    source_manifest: bytes | None  # the source's own OCI manifest, carried as is


class Composition:
    """The images a spec asks for, over a base image (or none: weights only; GPU services
    over `gpu_base` when given), plus the front door's image when the spec names one."""

    def __init__(self, spec: Spec, base: BaseImage | None,
                 gpu_base: BaseImage | None = None,
                 frontdoor: BaseImage | None = None) -> None:
        self.spec = spec
        self.base = base
        self.gpu_base = gpu_base  # GPU services' runtime image (the CUDA variant), if any
        self.weights: dict[str, Blob] = {}
        for m in spec.models:
            layer = plan_weights_layer(m, canonical_json(m.model_json))
            self.weights[m.name] = Blob(placeholder(f"weights:{m.name}"), layer.size,
                                        LAYER_MEDIA_TYPE, layer)
        # One Blob per layer digest: the slim and CUDA images share the Debian base.
        known: dict[str, Blob] = {}

        def blobs_of(img: BaseImage | None, tag: str) -> list[Blob]:
            out = []
            for i, src in enumerate(img.layers if img else []):
                key = src.digest or placeholder(f"{tag}:{i}")
                out.append(known.setdefault(key, Blob(key, src.size, src.media_type, src,
                                                      src.digest)))
            return out

        base_blobs = blobs_of(base, "base")
        gpu_blobs = blobs_of(gpu_base, "gpu-base")
        self.images: list[PlannedImage] = []
        for svc in spec.services:
            models = [spec.model(n) for n in svc.models]
            on_gpu = gpu_base is not None and svc.gpu != "none"
            img = PlannedImage(svc, f"appliance/{spec.name}-{svc.name}:{spec.version}",
                               [*(gpu_blobs if on_gpu else base_blobs),
                                *(self.weights[m.name] for m in models)], models,
                               gpu_base if on_gpu else base)
            img.config = Blob(placeholder(f"config:{svc.name}"), 0, CONFIG_MEDIA_TYPE)
            img.manifest = Blob(placeholder(f"manifest:{svc.name}"), 0, MANIFEST_MEDIA_TYPE)
            self.images.append(img)
        self.frontdoor = (self._carry(FRONTDOOR_IMAGE, frontdoor, [*base_blobs, *gpu_blobs])
                          if frontdoor is not None else None)
        self.refresh()

    def _carry(self, name: str, src: BaseImage, shared: list[Blob]) -> CarriedImage:
        """Plan `src` as it is, reusing the blob of every layer it shares with `shared`."""
        spec = self.spec
        os_, arch = spec.platform.split("/")[:2]
        got = (src.config.get("os"), src.config.get("architecture"))
        if got != (os_, arch):
            raise SpecError(f"the front door image is for {got[0]}/{got[1]}, the bundle for "
                            f"{spec.platform}; build the proxy image for {spec.platform}")
        known = {b.digest: b for b in shared if b.digest}
        layers = []
        for i, layer in enumerate(src.layers):
            known_blob = known.get(layer.digest) if layer.digest else None
            layers.append(known_blob or Blob(layer.digest or placeholder(f"{name}:{i}"),
                                             layer.size, layer.media_type, layer, layer.digest))
        cfg = src.config_bytes
        config = Blob(_sha(cfg), len(cfg), CONFIG_MEDIA_TYPE, digest=_sha(cfg), data=cfg)
        return CarriedImage(name, f"appliance/{spec.name}-{name}:{spec.version}", layers, config,
                            Blob(placeholder(f"manifest:{name}"), 0, MANIFEST_MEDIA_TYPE),
                            src.manifest_bytes)

    def describe(self, b: Blob) -> str:
        """What a layer blob is, for error messages."""
        if isinstance(b.layer, WeightsLayer):
            return f"model {b.layer.model}"
        if any(b is x for img in self.images for x in img.layers):
            return "runtime layer"
        return "front door image layer"

    def all_images(self) -> list[PlannedImage | CarriedImage]:
        """The service images, then the front door's."""
        return [*self.images, *([self.frontdoor] if self.frontdoor else [])]

    def blobs(self) -> list[Blob]:
        """Every blob once, in bundle order: per image its layers, config, manifest."""
        seen: dict[str, Blob] = {}
        for img in self.all_images():
            for b in (*img.layers, img.config, img.manifest):
                seen.setdefault(b.current, b)  # one blob per digest, whichever image has it
        return list(seen.values())

    def refresh(self) -> None:
        """Recompute configs and manifests from the digests known so far."""
        for img in self.images:
            cfg = self.config_bytes(img)
            img.config.size = len(cfg)
            resolved = all(b.digest for b in img.layers)
            img.config.data = cfg if resolved else None
            img.config.digest = _sha(cfg) if resolved else None
            man = self.manifest_bytes(img)
            img.manifest.size = len(man)
            img.manifest.data = man if resolved else None
            img.manifest.digest = _sha(man) if resolved else None
        fd = self.frontdoor
        if fd is not None:
            man = fd.source_manifest or self.manifest_bytes(fd)
            resolved = fd.source_manifest is not None or all(b.digest for b in fd.layers)
            fd.manifest.size = len(man)
            fd.manifest.data = man if resolved else None
            fd.manifest.digest = _sha(man) if resolved else None

    def config_bytes(self, img: PlannedImage) -> bytes:
        spec = self.spec
        os_, arch, *variant = spec.platform.split("/")
        labels = {
            "org.opencontainers.image.title": f"{spec.name}-{img.service.name}",
            "org.opencontainers.image.version": spec.version,
            "appliance.bundle": spec.name,
            "appliance.service": img.service.name,
            "appliance.models": ",".join(m.name for m in img.models),
        }
        for m in img.models:
            w = self.weights[m.name]
            labels[f"appliance.model.{m.name}.version"] = m.version
            labels[f"appliance.model.{m.name}.framework"] = m.framework
            labels[f"appliance.model.{m.name}.digest"] = w.current
        doc: dict[str, Any]
        if img.base is not None:
            doc = copy.deepcopy(img.base.config)
        else:
            doc = {"architecture": arch, "os": os_, "config": {"Env": [DEFAULT_PATH]},
                   "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
            if variant:
                doc["variant"] = variant[0]
        inner = doc.setdefault("config", {}) or {}
        doc["config"] = inner
        inner["Labels"] = {**(inner.get("Labels") or {}), **labels}
        rt = spec.runtime_image
        if rt is not None and rt.command is not None:
            inner["Cmd"] = list(rt.command)
            inner["Entrypoint"] = None
        doc["created"] = spec.created
        rootfs = doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs["diff_ids"] = [*rootfs.get("diff_ids", []),
                              *(self.weights[m.name].current for m in img.models)]
        history = doc.get("history")
        if isinstance(history, list):
            doc["history"] = [*history, *(
                {"created": spec.created, "created_by": f"appliance bundler: model {m.name} "
                 f"version {m.version}", "comment": "weights layer"} for m in img.models)]
        return canonical_json(doc)

    def manifest_bytes(self, img: PlannedImage | CarriedImage) -> bytes:
        return canonical_json({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": img.config.current,
                       "size": img.config.size},
            "layers": [{"mediaType": b.media_type, "digest": b.current, "size": b.size}
                       for b in img.layers],
        })

    def images_for_manifest(self) -> list[Image]:
        """The manifest's image records, with the digests known so far."""
        images = [Image(img.service.name, img.reference, img.manifest.current,
                        img.config.current, [b.current for b in img.layers], _cuda(img.base))
                  for img in self.images]
        if self.frontdoor is not None:
            fd = self.frontdoor
            images.append(Image(fd.name, fd.reference, fd.manifest.current, fd.config.current,
                                [b.current for b in fd.layers]))
        return images

    def image_of_model(self, name: str) -> str:
        for img in self.images:
            if any(m.name == name for m in img.models):
                return img.service.name
        return self.images[0].service.name

    def size_of(self) -> Callable[[str], int]:
        sizes = {b.current: b.size for b in self.blobs()}
        return lambda d: sizes[d]


def _cuda(base: BaseImage | None) -> str:
    """The CUDA version a runtime image's label names ("" for a CPU image)."""
    if base is None:
        return ""
    labels = (base.config.get("config") or {}).get("Labels") or {}
    return str(labels.get(CUDA_LABEL, ""))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
