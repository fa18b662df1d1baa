"""Simulcast layer choice (relay/layers.py) and switching in the forwarder."""

from __future__ import annotations

import itertools
import struct

from relay.forwarder import SubscriberOutput, TrackForwarder
from relay.layers import (
    BACKOFF_S,
    HEADROOM,
    PAUSE_AFTER_S,
    RAISE_INTERVAL_S,
    REFUSED_S,
    RESUME_S,
    TREND_S,
    Layer,
    SubscriberLayers,
    TrackLayers,
)
from relay.rtp import RtpHeader, vp8_keyframe_size

# l, m, h as Chromium sends them from a 1280x720 camera.
LAYERS = [
    Layer(150_000, 320, 180, True),
    Layer(500_000, 640, 360, True),
    Layer(1_700_000, 1280, 720, True),
]


def test_size_request_caps_the_layer_and_raises_go_one_step_at_a_time() -> None:
    choice = SubscriberLayers((320, 180))
    assert choice.choose(LAYERS, 2, 10.0) == 0  # down at once
    choice.max_size = (400, 200)  # larger than l: the next one up covers it
    assert choice.choose(LAYERS, 0, 10.5) == 1
    choice.max_size = (4000, 3000)  # larger than any: the largest, a step later
    assert choice.choose(LAYERS, 1, 10.5 + RAISE_INTERVAL_S / 2) == 1
    assert choice.choose(LAYERS, 1, 10.5 + RAISE_INTERVAL_S) == 2
    choice.max_size = None
    assert choice.choose(LAYERS, 2, 20.0) == 2


def test_without_an_estimate_the_size_decides() -> None:
    choice = SubscriberLayers()
    assert choice.choose(LAYERS, 0, 0.0) == 1
    assert choice.choose(LAYERS, 1, RAISE_INTERVAL_S) == 2


def flat(choice: SubscriberLayers, bitrate: int, start: float, end: float) -> float:
    """REMBs of `bitrate` every half second from `start` to `end`."""
    now = start
    while now <= end:
        choice.set_estimate(bitrate, now)
        now += 0.5
    return now


def test_a_flat_low_estimate_keeps_the_lowest_layer() -> None:
    choice = SubscriberLayers()
    now = flat(choice, 100_000, 0.0, TREND_S)  # a receiver that cannot take more
    assert choice.limit(LAYERS[1].bitrate, now) == 100_000
    assert choice.choose(LAYERS, 1, now) == 0
    for _ in range(60):
        now = flat(choice, 100_000, now, now + 0.5)
        assert choice.choose(LAYERS, 0, now) == 0
    # Lifted: the estimate rises, and the layers follow one step at a time.
    for step in range(1, 10):
        choice.set_estimate(100_000 + step * 20_000, now + step * 0.5)
    now += 5
    assert choice.choose(LAYERS, 0, now) == 1
    assert choice.choose(LAYERS, 1, now + RAISE_INTERVAL_S) == 2


def test_an_estimate_clamped_above_what_arrives_limits_nothing() -> None:
    """A receiver on l reports about 1.5x l's bitrate and no more, however fast its
    network: that is no reason to stay on l."""
    choice = SubscriberLayers()
    now = flat(choice, int(1.5 * LAYERS[0].bitrate), 0.0, TREND_S)
    assert HEADROOM <= 1.5 and choice.limit(LAYERS[0].bitrate, now) is None
    assert choice.choose(LAYERS, 0, now) == 1


def test_a_drop_binds_for_a_back_off_that_doubles_when_it_recurs() -> None:
    choice = SubscriberLayers()
    now = flat(choice, 2_000_000, 0.0, TREND_S)
    assert choice.choose(LAYERS, 2, now) == 2
    choice.set_estimate(600_000, now)  # congestion on h
    assert choice.choose(LAYERS, 2, now) == 1
    # The estimate recovers at once, but the cap holds for the back-off.
    choice.set_estimate(2_000_000, now + 1)
    assert choice.choose(LAYERS, 1, now + BACKOFF_S[0] - 0.1) == 1
    assert choice.choose(LAYERS, 1, now + BACKOFF_S[0]) == 2  # the next try
    again = now + BACKOFF_S[0] + 1
    choice.set_estimate(2_000_000, again - 0.5)
    choice.set_estimate(400_000, again)  # failed: twice as long this time
    assert choice.choose(LAYERS, 2, again) == 0
    choice.set_estimate(2_000_000, again + 1)
    assert choice.choose(LAYERS, 0, again + 2 * BACKOFF_S[0] - 0.1) == 0
    assert choice.choose(LAYERS, 0, again + 2 * BACKOFF_S[0]) == 1


def test_unavailable_layers_are_skipped_and_a_lost_layer_is_left() -> None:
    no_low = [Layer(0, 0, 0, False), *LAYERS[1:]]  # a 360p camera: no quarter size
    choice = SubscriberLayers((160, 90))
    assert choice.choose(no_low, 0, 0.0) == 1
    gone = [LAYERS[0], LAYERS[1], Layer(1_700_000, 1280, 720, False)]
    choice = SubscriberLayers()
    assert choice.choose(gone, 2, 10.0) == 1
    assert choice.choose([Layer(0, 0, 0, False)] * 3, 2, 10.0) == 2  # nothing known


def test_track_layers_measure_and_dynacast() -> None:
    layers = TrackLayers(3)
    layers.measure([0, 0, 0], [0.0, 0.0, 0.0], 0.0)
    layers.measure([10_000, 50_000, 0], [0.9, 0.9, 0.0], 1.0)
    assert layers.live == [True, True, False]
    assert [int(b) for b in layers.bitrates] == [80_000, 400_000, 0]
    sizes = [(320, 180), (640, 360), (0, 0)]
    assert [v.available for v in layers.views(sizes, 1.0)] == [True, True, False]
    # Only l is needed: m is paused after a while, never l (the lowest being sent).
    assert layers.dynacast(set(), 1.0) is None
    assert layers.dynacast(set(), 1.0 + PAUSE_AFTER_S) == {0}
    layers.measure([20_000, 50_000, 0], [3.9, 0.9, 0.0], 4.0)
    assert not layers.live[1] and int(layers.bitrates[1]) == 400_000  # kept while paused
    assert layers.views(sizes, 4.0)[1].available  # paused by the relay: can resume
    assert not layers.views(sizes, 4.0, live_only=True)[1].available
    # Needed again: resumed at once; a layer that then sends nothing is given up.
    assert layers.dynacast({1}, 4.0) == {0, 1}  # h stays paused
    layers.measure([30_000, 50_000, 0], [4.9, 0.9, 0.0], 5.0)
    assert layers.views(sizes, 5.0)[1].available  # resuming
    layers.measure([40_000, 50_000, 0], [5.9 + RESUME_S, 0.9, 0.0], 6.0 + RESUME_S)
    assert not layers.views(sizes, 6.0 + RESUME_S)[1].available
    assert layers.dynacast(set(), 6.0 + RESUME_S) is None
    assert layers.dynacast(set(), 6.0 + RESUME_S + PAUSE_AFTER_S) == {0}
    now = 6.0 + RESUME_S + PAUSE_AFTER_S
    assert not layers.views(sizes, now)[1].available  # refused: not asked again yet
    assert layers.views(sizes, now + REFUSED_S)[1].available


# -- switching in the forwarder -----------------------------------------------


def vp8(key: bool, width: int = 0, height: int = 0, start: bool = True) -> bytes:
    descriptor = bytes([0x90 if start else 0x80, 0x80, 0x05])
    if not key:
        return descriptor + bytes([0x31, 0x02, 0x00]) + b"delta"
    size = struct.pack("<HH", width, height)
    return descriptor + bytes([0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A]) + size + b"key"


def packet(ssrc: int, sequence: int, timestamp: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0x80 | 97, sequence, timestamp, ssrc) + payload


def test_keyframe_size_is_read_from_the_vp8_header() -> None:
    assert vp8_keyframe_size(vp8(True, 1280, 720)) == (1280, 720)
    assert vp8_keyframe_size(vp8(False)) is None
    assert vp8_keyframe_size(vp8(True, 1280, 720)[:-8]) is None  # truncated
    assert vp8_keyframe_size(vp8(True, 0, 720)) is None


def test_switch_waits_for_a_keyframe_and_keeps_numbering_continuous() -> None:
    requests: list[int] = []
    forwarder = TrackForwarder("video", requests.append)
    sub = SubscriberOutput(0xABC, 96, b"")
    forwarder.add_subscriber(sub, 0)
    assert requests == [0]
    sent: list[RtpHeader] = []
    payloads: list[bytes] = []
    # Three layers, each with its own SSRC, sequence space and timestamp base.
    base = {0: (100, 1_000), 1: (60_000, 5_000_000), 2: (65_530, 4_294_960_000)}
    sizes = {0: (320, 180), 1: (640, 360), 2: (1280, 720)}

    def frame(layer: int, index: int, key: bool, now: float) -> None:
        first_seq, first_ts = base[layer]
        sequence = (first_seq + index) & 0xFFFF
        timestamp = (first_ts + index * 3000) & 0xFFFFFFFF
        data = packet(0x10 + layer, sequence, timestamp, vp8(key, *sizes[layer]))
        for _, out in forwarder.forward(data, RtpHeader.parse(data), layer, now):
            header = RtpHeader.parse(out)
            sent.append(header)
            payloads.append(out[header.payload_offset :])

    for index in range(10):  # 30 fps; a key frame on every layer at index 0 and 6
        now = index / 30
        for layer in range(3):
            frame(layer, index, index % 6 == 0, now)
        if index == 2:
            forwarder.set_target(sub, 2)
            assert requests == [0, 2]
    for index in range(10, 14):  # m's next key frame comes at 12
        forwarder.set_target(sub, 1)
        for layer in range(3):
            frame(layer, index, index == 12 and layer == 1, index / 30)
    assert [forwarder.layers[i].width for i in range(3)] == [320, 640, 1280]
    # l from its first key frame up to index 6 (sent before h's of the same
    # instant), h from index 6 to 11, m from index 12.
    sizes_seen = [vp8_keyframe_size(p) for p in payloads if vp8_keyframe_size(p)]
    assert sizes_seen == [(320, 180), (320, 180), (1280, 720), (640, 360)]
    assert len(sent) == 7 + 6 + 2 and forwarder.switches == 2 and sub.layer == 1
    assert all(h.ssrc == 0xABC and h.payload_type == 96 for h in sent)
    sequences = [h.sequence for h in sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(sequences))
    stamps = [h.timestamp for h in sent]
    steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps)]
    assert all(0 < step <= 3000 for step in steps), steps  # onward, ~one frame at a switch

    # A NACK across both switches is answered from each number's own layer.
    retransmitted = forwarder.retransmit(sub, sequences)
    assert [RtpHeader.parse(p).timestamp for p in retransmitted] == stamps
    assert [p[RtpHeader.parse(p).payload_offset :] for p in retransmitted] == payloads


def test_a_removed_or_retargeted_subscriber_leaves_every_list() -> None:
    forwarder = TrackForwarder("video", lambda _layer: None)
    sub = SubscriberOutput(1, 96, b"")
    forwarder.add_subscriber(sub, 1)
    forwarder.set_target(sub, 2)
    assert forwarder.layers[1].joining == [] and forwarder.layers[2].joining == [sub]
    data = packet(5, 1, 1, vp8(True, 1280, 720))
    forwarder.forward(data, RtpHeader.parse(data), 2, 0.0)
    forwarder.set_target(sub, 0)
    forwarder.set_target(sub, 2)  # back to the current layer before the switch
    assert forwarder.layers[0].joining == [] and forwarder.receivers(2) == [sub]
    forwarder.set_target(sub, 0)
    forwarder.remove_subscriber(sub)
    assert all(not s.joining and not s.receivers for s in forwarder.layers)
    assert forwarder.subscribers == [] and not sub.started


def padding_only(ssrc: int, sequence: int, timestamp: int) -> bytes:
    return struct.pack("!BBHII", 0xA0, 97, sequence, timestamp, ssrc) + bytes(254) + b"\xff"


def test_padding_is_dropped_and_numbering_stays_continuous() -> None:
    forwarder = TrackForwarder("video", lambda _layer: None)
    sub = SubscriberOutput(0xABC, 96, b"")
    forwarder.add_subscriber(sub, 0)
    sent: dict[int, bytes] = {}

    def feed(data: bytes) -> list[int]:
        numbers = []
        for _, out in forwarder.forward(data, RtpHeader.parse(data), 0, 0.0):
            header = RtpHeader.parse(out)
            sent[header.sequence] = out[header.payload_offset :]
            numbers.append(header.sequence)
        return numbers

    # Media 65533 (key frame), padding 65534..1 (across the wrap), media 2, 3;
    # media 4 lost for now; padding 5, 6; media 7; then 4 arrives late (repaired).
    numbers = feed(packet(5, 65533, 0, vp8(True, 320, 180)))
    for sequence in (65534, 65535, 0, 1):
        assert feed(padding_only(5, sequence, 0)) == []
    numbers += feed(packet(5, 2, 3000, vp8(False)))
    numbers += feed(packet(5, 3, 6000, vp8(False)))
    for sequence in (5, 6):
        feed(padding_only(5, sequence, 6000))
    numbers += feed(packet(5, 7, 9000, vp8(False)))
    first = numbers[0]
    assert [(n - first) & 0xFFFF for n in numbers] == [0, 1, 2, 4]  # 3 is media 4
    late = feed(packet(5, 4, 6000, vp8(False, 0, 0) + b"late"))
    assert late == [(first + 3) & 0xFFFF]  # fills the gap the subscriber saw
    assert forwarder.layers[0].padding == 6
    # A NACK names output numbers; the cache answers with the packets sent.
    again = forwarder.retransmit(sub, [(first + 3) & 0xFFFF, (first + 2) & 0xFFFF])
    assert [p[RtpHeader.parse(p).payload_offset :] for p in again] == [
        sent[(first + 3) & 0xFFFF], sent[(first + 2) & 0xFFFF]
    ]  # fmt: skip
    # The layer's traffic counts media only.
    assert forwarder.layers[0].packets == 5
