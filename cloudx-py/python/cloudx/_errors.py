"""The exceptions of cloudx: one class per kind of error of the core, under `Error`."""

from __future__ import annotations

from typing import Any, Optional


class Error(Exception):
    """Every error of cloudx, with the core's `code` (`not_found`, `conflict`, ...) and message.

    A command that runs and fails is not an error (its result has the exit code); an error says
    the call itself could not be done.
    """

    code: str = "internal"

    def __init__(self, code: str, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        """For RateLimited: seconds to wait before trying again."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its code (multiprocessing, concurrent.futures).
        return (type(self), (self.code, self.message, self.retry_after))


class InvalidInput(Error):
    """A bad argument (the message names it)."""


class Unauthenticated(Error):
    """No valid credential: a missing, expired or revoked API key."""


class PermissionDenied(Error):
    """The caller may not do this (a viewer writing, a key without the scope, ...)."""


class NotFound(Error):
    """No such thing, or none the caller may see."""


class Conflict(Error):
    """The request conflicts with the current state (a slug taken, a task still running, ...)."""


class PreconditionFailed(Error):
    """A write named a version that is no longer the latest (`expected_version`)."""


class PayloadTooLarge(Error):
    """Bigger than the configured limit."""


class RateLimited(Error):
    """Too many requests: try again after `retry_after` seconds."""


class QuotaExceeded(Error):
    """A project's quota (bytes or files) would be exceeded."""


class Unavailable(Error):
    """A service the call needs is unavailable (the sandbox on this host, the daemon, the model)."""


class Internal(Error):
    """An unexpected failure (the daemon's log has the details)."""


_BY_CODE = {
    "invalid_input": InvalidInput,
    "unauthenticated": Unauthenticated,
    "permission_denied": PermissionDenied,
    "not_found": NotFound,
    "conflict": Conflict,
    "precondition_failed": PreconditionFailed,
    "payload_too_large": PayloadTooLarge,
    "rate_limited": RateLimited,
    "quota_exceeded": QuotaExceeded,
    "unavailable": Unavailable,
    "internal": Internal,
}


def _class_of(code: str) -> type[Error]:
    return _BY_CODE.get(code, Error)
