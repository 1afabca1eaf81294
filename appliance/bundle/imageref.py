"""Image references as containerd's CRI normalises them before it looks an image up."""

from __future__ import annotations

import re

from appliance.errors import ManifestError

DEFAULT_DOMAIN = "docker.io"
_PATH_RE = re.compile(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")


def split_reference(reference: str) -> tuple[str, str | None, str | None]:
    """Split an image reference into (repository, tag, digest); the repository is normalized.

    Normalization is the one containerd's CRI plugin applies before it looks an
    image up: no registry means `docker.io`, and a single path component on
    docker.io gets `library/`. So `appliance/mlp:1` is `docker.io/appliance/mlp`.

    Raises:
        ManifestError: the reference is empty or not a valid image reference.
    """
    rest, at, digest_text = reference.partition("@")
    digest = digest_text if at else None
    tag: str | None = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
    if not rest or rest != rest.strip() or (tag is not None and not tag):
        raise ManifestError(f"image reference {reference!r} is not a valid reference")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = "library/" + path
    if not _PATH_RE.fullmatch(path):
        raise ManifestError(
            f"image reference {reference!r} has a repository that is not lowercase "
            "[a-z0-9._-] path components"
        )
    return f"{domain}/{path}", tag, digest


def pinned_reference(reference: str, manifest_digest: str) -> str:
    """`<normalized repository>@<digest>`: the name a digest-pinned pod asks containerd for."""
    repo, _, _ = split_reference(reference)
    return f"{repo}@{manifest_digest}"


def tagged_reference(reference: str) -> str:
    """The normalized `<repository>:<tag>` (tag `latest` when none), as containerd names it."""
    repo, tag, _ = split_reference(reference)
    return f"{repo}:{tag or 'latest'}"
