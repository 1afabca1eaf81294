"""Images (the runtime's, the front door's) read without a daemon: an OCI layout
directory, an OCI or docker-archive tar, or (through the docker SDK) an image in a
local engine saved to a temp tar.

A source yields a `BaseImage`: its config (document and exact bytes), its image
manifest's bytes when the source has one, and its layers as `LayerSource`s (size,
media type, digest when known, and an opener). Nothing is extracted; tar members
are read in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.bundle.imagearchive import CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE
from appliance.errors import SpecError
from bundler.spec import RuntimeImageSpec

MAX_JSON_BYTES = 16 * 1024 * 1024
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
_UNCOMPRESSED = {DOCKER_LAYER: LAYER_MEDIA_TYPE, LAYER_MEDIA_TYPE: LAYER_MEDIA_TYPE}
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_GZIP = {"application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP_LAYER}


@dataclass(frozen=True)
class LayerSource:
    """A layer of a source image, read once while the bundle is written."""

    size: int
    media_type: str
    diff_id: str  # sha256 of the uncompressed layer (from the config)
    digest: str | None  # sha256 of these bytes, when the source states it
    open: Callable[[], IO[bytes]] = field(compare=False)


@dataclass(frozen=True)
class BaseImage:
    config: dict[str, Any]
    layers: list[LayerSource]
    config_bytes: bytes = b""  # the config exactly as the source holds it
    # The source's OCI image manifest, when it can be carried as is (an OCI source whose
    # media types the bundle keeps); None for a docker-archive, which has none.
    manifest_bytes: bytes | None = None


def _json(data: bytes, what: str, where: str) -> Any:
    if len(data) > MAX_JSON_BYTES:
        raise SpecError(f"{where}: {what} is over {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as e:
        raise SpecError(f"{where}: {what} is not JSON: {e}") from e


def _platform_matches(desc: dict[str, Any], platform: str) -> bool:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return True
    os_, arch = platform.split("/")[:2]
    return bool(p.get("os") == os_ and p.get("architecture") == arch)


class _Reader:
    """Reads named files from an OCI layout (a directory, or a tar holding one)."""

    def __init__(self, read: Callable[[str], bytes], size: Callable[[str], int],
                 opener: Callable[[str], Callable[[], IO[bytes]]],
                 names: frozenset[str] = frozenset()) -> None:
        self.read, self.size, self.opener, self.names = read, size, opener, names


def _from_oci(r: _Reader, platform: str, where: str) -> BaseImage:
    index = _json(r.read("index.json"), "index.json", where)
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    while True:
        chosen = [m for m in manifests if _platform_matches(m, platform)]
        if not chosen:
            raise SpecError(f"{where} has no image for platform {platform}")
        desc = chosen[0]
        raw = _read_pinned(r, desc["digest"], "image manifest", where)
        doc = _json(raw, "image manifest", where)
        if desc.get("mediaType") in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES:
            manifests = doc.get("manifests", [])
            continue
        break
    config_bytes = _read_pinned(r, doc["config"]["digest"], "config", where)
    config = _json(config_bytes, "config", where)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(doc.get("layers", [])):
        raise SpecError(f"{where}: config lists {len(diff_ids)} layers, "
                        f"manifest {len(doc.get('layers', []))}")
    layers = []
    as_is = (doc.get("mediaType") == MANIFEST_MEDIA_TYPE
             and doc["config"].get("mediaType") == CONFIG_MEDIA_TYPE)
    for desc, diff_id in zip(doc["layers"], diff_ids, strict=True):
        given = desc.get("mediaType", LAYER_MEDIA_TYPE)
        mt = _UNCOMPRESSED.get(given) or _GZIP.get(given) or given
        as_is = as_is and mt == given
        path = _blob(desc["digest"], where)
        layers.append(LayerSource(r.size(path), mt, diff_id, desc["digest"], r.opener(path)))
    return BaseImage(config, layers, config_bytes, raw if as_is else None)


def _read_pinned(r: _Reader, digest: str, what: str, where: str) -> bytes:
    data = r.read(_blob(digest, where))
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise SpecError(f"{where}: {what} does not match its digest {digest[:19]}; the image "
                        "is corrupted, build or copy it again")
    return data


def _blob(digest: str, where: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise SpecError(f"{where}: digest {digest!r} is not sha256")
    return f"blobs/sha256/{hexpart}"


def _from_docker_archive(r: _Reader, where: str) -> BaseImage:
    entries = _json(r.read("manifest.json"), "manifest.json", where)
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{where}: manifest.json lists no image")
    entry = entries[0]
    config_bytes = r.read(entry["Config"])
    config = _json(config_bytes, "config", where)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(entry.get("Layers", [])):
        raise SpecError(f"{where}: config and manifest.json disagree on layers")
    layers = []
    for path, diff_id in zip(entry["Layers"], diff_ids, strict=True):
        opener = r.opener(path)
        with opener() as f:
            magic = f.read(4)
        if magic[:2] == b"\x1f\x8b":  # some tools save gzip'd layers: digest unknown yet
            layers.append(LayerSource(r.size(path), GZIP_LAYER, diff_id, None, opener))
        else:
            # docker save writes uncompressed layers, so their digest is the diff id;
            # the writer re-hashes and refuses a layer that is not.
            layers.append(LayerSource(r.size(path), LAYER_MEDIA_TYPE, diff_id, diff_id,
                                      opener))
    return BaseImage(config, layers, config_bytes)


def _dir_reader(root: Path, where: str) -> _Reader:
    def path(name: str) -> Path:
        p = root / name
        if not p.is_file():
            raise SpecError(f"{where} lacks {name}")
        return p

    def opener(name: str) -> Callable[[], IO[bytes]]:
        return lambda: open(path(name), "rb")

    return _Reader(lambda n: path(n).read_bytes(), lambda n: path(n).stat().st_size, opener)


def _tar_reader(tar: tarfile.TarFile, where: str) -> _Reader:
    members: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        members[m.name.removeprefix("./")] = m

    def member(name: str) -> tarfile.TarInfo:
        m = members.get(name)
        for _ in range(8):  # docker-archive may link <id>/layer.tar to a file in the tar
            if m is None or not m.issym():
                break
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
            name, m = target, members.get(target)
        if m is None or not m.isfile():
            raise SpecError(f"{where} lacks a regular file {name}")
        return m

    def read(name: str) -> bytes:
        m = member(name)
        if m.size > MAX_JSON_BYTES:
            raise SpecError(f"{where}: {name} is too large for metadata")
        f = tar.extractfile(m)
        assert f is not None
        return f.read()

    def opener(name: str) -> Callable[[], IO[bytes]]:
        m = member(name)

        def do_open() -> IO[bytes]:
            f = tar.extractfile(m)
            assert f is not None
            return f

        return do_open

    return _Reader(read, lambda n: member(n).size, opener, frozenset(members))


@contextlib.contextmanager
def open_base_image(spec: RuntimeImageSpec, platform: str, tmp: Path,
                    what: str = "runtime image") -> Iterator[BaseImage]:
    """Open the image the spec names (`what` names it in errors) while the build reads it.

    Raises:
        SpecError: missing, unreadable or malformed image, or engine unreachable.
    """
    if spec.oci_layout is not None:
        where = f"{what} {spec.oci_layout}"
        yield _from_oci(_dir_reader(spec.oci_layout, where), platform, where)
        return
    with contextlib.ExitStack() as stack:
        if spec.archive is not None:
            path = spec.archive
        else:
            assert spec.engine is not None
            path = stack.enter_context(_saved_from_engine(spec.engine, tmp, what))
        where = f"{what} {path}"
        try:
            tar = stack.enter_context(tarfile.open(path, "r:"))
            reader = _tar_reader(tar, where)
        except (tarfile.TarError, OSError) as e:
            raise SpecError(f"{where} is not an uncompressed tar: {e}") from e
        names = reader.names
        if "manifest.json" in names:
            yield _from_docker_archive(reader, where)
        elif "index.json" in names:
            yield _from_oci(reader, platform, where)
        else:
            raise SpecError(f"{where} is neither a docker-archive nor an OCI tar")


@contextlib.contextmanager
def _saved_from_engine(ref: str, tmp: Path, what: str) -> Iterator[Path]:
    try:
        import docker
        import docker.errors
    except ImportError as e:
        raise SpecError(f"{what} from an engine needs the docker SDK (pip install docker)") from e
    try:
        client = docker.from_env()
        image = client.images.get(ref)
        with tempfile.NamedTemporaryFile(dir=tmp, suffix=".tar", delete=False) as f:
            for chunk in image.save(named=True):
                f.write(chunk)
    except docker.errors.DockerException as e:
        raise SpecError(f"cannot save {what} {ref!r} from the engine: {e}") from e
    try:
        yield Path(f.name)
    finally:
        Path(f.name).unlink(missing_ok=True)
