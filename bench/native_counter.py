"""Load participants whose packets the relay's native engine counts, for benchmark
workers that must take more packets than Python can count.

client/loadtest's `Counter` costs its worker about 10 µs of Python per packet, so
the two worker processes of this 2-core machine cannot take much more than 40 000
packets/s: less than a relay on one core forwards. In a worker set up with
`use_native_counting`, every ICE socket is on `relay._native.Engine`
(conclave.ice.use_endpoint) and `NativeCounter` gives each peer connection's SRTP
to the engine once its DTLS handshake is done (relay.native_io.take_over). The
first packet of each stream comes up to Python, which counts it and binds its
SSRC to a track with no subscribers; from then on the engine unprotects each
packet and keeps its RFC 3550 counts and jitter in C (`Leg.reception`), and no
Python runs per packet. Rows are the same as `Counter`'s.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport

from client.loadtest.participants import CountingPeer
from client.loadtest.receive import Counter, hook_rtp, payload_clocks
from conclave.ice import use_endpoint
from relay import _native
from relay.native_io import NativeSockets, take_over


class NativeCounter(Counter):
    """A `Counter` that hands each transport to the engine after its handshake.
    Until then (and for a transport the engine cannot take: a relayed candidate)
    it counts in Python as `Counter` does."""

    def __init__(self) -> None:
        super().__init__()
        self._bound: dict[int, tuple[_native.Leg, _native.Track]] = {}
        self._read: dict[int, tuple[int, int, float]] = {}  # last Leg.reception per SSRC

    def hook(self, pc: RTCPeerConnection, sdp: str) -> None:
        self.clocks.update(payload_clocks(sdp))
        for transport in hook_rtp(pc, self.on_rtp, self._hooked):
            self._hand_to_engine(transport)

    def _hand_to_engine(self, transport: RTCDtlsTransport) -> None:
        setup_srtp = transport._setup_srtp

        def setup_and_hand_over() -> None:
            setup_srtp()
            legs: list[_native.Leg] = []
            leg = take_over(transport, lambda data: self._upcall(legs[0], data), lambda data: None)
            if leg is not None:
                legs.append(leg)

        transport._setup_srtp = setup_and_hand_over  # type: ignore[method-assign]

    def _upcall(self, leg: _native.Leg, data: bytes) -> None:
        """A packet of a stream the leg has not bound: count it, then bind it."""
        self.add(data)
        if len(data) < 12 or not leg.open:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        payload_type = data[1] & 0x7F
        codec = self.clocks.get(payload_type)
        if codec is None or ssrc in self._bound:
            return
        kind, clock = codec
        track = _native.Track(kind, lambda layer: None)
        if leg.bind(ssrc, track, 0, payload_type, clock):
            self._bound[ssrc] = (leg, track)

    def rows(self) -> dict[str, list[Any]]:
        rows = super().rows()
        for ssrc, (leg, _track) in self._bound.items():
            stream = self.streams.get(ssrc)
            if stream is None:
                continue
            try:
                self._read[ssrc] = leg.reception(ssrc)
            except KeyError:  # the leg closed: its last reading stands
                pass
            received, expected, jitter = self._read.get(ssrc, (0, 0, 0.0))
            kind, py_received, py_expected, py_jitter_ms = stream.row()
            jitter_ms = round(jitter * 1000 / stream.clock, 3) if received > 1 else py_jitter_ms
            rows[str(ssrc)] = [kind, py_received + received, py_expected + expected, jitter_ms]
        return rows


def use_native_counting() -> None:
    """Make this worker's participants count with the engine: its ICE sockets on
    an Engine of the running loop, `NativeCounter` as every participant's counter.
    Call from the worker's event loop before any peer connection exists."""
    use_endpoint(NativeSockets().endpoint)
    CountingPeer.counter_type = NativeCounter
