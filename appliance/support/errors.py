"""Errors of the support export, the audit trail and the report. One line each: what, where,
what to do."""

from appliance.errors import ApplianceError


class SupportError(ApplianceError):
    """Root of the support package's errors."""


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
