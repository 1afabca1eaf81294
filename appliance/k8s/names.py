"""Names as Kubernetes spells them: object names, label values, the k3s archive's file name."""

from __future__ import annotations

import hashlib
import re

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


def archive_name(name: str, sequence: int) -> str:
    """The image archive's file name in the k3s images directory: one per release.

    k3s imports `*.tar` as is (also .tar.gz/.zst, which cost CPU at every agent start).
    """
    return f"appliance-{name}-{sequence}.tar"
