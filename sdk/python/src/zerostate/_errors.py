"""Errors the SDK raises, and the two a task handler raises to steer the outcome."""

from __future__ import annotations

from typing import Optional

import httpx


class ZeroStateError(Exception):
    """Base of every error the SDK raises about the server or the connection."""


class ApiError(ZeroStateError):
    """The server answered with an error: ``{"error": code, "message": message}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds from ``Retry-After`` on a 429 or 503, when the server sent one.
        self.retry_after = retry_after


class Unauthorized(ApiError):
    """401: the token or API key is missing, wrong, revoked or expired."""


class NotFound(ApiError):
    """404: no such object, or not one these credentials may see."""


class Conflict(ApiError):
    """409: the object's state forbids the change (e.g. canceling a finished task)."""


class NonRetryable(Exception):
    """Raise from a task handler to fail the task at once, without another attempt.

    Any other exception fails the attempt and the server retries the task (with backoff)
    until it has used its ``max_attempts``.
    """


class Canceled(Exception):
    """Raised inside a task handler by ``output``/``log``/``progress`` once the task is
    no longer the handler's to work on: the user canceled it, its lease was lost, or the
    agent is shutting down and handed it back. Nothing is reported for such a task, so
    there is no need to catch it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"task stopped: {reason}")
        #: ``"canceled"`` (by the user), ``"lost"`` (lease expired, task gone) or
        #: ``"shutdown"`` (handed back because the agent is stopping).
        self.reason = reason


class OutputLimitExceeded(NonRetryable):
    """The task's output passed the server's limit (413 ``output_limit``); another
    attempt would hit it again, so this fails the task for good."""


def error_from_response(response: httpx.Response) -> ApiError:
    """Builds the typed error for a non-success answer in the contract's error format."""
    code = "http_error"
    message = response.reason_phrase or "request failed"
    try:
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("error", code))
            message = str(body.get("message", message))
    except ValueError:
        pass
    retry_after: Optional[float] = None
    raw = response.headers.get("retry-after")
    if raw is not None:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    cls = {401: Unauthorized, 404: NotFound, 409: Conflict}.get(response.status_code, ApiError)
    return cls(response.status_code, code, message, retry_after)


def is_missing_route(error: ApiError) -> bool:
    """Whether a 404 means the server has no such route (an older server), not that the
    object is unknown."""
    return error.status == 404 and error.message.startswith("no route for")
