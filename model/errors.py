"""The one error type a bad checkpoint raises; the service maps it to a 4xx (app.errors.checkpoint_status)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint we refuse to read.

    `reason` is a short stable code (used as a metrics label and in API errors); the message says what is
    wrong in words a user can act on.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
