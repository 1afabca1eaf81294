"""Every failure the appliance can raise. Messages are one line: what, where, what to do.

Roots: `BundleError` (the bundle on the stick), `SpecError` (appliance.yaml),
`StoreError` (the local content store), `SiteError` (site state and releases),
`EngineError` (the container engine or process supervisor), `PlacementError`
(GPU plan), `InstallError` (a step of the install plan).
"""


class ApplianceError(Exception):
    """Root of every error the appliance reports to a person."""


# -- the bundle -------------------------------------------------------------
class BundleError(ApplianceError):
    """The bundle cannot be trusted or read."""


class BundleFormatError(BundleError):
    """Not a bundle: empty, random bytes, not a tar, or members out of order."""


class ManifestError(BundleError):
    """The signed manifest is malformed, too large, or of an unknown schema."""


class SignatureError(BundleError):
    """The bundle is unsigned, signed by an untrusted key, or below threshold."""


class ExpiredBundleError(BundleError):
    """The manifest's expiry is before the site clock."""


class RollbackError(BundleError):
    """The bundle's sequence is not newer than the highest one this site accepted."""


class MemberError(BundleError):
    """A tar member is missing, unlisted, duplicated, oversized, or has a bad name/type."""


class DigestMismatchError(BundleError):
    """A member's bytes do not hash to the digest the manifest pins."""


class TruncatedBundleError(BundleError):
    """The bundle ends before its last member is complete (a copy cut short)."""


class DeltaBaseError(BundleError):
    """A delta bundle's base release or its blobs are not in the local store."""


class SplitPartError(BundleError):
    """A part of a split bundle is missing, reordered, or from another bundle."""


class BundleWriteError(BundleError):
    """The bundler could not write the bundle (disk full, unwritable place)."""


# -- the spec ---------------------------------------------------------------
class SpecError(ApplianceError):
    """appliance.yaml is malformed or names a file that cannot be used."""


# -- site -------------------------------------------------------------------
class StoreError(ApplianceError):
    """The local content store is unusable or holds a corrupted blob."""


class SiteError(ApplianceError):
    """Site state, releases or the current pointer are missing or inconsistent."""


class TrustError(ApplianceError):
    """The trust root file is missing, malformed, or a rotation is invalid."""


class LayerError(StoreError):
    """A layer holds a member that must not be written to disk (link, device, `..`)."""


# -- engines and placement --------------------------------------------------
class EngineError(ApplianceError):
    """The container engine or the process supervisor failed."""


class EngineUnavailableError(EngineError):
    """The engine's socket does not answer."""


class ImageLoadError(EngineError):
    """The engine refused an image or loaded one whose id differs from the manifest."""


class HealthTimeoutError(EngineError):
    """A started release did not report ready in time, or its process/container died."""


class PlacementError(ApplianceError):
    """The models do not fit the GPUs (or the CPU plan) of this server."""


class NodeCapacityError(PlacementError):
    """A model needs more GPU memory than the cluster's nodes declare (`appliance k8s render`)."""


class InstallError(ApplianceError):
    """An install step failed; the previous release keeps serving."""


class PreflightError(InstallError):
    """A preflight check failed; nothing was changed."""


class ReleaseFailedError(InstallError):
    """The new release failed after it was started; the previous release was restored."""

    previous_serving: bool = True  # False on a first install: nothing serves now


class AcceptanceError(ReleaseFailedError):
    """The new release answered a signed sample outside its tolerance."""


class RestoreError(InstallError):
    """The new release failed and the previous release could not be brought back."""


class InstallLockedError(InstallError):
    """Another installer is working on the same site."""


class StickError(ApplianceError):
    """A stick's layout, checksum list or signature is missing, altered, or cannot be written."""
