"""What the install plan and rollback write to the audit trail: one call per event.

Kept here so the plan itself only says *when* (one line per place), and this module says
*what*: the event, the bundle's identity, and for a refusal the reason in words an auditor
reads (tampered, older, expired, wrong key, not enough space).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import (
    ApplianceError,
    BundleError,
    BundleFormatError,
    DeltaBaseError,
    DigestMismatchError,
    ExpiredBundleError,
    ManifestError,
    MemberError,
    PreflightError,
    RollbackError,
    SignatureError,
    SplitPartError,
    SupportError,
    TruncatedBundleError,
    TrustError,
)
from appliance.site import audit
from appliance.site.sitekey import site_key

if TYPE_CHECKING:
    from appliance.site.plan import InstallPlan
    from signing import TrustRoot

REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (ExpiredBundleError, "expired"),
    (RollbackError, "older"),
    (SignatureError, "wrong key"),
    (TrustError, "trust root"),
    (DigestMismatchError, "tampered"),
    (MemberError, "tampered"),
    (ManifestError, "tampered"),
    (BundleFormatError, "tampered"),
    (TruncatedBundleError, "damaged (cut short)"),
    (SplitPartError, "damaged (parts)"),
    (DeltaBaseError, "missing base release"),
)
PREFLIGHT_REASONS = {"disk": "not enough space", "clock": "clock or expiry",
                     "trust root": "trust root"}


def refusal_reason(error: BaseException, failed_checks: list[str]) -> str | None:
    """The auditor's word for why a bundle was refused, or None when it was not refused
    (the engine or a GPU failed: an install failure, not a refusal)."""
    for cls, reason in REASONS:
        if isinstance(error, cls):
            return reason
    if isinstance(error, PreflightError):
        for name in failed_checks:
            if name in PREFLIGHT_REASONS:
                reason = PREFLIGHT_REASONS[name]
                if name == "clock" and "expired" in str(error):
                    reason = "expired"
                return reason
        return None
    if isinstance(error, BundleError):
        return "refused"
    return None


def _identity(plan: InstallPlan) -> dict[str, Any]:
    bundle = plan.o.bundle
    first = bundle[0] if isinstance(bundle, list) and bundle else bundle
    doc: dict[str, Any] = {"bundle": Path(str(first)).name}
    m = plan.manifest
    if m is not None:
        doc.update(name=m.name, version=m.version, sequence=m.sequence)
    if plan.release is not None:
        doc["manifest_digest"] = plan.site.manifest_digest_of(plan.release.sequence) or ""
    if plan.verified is not None:
        doc["signers"] = [k[:16] for k in plan.verified.signers]
    return doc


def audit_step(plan: InstallPlan, step: str, error: ApplianceError | None) -> None:
    """Record an install's end: success after `switch`, or its failure or refusal."""
    root = plan.site.root
    if error is None:
        if step != "switch":
            return
        prev = plan.previous.sequence if plan.previous is not None else None
        event = "install" if prev is None else "update"
        if plan.release is not None and prev == plan.release.sequence:
            event = "reinstall"
        audit.record(root, event, previous=prev, allow_expired=plan.o.allow_expired,
                     **_identity(plan))
        try:
            site_key(root)  # the key that signs support exports, made at first install
        except SupportError as e:
            audit.log.warning("%s", e)
        return
    failed = [c.name for c in plan.checks if c.level == "fail"]
    reason = refusal_reason(error, failed)
    if reason is not None:
        audit.record(root, "refused", reason=reason, step=step, error=str(error),
                     **_identity(plan))
    else:
        audit.record(root, "install_failed", step=step, error=str(error), **_identity(plan))


def audit_trust(root: Path, trust: TrustRoot, action: str) -> None:
    """Record a change of the keys this site trusts (first trust, rotation)."""
    audit.record(root, "trust", action=action, version=trust.version,
                 threshold=trust.threshold, keys=sorted(k[:16] for k in trust.keys))


def audit_allow_expired(plan: InstallPlan, expires: str, past: timedelta) -> None:
    """Record an install of an expired bundle under `--allow-expired` (how far past it was,
    and how far the override reached)."""
    audit.record(plan.site.root, "allow_expired", expired=expires,
                 days_past_expiry=round(past.total_seconds() / 86400, 1),
                 max_days=plan.o.max_expired.days, **_identity(plan))
