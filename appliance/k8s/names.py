"""Names as Kubernetes and containerd spell them: object names, label values, image refs."""

from __future__ import annotations

import hashlib
import re

from appliance.errors import ManifestError

DEFAULT_DOMAIN = "docker.io"
_DNS_LABEL_MAX = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def dns_label(*parts: str) -> str:
    """An RFC 1035 label (what a Service name must be) made from `parts` joined by '-'.

    Lowercases, turns dots, underscores and other characters into '-', and when the
    result is over 63 characters keeps a prefix plus 8 hex digits of its sha256, so
    two long names stay distinct.
    """
    raw = "-".join(parts)
    name = _NOT_DNS.sub("-", raw.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = "a-" + name
    if len(name) > _DNS_LABEL_MAX:
        tag = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = name[: _DNS_LABEL_MAX - 9].rstrip("-") + "-" + tag
    return name.rstrip("-")


def label_value(text: str) -> str:
    """A Kubernetes label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends."""
    value = _LABEL_VALUE_BAD.sub("-", text)[:_DNS_LABEL_MAX]
    return value.strip("._-")


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
    if not re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*",
                        path):
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
