"""Errors the relay reports to clients; `code` is the signalling error code."""

from __future__ import annotations


class SignalingError(Exception):
    """A client message was refused; sent back as an `error` message."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


class RoomFull(SignalingError):
    """The meeting reached its participant limit on this node."""

    def __init__(self, limit: int) -> None:
        super().__init__("room_full", f"the meeting is full ({limit} participants)", 4004)
