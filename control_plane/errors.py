"""Named control-plane failures; the service maps each to one gRPC status code."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of every failure the control plane reports to callers on purpose."""


class InvalidArgument(ControlPlaneError):
    """A request field is missing, too long or malformed."""


class RoomNotFound(ControlPlaneError):
    """No meeting with this id exists (never created, or ended)."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"room {room_id!r} not found")
        self.room_id = room_id


class NoSuchMeeting(ControlPlaneError):
    """JoinRoom's one refusal for an unknown meeting and a wrong passcode alike, so
    that the reply says nothing about which ids are in use."""

    def __init__(self) -> None:
        super().__init__("no meeting with this id and passcode")


class NotHost(ControlPlaneError):
    """A host call for an unknown meeting or with a wrong host key (one reply)."""

    def __init__(self) -> None:
        super().__init__("no meeting with this id and host key")


class TooManyAttempts(ControlPlaneError):
    """Failed attempts for this meeting or from this address exceeded the limits."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed attempts; try again in {max(1, round(retry_after))} s")
        self.retry_after = retry_after


class NoRelayAvailable(ControlPlaneError):
    """No live relay node has headroom for a new meeting."""

    def __init__(self, room_id: str = "") -> None:
        where = f" for room {room_id!r}" if room_id else ""
        super().__init__(f"no relay node with free capacity is available{where}")
        self.room_id = room_id


class PlacementUnsettled(ControlPlaneError):
    """The meeting's placement still names a relay that has left; etcd has not removed it yet."""

    def __init__(self, room_id: str, node_id: str) -> None:
        super().__init__(
            f"room {room_id!r} is still placed on departed node {node_id!r}; retry shortly"
        )
        self.room_id = room_id
        self.node_id = node_id


class RelayUnavailable(ControlPlaneError):
    """The relay hosting the meeting did not answer its RelayService in time."""

    def __init__(self, node_id: str, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(f"relay node {node_id!r} is unreachable{suffix}")
        self.node_id = node_id


class StoreUnavailable(ControlPlaneError):
    """etcd could not be reached or refused the request."""


class MeetingLocked(ControlPlaneError):
    """The meeting is locked (or suspended): nobody new may enter but its hosts."""

    def __init__(self) -> None:
        super().__init__("the meeting is locked")


class RemovedFromMeeting(ControlPlaneError):
    """A host removed this participant (or a participant from the same address)."""

    def __init__(self) -> None:
        super().__init__("you were removed from this meeting")


class NoSuchParticipant(ControlPlaneError):
    """A host control named a participant the meeting's relay does not have (or the
    meeting is not on any relay now)."""

    def __init__(self) -> None:
        super().__init__("no such participant")


class PolicyConflict(ControlPlaneError):
    """A host asked for a meeting state the rules do not allow."""


class RelayRefused(ControlPlaneError):
    """The relay turned a host control down; `code` is its gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
