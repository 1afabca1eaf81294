"""appliance.yaml: what a bundle is built from (runtime image, models, services).

`load_spec` reads and validates the file and every model directory it names;
nothing is built here. Paths are resolved relative to the spec file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from appliance.bundle.manifest import (
    FRONTDOOR_IMAGE,
    GPU_POLICIES,
    NAME_RE,
    Provenance,
    Sample,
    format_time,
    parse_time,
)
from appliance.errors import ManifestError, SpecError
from bundler.samplecheck import check_sample
from modelcontract import FRAMEWORKS, ModelContractError, TensorSpec, check_spec

MAX_SPEC_BYTES = 4 * 1024 * 1024
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # an image tag
MODEL_JSON = "model.json"


@dataclass(frozen=True)
class RuntimeImageSpec:
    """Where an image comes from (the runtime's, or the front door's proxy): exactly one of
    archive, oci_layout, engine."""

    archive: Path | None = None
    oci_layout: Path | None = None
    engine: str | None = None
    command: list[str] | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    path: Path  # the model directory (absolute)
    framework: str
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model_json: dict[str, Any]  # model.json as it goes into the layer (spec settings merged)
    gpu_memory_mib: int = 0
    max_batch_size: int = 0
    max_queue_delay_ms: float = 0.0
    provenance: Provenance = field(default_factory=Provenance)
    samples: list[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    models: list[str]
    port: int
    gpu: str = "preferred"
    fallback: str = ""  # another service serving the same models, for the front door


@dataclass(frozen=True)
class Spec:
    name: str
    version: str
    sequence: int
    created: str
    expires: str
    platform: str
    runtime_image: RuntimeImageSpec | None
    models: list[ModelSpec]
    services: list[ServiceSpec]
    source: Path  # the spec file
    trust_root: str | None = None  # a signed successor root (JSON text) riding in the bundle
    frontdoor_image: RuntimeImageSpec | None = None  # the proxy image, carried unchanged
    # The CUDA variant of the runtime image: services with gpu required or preferred
    # are composed on it, `gpu: none` services on `runtime_image` (the slim one).
    runtime_image_gpu: RuntimeImageSpec | None = None

    def runtime_for(self, service: ServiceSpec) -> RuntimeImageSpec | None:
        """The runtime image a service is composed on: the GPU variant for a GPU service."""
        if service.gpu != "none" and self.runtime_image_gpu is not None:
            return self.runtime_image_gpu
        return self.runtime_image

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise SpecError(f"spec names no model {name!r}")


def build_time() -> datetime:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else the clock."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), UTC)
        except ValueError as e:
            raise SpecError(f"SOURCE_DATE_EPOCH={epoch!r} is not an integer") from e
    return datetime.now(UTC).replace(microsecond=0)


def load_spec(path: Path) -> Spec:
    """Read appliance.yaml and the model directories it names.

    Raises:
        SpecError: unreadable, not YAML, a field missing or invalid, or a model
            directory without a valid model.json.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read spec {path}: {e.strerror}") from e
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec {path} is over {MAX_SPEC_BYTES} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise SpecError(f"spec {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(doc, dict):
        raise SpecError(f"spec {path} is not a mapping of fields")
    try:
        return _spec(doc, path)
    except (KeyError, TypeError, ValueError) as e:
        raise SpecError(f"spec {path}: field missing or malformed: {e}") from e


def _spec(doc: dict[str, Any], path: Path) -> Spec:
    here = path.resolve().parent
    name = _name(doc["name"], "bundle name")
    created = build_time()
    if "expires" in doc:
        exp = doc["expires"]
        try:
            expires = exp if isinstance(exp, datetime) else parse_time(str(exp), "expires")
        except ManifestError as e:
            raise SpecError(f"spec {path}: expires {exp!r} is not a time with a zone, e.g. "
                            "2027-01-01T00:00:00Z") from e
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
    else:
        expires = created + timedelta(days=int(doc.get("expires_days", 365)))
    if expires <= created:
        raise SpecError(f"spec {path}: expires {format_time(expires)} is not after "
                        f"the build time {format_time(created)}")
    sequence = doc["sequence"]
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise SpecError(f"spec {path}: sequence must be an integer >= 1, got {sequence!r}")
    platform = str(doc.get("platform", "linux/amd64"))
    if platform.count("/") not in (1, 2):
        raise SpecError(f"spec {path}: platform {platform!r} is not os/arch[/variant]")
    models = [_model(m, here) for m in _list(doc, "models")]
    if not models:
        raise SpecError(f"spec {path} names no models")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SpecError(f"spec {path}: model names repeat: {names}")
    services = _services(doc.get("services"), names, path)
    version = str(doc["version"])
    if not TAG_RE.match(version):
        raise SpecError(f"spec {path}: version {version!r} must be usable as an image tag "
                        "(letters, digits, '_', '.', '-')")
    return Spec(
        name=name, version=version, sequence=sequence,
        created=format_time(created), expires=format_time(expires), platform=platform,
        runtime_image=_image_source(doc.get("runtime_image"), here, "runtime_image"),
        models=models, services=services, source=path,
        trust_root=_trust_root(doc.get("trust_root"), here),
        frontdoor_image=_image_source(doc.get("frontdoor_image"), here, "frontdoor_image"),
        runtime_image_gpu=_image_source(doc.get("runtime_image_gpu"), here,
                                        "runtime_image_gpu"),
    )


def _trust_root(value: Any, here: Path) -> str | None:
    """The signed successor root file named by `trust_root:`, as text for the manifest."""
    if value is None:
        return None
    path = here / str(value)
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the new trust root {path}: {e}") from e


def _name(value: Any, what: str) -> str:
    text = str(value)
    if not NAME_RE.match(text):
        raise SpecError(f"{what} {text!r} must be lowercase letters, digits, '.', '_' or '-'")
    return text


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    v = doc.get(key)
    if not isinstance(v, list):
        raise SpecError(f"spec field {key!r} must be a list")
    return v


# What to run to make each image when its file is missing.
_MAKE = {"runtime_image": "make runtime-image", "frontdoor_image": "make proxy-image"}


def _image_source(doc: Any, here: Path, key: str) -> RuntimeImageSpec | None:
    """`runtime_image:` or `frontdoor_image:`: one parser, so both take the same sources."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise SpecError(f"{key} must be a mapping with archive, oci_layout or engine")
    given = [k for k in ("archive", "oci_layout", "engine") if doc.get(k)]
    if len(given) != 1:
        raise SpecError(f"{key} needs exactly one of archive, oci_layout, engine; "
                        f"got {given or 'none'}")
    command = doc.get("command")
    if command is not None and key == "frontdoor_image":
        # The proxy image travels byte for byte (its config digest is its identity),
        # so nothing may rewrite its config.
        raise SpecError("frontdoor_image is carried unchanged and takes no command; "
                        "remove frontdoor_image.command")
    if command is not None and (not isinstance(command, list)
                                or not all(isinstance(c, str) for c in command)):
        raise SpecError(f"{key}.command must be a list of strings")
    archive = here / doc["archive"] if doc.get("archive") else None
    layout = here / doc["oci_layout"] if doc.get("oci_layout") else None
    for p in (archive, layout):
        if p is not None and not p.exists():
            raise SpecError(f"{key} {p} does not exist; build it first ({_MAKE[key]}) "
                            "or fix the path")
    return RuntimeImageSpec(archive, layout, doc.get("engine"), command)


def _tensors(items: Any, what: str) -> list[TensorSpec]:
    if not isinstance(items, list) or not items:
        raise SpecError(f"{what} must be a non-empty list of tensors")
    return [TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
            for t in items]


def _model(doc: Any, here: Path) -> ModelSpec:
    if not isinstance(doc, dict):
        raise SpecError("each entry of models must be a mapping")
    name = _name(doc["name"], "model name")
    directory = (here / str(doc["path"])).resolve()
    mj_path = directory / MODEL_JSON
    try:
        mj = json.loads(mj_path.read_bytes())
    except OSError as e:
        raise SpecError(f"model {name}: cannot read {mj_path}: {e.strerror}") from e
    except ValueError as e:
        raise SpecError(f"model {name}: {mj_path} is not JSON: {e}") from e
    if not isinstance(mj, dict):
        raise SpecError(f"model {name}: {mj_path} is not a JSON object")
    version = str(doc.get("version", mj.get("version", "1")))
    if not NAME_RE.match(version):
        raise SpecError(f"model {name}: version {version!r} is not a safe path component")
    framework = str(mj.get("framework", ""))
    if framework not in FRAMEWORKS:
        raise SpecError(f"model {name}: framework {framework!r} in {mj_path} is not one of "
                        f"{', '.join(FRAMEWORKS)}")
    file = str(mj.get("file", ""))
    if not file or not (directory / file).is_file():
        raise SpecError(f"model {name}: weights file {file!r} named in {mj_path} is missing")
    gpu_mib = int(doc.get("gpu_memory_mib", mj.get("gpu_memory_mib", 0)) or 0)
    batch = int(doc.get("max_batch_size", mj.get("max_batch_size", 0)) or 0)
    delay = float(doc.get("max_queue_delay_ms", mj.get("max_queue_delay_ms", 0.0)) or 0.0)
    merged = {**mj, "name": name, "version": version, "gpu_memory_mib": gpu_mib,
              "max_batch_size": batch, "max_queue_delay_ms": delay}
    try:  # the runtime's own rules: a bundle never carries a model the server refuses
        check_spec(merged, directory, f"model {name}: {mj_path}")
    except ModelContractError as e:
        raise SpecError(str(e)) from e
    prov = doc.get("provenance") or {}
    if not isinstance(prov, dict):
        raise SpecError(f"model {name}: provenance must be a mapping")
    samples = []
    for s in doc.get("samples") or []:
        if not isinstance(s, dict) or not isinstance(s.get("inputs"), dict) \
                or not isinstance(s.get("outputs"), dict):
            raise SpecError(f"model {name}: each sample needs inputs and outputs mappings")
        samples.append(Sample(dict(s["inputs"]), dict(s["outputs"]),
                              float(s.get("tolerance", 1e-4))))
    inputs = _tensors(mj.get("inputs"), f"model {name} inputs")
    outputs = _tensors(mj.get("outputs"), f"model {name} outputs")
    for i, sample in enumerate(samples):
        check_sample(name, i, sample, inputs, outputs)
    return ModelSpec(
        name=name, version=version, path=directory, framework=framework, file=file,
        inputs=inputs, outputs=outputs,
        model_json=merged,
        gpu_memory_mib=gpu_mib, max_batch_size=batch, max_queue_delay_ms=delay,
        provenance=Provenance(**{k: str(prov.get(k, "")) for k in
                                 ("code_commit", "data_version", "training_run")}),
        samples=samples,
    )


def _services(doc: Any, models: list[str], path: Path) -> list[ServiceSpec]:
    if doc is None:
        return _check_service_names(
            [ServiceSpec(m, [m], 8000 + i) for i, m in enumerate(models)], path)
    if not isinstance(doc, list) or not doc:
        raise SpecError(f"spec {path}: services must be a non-empty list")
    out = []
    for i, s in enumerate(doc):
        name = _name(s["name"], "service name")
        names = [str(m) for m in s["models"]]
        unknown = [m for m in names if m not in models]
        if unknown or not names:
            raise SpecError(f"service {name}: names unknown models {unknown or '(none)'}")
        gpu = str(s.get("gpu", "preferred"))
        if gpu not in GPU_POLICIES:
            raise SpecError(f"service {name}: gpu must be one of {', '.join(GPU_POLICIES)}")
        port = int(s.get("port", 8000 + i))
        if not 1 <= port <= 65535:
            raise SpecError(f"service {name}: port {port} is out of range")
        fallback = s.get("fallback") or ""
        if not isinstance(fallback, str):
            raise SpecError(f"service {name}: fallback must be the name of another service")
        out.append(ServiceSpec(name, names, port, gpu, fallback))
    if len({s.name for s in out}) != len(out):
        raise SpecError(f"spec {path}: service names repeat")
    for s in out:
        fb = next((f for f in out if f.name == s.fallback), None) if s.fallback else None
        if s.fallback and (fb is None or fb.name == s.name or fb.fallback
                           or not set(s.models) <= set(fb.models)):
            raise SpecError(f"service {s.name}: fallback {s.fallback!r} must be another "
                            "service, with no fallback of its own, serving the same models")
    served = {m for s in out for m in s.models}
    unserved = [m for m in models if m not in served]
    if unserved:
        raise SpecError(f"spec {path}: models {unserved} are in no service; add them to one")
    return _check_service_names(out, path)


def _check_service_names(services: list[ServiceSpec], path: Path) -> list[ServiceSpec]:
    """Refuse a service named like the front door's image: both would get its reference."""
    for s in services:
        if s.name == FRONTDOOR_IMAGE:
            raise SpecError(f"spec {path}: service {s.name!r} takes the name reserved for the "
                            "front door's proxy image; rename it")
    return services

