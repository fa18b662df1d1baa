"""Which media path this relay runs (`conclave relay --forwarder`, docs/native.md),
and the forwarder and subscriber outputs of that path.

`python`: aiortc's sockets and SRTP, relay/forwarder.py (the reference).
`native`: the C engine's sockets and SRTP, and forward.c's `Track` and
`Subscriber`, byte-identical to forwarder.py. The room and the peers see either
through `Forwarder` and `Output`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay import _native
from relay.forwarder import SubscriberOutput, TrackForwarder
from relay.rtp import RtpHeader

PATHS = ("native", "python")

_engine: _native.Engine | None = None  # the native path's engine; None: the Python path


def use_native(engine: _native.Engine | None) -> None:
    """The native path on `engine`, or the Python path (None). Set at start-up,
    before any peer connection or track exists."""
    global _engine
    _engine = engine


def native() -> bool:
    return _engine is not None


class Output(Protocol):
    """One subscriber's view of one track (SubscriberOutput, _native.Subscriber)."""

    @property
    def ssrc(self) -> int: ...
    @property
    def target(self) -> int: ...
    @property
    def layer(self) -> int: ...
    @property
    def sink(self) -> Any: ...
    def use_codec(self, mime: str) -> bool: ...


class LayerView(Protocol):
    """What the layer choice reads of one incoming layer."""

    @property
    def packets(self) -> int: ...
    @property
    def octets(self) -> int: ...
    @property
    def last_arrival(self) -> float: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def padding(self) -> int: ...
    @property
    def joining(self) -> Sequence[Any]: ...


class Forwarder(Protocol):
    """Fans one published track out (TrackForwarder, or NativeForwarder)."""

    @property
    def codec(self) -> str: ...
    @property
    def switches(self) -> int: ...
    @property
    def source_extensions(self) -> Mapping[int, str]: ...
    @property
    def layers(self) -> Sequence[LayerView]: ...
    @property
    def subscribers(self) -> Sequence[Any]: ...
    def set_source_extensions(self, ids: Mapping[int, str]) -> None: ...
    def set_codec(self, mime: str) -> None: ...
    def add_subscriber(self, output: Any, layer: int = 0) -> None: ...
    def set_target(self, output: Any, layer: int) -> None: ...
    def remove_subscriber(self, output: Any) -> None: ...
    def receivers(self, layer: int) -> Sequence[Any]: ...
    def forward(
        self, data: bytes, header: RtpHeader, layer: int = 0, now: float = 0.0
    ) -> Sequence[tuple[Any, bytes]]:
        """The (output, packet) pairs the caller sends; on the native path the
        engine has sent the copies for subscribers with a leg already."""

    def retransmit(self, sub: Any, lost: list[int]) -> list[bytes]: ...
    def sender_reports(
        self, layer: int, ntp: int, rtp_timestamp: int, cname: bytes
    ) -> Sequence[tuple[Any, bytes]]:
        """The (output, SR + SDES) pairs the caller sends to the receivers of
        `layer`; on the native path the engine has sent those with a leg already."""


@dataclass(frozen=True)
class _NativeLayer:
    stats: _native.LayerStats
    joining: list[_native.Subscriber]

    @property
    def packets(self) -> int:
        return self.stats.packets

    @property
    def octets(self) -> int:
        return self.stats.octets

    @property
    def last_arrival(self) -> float:
        return self.stats.last_arrival

    @property
    def width(self) -> int:
        return self.stats.width

    @property
    def height(self) -> int:
        return self.stats.height

    @property
    def padding(self) -> int:
        return self.stats.padding


class NativeForwarder:
    """forward.c's `Track` as the room uses a TrackForwarder."""

    def __init__(self, kind: str, request_keyframe: Callable[[int], None]) -> None:
        self.track = _native.Track(kind, request_keyframe)
        self.source_extensions: dict[int, str] = {}

    @property
    def codec(self) -> str:
        return self.track.codec

    @property
    def switches(self) -> int:
        return self.track.switches

    @property
    def layers(self) -> list[_NativeLayer]:
        track = self.track
        return [
            _NativeLayer(track.layer_stats(i), track.joining(i)) for i in range(track.layer_count)
        ]

    @property
    def subscribers(self) -> list[_native.Subscriber]:
        return self.track.subscribers

    def set_source_extensions(self, ids: Mapping[int, str]) -> None:
        self.source_extensions = dict(ids)
        self.track.set_source_extensions(self.source_extensions)

    def set_codec(self, mime: str) -> None:
        self.track.set_codec(mime)

    def add_subscriber(self, output: _native.Subscriber, layer: int = 0) -> None:
        self.track.add_subscriber(output, layer)

    def set_target(self, output: _native.Subscriber, layer: int) -> None:
        self.track.set_target(output, layer)

    def remove_subscriber(self, output: _native.Subscriber) -> None:
        self.track.remove_subscriber(output)

    def receivers(self, layer: int) -> list[_native.Subscriber]:
        return self.track.receivers(layer)

    def forward(
        self, data: bytes, header: RtpHeader, layer: int = 0, now: float = 0.0
    ) -> list[tuple[_native.Subscriber, bytes]]:
        """The copies for subscribers with a leg leave from the engine at once; the
        others are returned (the C side parses the header itself)."""
        if _engine is None:
            return self.track.forward(data, layer, now)
        return _engine.forward(self.track, data, layer, now)

    def retransmit(self, sub: _native.Subscriber, lost: list[int]) -> list[bytes]:
        return self.track.retransmit(sub, lost)

    def sender_reports(
        self, layer: int, ntp: int, rtp_timestamp: int, cname: bytes
    ) -> list[tuple[_native.Subscriber, bytes]]:
        if _engine is None:
            return self.track.sender_reports(layer, ntp, rtp_timestamp, cname)
        return _engine.sender_reports(self.track, layer, ntp, rtp_timestamp, cname)


def new_forwarder(kind: str, request_keyframe: Callable[[int], None]) -> Forwarder:
    if _engine is not None:
        return NativeForwarder(kind, request_keyframe)
    return TrackForwarder(kind, request_keyframe)


def new_output(
    ssrc: int,
    payload_type: int,
    mid_element: bytes,
    *,
    sink: Any,
    rtx: tuple[int, int] | None,
    extension_ids: Mapping[str, int],
    codecs: Mapping[str, tuple[int, int]],
) -> Output:
    if _engine is not None:
        return _native.Subscriber(
            ssrc, payload_type, mid_element, rtx, extension_ids, codecs,
            next_sequence=random.getrandbits(16), timestamp_base=random.getrandbits(32),
            rtx_sequence=random.getrandbits(16), sink=sink,
        )  # fmt: skip
    return SubscriberOutput(
        ssrc, payload_type, mid_element, sink=sink, rtx=rtx, extension_ids=extension_ids,
        codecs=codecs,
    )  # fmt: skip
