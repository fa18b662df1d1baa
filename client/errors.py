"""The one exception type the client raises, so callers and the CLI catch one thing."""

from __future__ import annotations


class ConclaveError(Exception):
    """A request to the control plane or a relay failed.

    `code` is machine-readable where the server gave one (a gRPC status name such as
    ``NOT_FOUND``, or a signalling error code such as ``room_full``); the message is
    meant for a human and already says what failed.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class AdmissionRefused(ConclaveError):
    """The meeting did not let this participant in: the host denied it from the
    waiting room (`code` "denied"), removed it ("removed"), or the meeting is locked
    or suspended ("locked"). Asking again does not help."""
