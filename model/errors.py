"""The one error type a bad checkpoint raises; the service maps it to a 4xx."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint we refuse to read.

    `reason` is a short stable code (used as a metrics label and in API errors); the message says what is
    wrong in words a user can act on.
    """

    #: reasons that mean "this is not a safetensors file at all" (HTTP 415); the rest are 422.
    UNSUPPORTED_MEDIA = frozenset({"pickle", "zip", "not_safetensors"})

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def http_status(self) -> int:
        return 415 if self.reason in self.UNSUPPORTED_MEDIA else 422
