"""The signed release manifest: what a bundle holds, pinned by size and sha256.

Pure data and validation; no IO. `Manifest.from_json` is the only way bytes
from a bundle become a `Manifest`, and it refuses anything malformed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from appliance.errors import ManifestError
from modelcontract import DATATYPES, FRAMEWORKS, TensorSpec
from signing import jsonbound

SCHEMA_VERSION = 1
MANIFEST_PATH = "appliance/manifest.json"
ENVELOPE_PATH = "appliance/manifest.dsse.json"
PAYLOAD_TYPE = "application/vnd.appliance.manifest.v1+json"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# The image of the front door's proxy (HAProxy), when a bundle carries it: no service
# runs it; the installer starts it in front of the services (docs/frontdoor.md).
FRONTDOOR_IMAGE = "frontdoor"

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CUDA_RE = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}$")
HEX_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

GpuPolicy = Literal["required", "preferred", "none"]
GPU_POLICIES = ("required", "preferred", "none")


def parse_time(text: str, what: str) -> datetime:
    """Parse an RFC 3339 time with a zone; refuse naive times."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as e:
        raise ManifestError(f"manifest {what} is not an RFC 3339 time: {text!r}") from e
    if t.tzinfo is None:
        raise ManifestError(f"manifest {what} has no time zone: {text!r}")
    return t


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Member:
    """A tar member after the manifest and envelope, pinned by size and digest."""

    path: str
    size: int
    sha256: str  # 64 hex digits


@dataclass(frozen=True)
class Sample:
    """A signed acceptance check: inputs, expected outputs, and the tolerance allowed."""

    inputs: dict[str, Any]  # name -> {"datatype", "shape", "data"}
    outputs: dict[str, Any]
    tolerance: float = 1e-4


@dataclass(frozen=True)
class Provenance:
    code_commit: str = ""
    data_version: str = ""
    training_run: str = ""


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    framework: str
    image: str  # name of the image (in `images`) whose top layer holds the weights
    weights_digest: str  # sha256:... of the weights layer blob
    weights_size: int
    path: str  # directory inside the image: models/<name>/<version>
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    gpu_memory_mib: int = 0
    max_batch_size: int = 0
    max_queue_delay_ms: float = 0.0
    provenance: Provenance = field(default_factory=Provenance)
    samples: list[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    name: str  # short name, unique in the bundle
    reference: str  # e.g. appliance/demo-mlp:1.0.0
    manifest_digest: str
    config_digest: str
    layers: list[str]  # layer blob digests, bottom first
    # The CUDA version the image's GPU libraries are built for ("12.4"); "" for an
    # image that runs on the CPU only. Preflight holds the site's driver to it.
    cuda: str = ""

    @property
    def variant(self) -> str:
        """Which runtime image this is, in words: "cuda 12.4" or "cpu"."""
        return f"cuda {self.cuda}" if self.cuda else "cpu"


def image_blobs(images: Sequence[Image]) -> list[str]:
    """Every blob the images use, each once: per image its layers, config, manifest."""
    seen: dict[str, None] = {}
    for img in images:
        for d in (*img.layers, img.config_digest, img.manifest_digest):
            seen.setdefault(d, None)
    return list(seen)


@dataclass(frozen=True)
class Service:
    name: str
    image: str  # an Image.name
    models: list[str]
    port: int = 8000
    gpu: str = "preferred"
    health: str = "/v2/health/ready"
    # Another service of the bundle that serves the same models (say, on the CPU): the
    # front door sends this service's requests to it while this one is down or past its
    # queue bound, marked `X-Appliance-Served-By: fallback`. "" for none.
    fallback: str = ""


@dataclass(frozen=True)
class Base:
    """The release a delta bundle builds on."""

    sequence: int
    manifest_digest: str


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    sequence: int
    created: str
    expires: str
    platform: str
    members: list[Member]
    images: list[Image]
    models: list[Model]
    services: list[Service]
    base: Base | None = None
    trust_root: str | None = None  # a signed successor root envelope (JSON text)
    schema: int = SCHEMA_VERSION

    # -- derived -----------------------------------------------------------
    @property
    def created_at(self) -> datetime:
        return parse_time(self.created, "created")

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires, "expires")

    def member(self, path: str) -> Member | None:
        for m in self.members:
            if m.path == path:
                return m
        return None

    def image(self, name: str) -> Image:
        for i in self.images:
            if i.name == name:
                return i
        raise ManifestError(f"manifest names no image {name!r}")

    def frontdoor_image(self) -> Image | None:
        """The front door's proxy image (`FRONTDOOR_IMAGE`), when the bundle carries one."""
        return next((i for i in self.images if i.name == FRONTDOOR_IMAGE), None)

    def model(self, name: str) -> Model:
        for m in self.models:
            if m.name == name:
                return m
        raise ManifestError(f"manifest names no model {name!r}")

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for img in doc["images"]:
            if not img["cuda"]:  # CPU images keep the bytes they always had
                del img["cuda"]
        for svc in doc["services"]:
            if not svc["fallback"]:  # as do services without a fallback
                del svc["fallback"]
        return doc

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, compact separators, trailing newline."""
        return (
            json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
            + b"\n"
        )

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate manifest bytes.

        Raises:
            ManifestError: over the size cap, not JSON, wrong schema, or any field invalid.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap"
            )
        try:
            doc = jsonbound.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"manifest is not JSON: {e}") from e
        try:
            return cls.from_dict(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"manifest field is missing or malformed: {e}") from e

    @classmethod
    def from_dict(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict):
            raise ManifestError("manifest is not a JSON object")
        if doc.get("schema") != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema {doc.get('schema')!r} is not supported (expected "
                f"{SCHEMA_VERSION}): use an appliance release that reads it"
            )
        m = cls(
            name=_str(doc, "name"),
            version=_str(doc, "version"),
            sequence=_int(doc, "sequence"),
            created=_str(doc, "created"),
            expires=_str(doc, "expires"),
            platform=_str(doc, "platform"),
            members=[Member(_str(e, "path"), _int(e, "size"), _str(e, "sha256"))
                     for e in _list(doc, "members")],
            images=[Image(_str(e, "name"), _str(e, "reference"), _str(e, "manifest_digest"),
                          _str(e, "config_digest"), [str(x) for x in _list(e, "layers")],
                          _str(e, "cuda") if "cuda" in e else "")
                    for e in _list(doc, "images")],
            models=[_model(e) for e in _list(doc, "models")],
            services=[Service(_str(e, "name"), _str(e, "image"),
                              [str(x) for x in _list(e, "models")], _int(e, "port"),
                              _str(e, "gpu"), _str(e, "health"),
                              _str(e, "fallback") if "fallback" in e else "")
                      for e in _list(doc, "services")],
            base=(Base(_int(doc["base"], "sequence"), _str(doc["base"], "manifest_digest"))
                  if doc.get("base") is not None else None),
            trust_root=doc.get("trust_root"),
            schema=SCHEMA_VERSION,
        )
        m.validate()
        return m

    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            ManifestError: naming the first inconsistent field.
        """
        if self.sequence < 1:
            raise ManifestError(f"manifest sequence must be >= 1, got {self.sequence}")
        self.created_at, self.expires_at  # noqa: B018 - parse both or raise
        seen: set[str] = set()
        for mem in self.members:
            if mem.path in seen:
                raise ManifestError(f"manifest lists member {mem.path!r} twice")
            seen.add(mem.path)
            if mem.size < 0 or not HEX_RE.match(mem.sha256):
                raise ManifestError(f"manifest member {mem.path!r} has a bad size or sha256")
        images = {i.name for i in self.images}
        for img in self.images:
            for d in (img.manifest_digest, img.config_digest, *img.layers):
                if not DIGEST_RE.match(d):
                    raise ManifestError(f"image {img.name!r} has a malformed digest {d!r}")
            if img.cuda and not CUDA_RE.match(img.cuda):
                raise ManifestError(f"image {img.name!r} CUDA version {img.cuda!r} is not "
                                    "MAJOR.MINOR")
        for model in self.models:
            if not NAME_RE.match(model.name):
                raise ManifestError(f"model name {model.name!r} is not a safe lowercase name")
            if model.framework not in FRAMEWORKS:
                raise ManifestError(
                    f"model {model.name!r} framework {model.framework!r} is not one of "
                    f"{', '.join(FRAMEWORKS)}"
                )
            if model.image not in images:
                raise ManifestError(f"model {model.name!r} names unknown image {model.image!r}")
            if model.image == FRONTDOOR_IMAGE:
                raise ManifestError(f"model {model.name!r} names the front door's image; "
                                    "weights belong in a service's image")
        models = {m.name for m in self.models}
        for svc in self.services:
            if svc.image not in images:
                raise ManifestError(f"service {svc.name!r} names unknown image {svc.image!r}")
            if FRONTDOOR_IMAGE in (svc.name, svc.image):
                raise ManifestError(f"service {svc.name!r} takes the front door's image or "
                                    "name; only the installer runs the proxy")
            unknown = [m for m in svc.models if m not in models]
            if unknown:
                raise ManifestError(f"service {svc.name!r} names unknown models {unknown}")
            if svc.gpu not in GPU_POLICIES:
                raise ManifestError(f"service {svc.name!r} gpu policy {svc.gpu!r} is unknown")
            if not 1 <= svc.port <= 65535:
                raise ManifestError(f"service {svc.name!r} port {svc.port} is out of range")
        by_name = {s.name: s for s in self.services}
        for svc in self.services:
            if not svc.fallback:
                continue
            fb = by_name.get(svc.fallback)
            if fb is None or fb.name == svc.name or fb.fallback:
                raise ManifestError(f"service {svc.name!r} falls back to {svc.fallback!r}, "
                                    "which must be another service with no fallback of its own")
            missing = [m for m in svc.models if m not in fb.models]
            if missing:
                raise ManifestError(f"service {svc.name!r} falls back to {fb.name!r}, which "
                                    f"does not serve {missing}: a fallback answers the same "
                                    "models")


def _str(doc: Any, key: str) -> str:
    v = doc[key]
    if not isinstance(v, str):
        raise TypeError(f"{key} must be a string")
    return v


def _int(doc: Any, key: str) -> int:
    v = doc[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{key} must be an integer")
    return v


def _list(doc: Any, key: str) -> list[Any]:
    v = doc[key]
    if not isinstance(v, list):
        raise TypeError(f"{key} must be a list")
    return v


def _tensors(doc: Any, key: str) -> list[TensorSpec]:
    out = []
    for t in _list(doc, key):
        shape = tuple(int(d) for d in _list(t, "shape"))
        spec = TensorSpec(_str(t, "name"), _str(t, "datatype"), shape)
        if spec.datatype not in DATATYPES:
            raise ValueError(f"tensor {spec.name!r} has datatype {spec.datatype!r}, "
                             f"not one of {', '.join(DATATYPES)}")
        out.append(spec)
    return out


def _model(e: Any) -> Model:
    prov = e.get("provenance") or {}
    return Model(
        name=_str(e, "name"),
        version=_str(e, "version"),
        framework=_str(e, "framework"),
        image=_str(e, "image"),
        weights_digest=_str(e, "weights_digest"),
        weights_size=_int(e, "weights_size"),
        path=_str(e, "path"),
        inputs=_tensors(e, "inputs"),
        outputs=_tensors(e, "outputs"),
        gpu_memory_mib=int(e.get("gpu_memory_mib", 0)),
        max_batch_size=int(e.get("max_batch_size", 0)),
        max_queue_delay_ms=float(e.get("max_queue_delay_ms", 0.0)),
        provenance=Provenance(**{k: str(prov.get(k, "")) for k in
                                 ("code_commit", "data_version", "training_run")}),
        samples=[Sample(dict(s["inputs"]), dict(s["outputs"]), float(s.get("tolerance", 1e-4)))
                 for s in e.get("samples", [])],
    )
