"""The bundle on the stick: streaming verify, ingest into the content store, inspect."""

from appliance.bundle.stream import find_bundle_parts
from appliance.bundle.verify import (
    VerifiedBundle,
    read_manifest_signed,
    read_manifest_unverified,
    verify_bundle,
)

__all__ = [
    "VerifiedBundle",
    "find_bundle_parts",
    "read_manifest_signed",
    "read_manifest_unverified",
    "verify_bundle",
]
