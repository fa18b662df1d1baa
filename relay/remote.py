"""Participants on another relay of the meeting, as this relay's room sees them.

A remote participant is on the roster like anyone else, and its tracks are
forwarded to local subscribers like local ones; its packets come over the link
from its own relay (relay/link.py) instead of from a peer connection. `RemotePeer`
stands where a local participant's `ParticipantPeer` would: it maps the payload
types its relay announced to codecs, keeps the link's loss state per track layer
(to NACK the other relay) and answers the few questions a room asks of a peer.
"""

from __future__ import annotations

from typing import Any

from relay.reception import MissingPackets
from relay.speaker import AUDIO_LEVEL_URI


class RemotePeer:
    """The stand-in peer of a participant on relay `origin`."""

    def __init__(self, participant_id: str, origin: str) -> None:
        self.participant_id = participant_id
        self.origin = origin
        self.join_started_ms: int | None = None  # its join is timed by its own relay
        self.audio_level_id: int | None = None
        self.subscriptions: dict[str, Any] = {}  # it subscribes on its own relay
        self.publish_codec: dict[str, str] = {}  # source -> MIME type of the latest packet
        self.codecs: dict[int, str] = {}  # payload type -> lower-case MIME type
        self._missing: dict[tuple[int, int], MissingPackets] = {}

    def learn(self, codecs: dict[int, str], extensions: dict[int, str]) -> None:
        """What its relay announced about one of its tracks."""
        self.codecs.update(codecs)
        level = next((i for i, uri in extensions.items() if uri == AUDIO_LEVEL_URI), None)
        if level is not None:
            self.audio_level_id = level

    def missing(self, index: int, layer: int) -> MissingPackets:
        """Gaps on the link in one layer of one of its tracks."""
        state = self._missing.get((index, layer))
        if state is None:
            state = self._missing[(index, layer)] = MissingPackets()
        return state

    def forget(self, index: int) -> None:
        for key in [k for k in self._missing if k[0] == index]:
            del self._missing[key]

    def remove_subscription(self, track_id: str) -> None:
        return None

    def media_flowing(self) -> None:
        """Its join is timed by its own relay."""

    async def close(self) -> None:
        """Nothing to close here: its connection is on its own relay."""
