"""Every failure the appliance can raise. Messages are one line: what, where, what to do.

Roots: `BundleError` (the bundle on the stick), `SpecError` (appliance.yaml),
`StoreError` (the local content store), `SiteError` (site state and releases),
`EngineError` (the container engine or process supervisor), `PlacementError`
(GPU plan), `InstallError` (a step of the install plan).

Each error carries the documented exit code of the commands that end with it
(`exit_code`; the table is in docs/field-guide.md), so a front end never needs an
`isinstance` chain of its own.
"""

from signing import SigningError

EXIT_ERROR = 1  # anything without a more precise code
EXIT_PREFLIGHT = 3  # preflight failed, nothing changed
EXIT_BUNDLE = 4  # bundle refused (signature, expiry, sequence, corrupted)
EXIT_PLACEMENT = 5  # does not fit the GPUs
EXIT_ENGINE = 6  # engine or image load failed before start, nothing changed
EXIT_ROLLED_BACK = 7  # new release failed after start; the previous release is serving
EXIT_NOTHING_SERVING = 8  # failed and nothing earlier could be restored
EXIT_LOCKED = 9  # another installer holds the site lock


class ApplianceError(Exception):
    """Root of every error the appliance reports to a person."""

    exit_code: int = EXIT_ERROR


def exit_code(e: BaseException) -> int:
    """The documented exit code for any error a command may end with."""
    if isinstance(e, SigningError):  # the trust library knows nothing of our exit codes
        return EXIT_BUNDLE
    return e.exit_code if isinstance(e, ApplianceError) else EXIT_ERROR


# -- the bundle -------------------------------------------------------------
class BundleError(ApplianceError):
    """The bundle cannot be trusted or read."""

    exit_code = EXIT_BUNDLE


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

    exit_code = EXIT_BUNDLE


class LayerError(StoreError):
    """A layer holds a member that must not be written to disk (link, device, `..`)."""


# -- engines and placement --------------------------------------------------
class EngineError(ApplianceError):
    """The container engine or the process supervisor failed."""

    exit_code = EXIT_ENGINE


class EngineUnavailableError(EngineError):
    """The engine's socket does not answer."""


class ImageLoadError(EngineError):
    """The engine refused an image or loaded one whose id differs from the manifest."""


class ConfineError(EngineError):
    """The process engine could not confine a service (namespace, mounts, chroot, user)."""


class HealthTimeoutError(EngineError):
    """A started release did not report ready in time, or its process/container died."""


class GpuMissingError(HealthTimeoutError):
    """A `gpu: required` service came up with a model on the CPU (no GPU, driver or CUDA)."""


class PlacementError(ApplianceError):
    """The models do not fit the GPUs (or the CPU plan) of this server."""

    exit_code = EXIT_PLACEMENT


class NodeCapacityError(PlacementError):
    """A model needs more GPU memory than the cluster's nodes declare (`appliance k8s render`)."""


class InstallError(ApplianceError):
    """An install step failed; the previous release keeps serving."""


class PreflightError(InstallError):
    """A preflight check failed; nothing was changed."""

    exit_code = EXIT_PREFLIGHT


class ReleaseFailedError(InstallError):
    """The new release failed after it was started; the previous release was restored."""

    previous_serving: bool = True  # False on a first install: nothing serves now

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return EXIT_ROLLED_BACK if self.previous_serving else EXIT_NOTHING_SERVING


class AcceptanceError(ReleaseFailedError):
    """The new release answered a signed sample outside its tolerance."""


class CanaryRejectedError(ReleaseFailedError):
    """The new release did worse than the serving one on its share of live traffic."""


class RestoreError(InstallError):
    """The new release failed and the previous release could not be brought back."""

    exit_code = EXIT_NOTHING_SERVING


class InstallLockedError(InstallError):
    """Another installer is working on the same site."""

    exit_code = EXIT_LOCKED


# -- support: the audit trail, the export, the report -----------------------
class SupportError(ApplianceError):
    """Root of the support export's, the audit trail's and the report's errors."""


class AuditChainError(SupportError):
    """The audit trail's hash chain is broken: a line was edited, removed or inserted."""


class ExportWriteError(SupportError):
    """The export could not be written (stick full, pulled, read-only); nothing whole is left."""


class ExportIntegrityError(SupportError):
    """An export is damaged, edited, unsigned or not an export at all."""


class ExportTooLargeError(ExportWriteError):
    """Even the export's essentials do not fit in `--max-size`."""


class ReportError(SupportError):
    """The report could not be made (no exports given, or one cannot be read)."""


# -- the front door (appliance/frontdoor) -------------------------------------
class FrontDoorError(ApplianceError):
    """The front-door proxy, its certificate, token or canary cannot do what was asked."""


class TlsError(FrontDoorError):
    """A site certificate or key is unreadable, mismatched, expired or not for this host."""


class TokenError(FrontDoorError):
    """The site token file is missing, unreadable, or has loose permissions."""


class CanaryFlagError(FrontDoorError):
    """A `--canary SHARE:WINDOW` flag or a canary bound is malformed."""


class ProxyConfigError(FrontDoorError):
    """The proxy configuration asked for is inconsistent (clashing ports, bad names)."""


class ProxyApiError(FrontDoorError):
    """HAProxy's runtime API is unreachable or refused a command."""


class ProxyMissingError(FrontDoorError):
    """The process engine's front door needs HAProxy and this host has none."""

    exit_code = EXIT_PREFLIGHT


# -- the stick ----------------------------------------------------------------
class StickError(ApplianceError):
    """A stick's layout, checksum list or signature is missing, altered, or cannot be written."""
