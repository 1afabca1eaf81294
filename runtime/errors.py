"""Every failure the runtime reports. Messages are one line: what, where, what to do.

`ServeError` is the root. Request errors carry the HTTP status they map to, so the
HTTP layer turns any of them into `{"error": "..."}` without a table of its own.
"""


class ServeError(Exception):
    """Root of every error the runtime raises on purpose."""


# -- start-up ---------------------------------------------------------------
class SettingsError(ServeError):
    """A flag or environment variable has a value the runtime cannot use."""


class ModelLoadError(ServeError):
    """A model directory, its model.json or its weights cannot be served."""


class GpuUnavailableError(ServeError):
    """NVML is missing or reports no device (the runtime then runs on CPU)."""


class ExportError(ServeError):
    """The log export archive could not be written."""


# -- requests ---------------------------------------------------------------
class RequestError(ServeError):
    """A request that cannot be answered; `status` is its HTTP status."""

    status = 400
    retry_after_s: int | None = None  # sent as Retry-After when set


class BadRequestError(RequestError):
    """Malformed JSON, a wrong shape or datatype, an unknown input name."""

    status = 400


class UnauthorizedError(RequestError):
    """The bearer token is missing or wrong."""

    status = 401


class ForbiddenError(RequestError):
    """The request is understood but not allowed from where it came."""

    status = 403


class NotFoundError(RequestError):
    """Unknown model, version or path."""

    status = 404


class MethodNotAllowedError(RequestError):
    """The path exists but not for this HTTP method."""

    status = 405


class PayloadTooLargeError(RequestError):
    """The request body is over the configured cap."""

    status = 413


class UnavailableError(RequestError):
    """The server or model is not ready, or the model's queue is full."""

    status = 503


class BusyError(UnavailableError):
    """Requests in flight already hold the memory budget; the client should retry soon."""

    retry_after_s = 1
