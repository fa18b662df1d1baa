"""The C receive bookkeeping (relay/native/reception.c) against the Python
reference: ReceptionStats and rtcp.report_block, MissingPackets, rtcp.nack, and the
audio level VoiceLevel.observe/add reads. Both are driven by the same random
operations and must give the same bytes, the same lists in the same order and the
same floats after every step."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _native as nr
from relay import rtcp
from relay.reception import MissingPackets, ReceptionStats
from relay.rtp import RtpHeader
from relay.speaker import _AMPLITUDE, VoiceLevel

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reals(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


# --- sequences of packets ------------------------------------------------------------

# (kind, sequence step or value, timestamp step or value, arrival step)
step = st.one_of(
    st.tuples(st.just("next"), st.just(1), st.integers(-200, 2000), reals(0, 0.05)),
    st.tuples(
        st.just("next"),
        st.integers(-40, 40),
        st.integers(-5000, 5000),
        reals(-0.01, 0.3),
    ),
    st.tuples(
        st.just("next"),
        st.integers(-300, 300),
        st.integers(-(2**31), 2**31),
        reals(0, 20),
    ),
    st.tuples(
        st.just("jump"),
        st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
        reals(0, 1),
    ),
    st.tuples(
        st.just("restart"),
        st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
        reals(0, 1),
    ),
)


Step = tuple[str, int, int, float]


def packets(
    start_seq: int, start_ts: int, start_s: float, steps: list[Step]
) -> list[tuple[int, int, float]]:
    """(sequence, timestamp, arrival) of each packet the steps describe."""
    seq, ts, now = start_seq, start_ts, start_s
    out = []
    for kind, dseq, dts, dt in steps:
        now += dt
        if kind == "next":
            seq, ts = (seq + dseq) & 0xFFFF, (ts + dts) & 0xFFFFFFFF
            out.append((seq, ts, now))
        else:  # a jump; a restart is a jump the next packet follows
            seq, ts = dseq, dts
            out.append((seq, ts, now))
            if kind == "restart":
                seq, ts = (seq + 1) & 0xFFFF, (ts + 960) & 0xFFFFFFFF
                out.append((seq, ts, now + 0.02))
    return out


start_seq = st.one_of(st.integers(0, 0xFFFF), st.integers(0xFFFF - 50, 0xFFFF))
start_ts = st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 100_000, 2**32 - 1))
start_s = st.one_of(reals(0, 1e6), st.just(0.0))
clock_rate = st.one_of(st.sampled_from([8000, 16000, 48000, 90000]), st.integers(0, 2**32 - 1))

# between runs of packets: a sender report, or a report at some time
interlude = st.one_of(
    st.tuples(st.just("sr"), st.integers(0, 2**64 - 1), reals(-10, 10)),
    st.tuples(st.just("sr"), st.integers(0, 0xFFFF), reals(-10, 10)),  # LSR 0
    st.tuples(st.just("report"), reals(-10, 1000), st.just(0)),
    st.tuples(st.just("report"), reals(-1e300, 1e300), st.just(0)),
    # a delay past 2**63/65536 s: Python's int() is exact there, a C cast would not be
    st.tuples(st.just("report"), reals(1e14, 1e21), st.just(0)),
    st.tuples(st.just("report"), reals(-1e21, -1e14), st.just(0)),
)


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    clock_rate,
    start_seq,
    start_ts,
    start_s,
    st.lists(st.tuples(st.lists(step, max_size=30), interlude), max_size=12),
)
def test_reception_matches_python(
    ssrc: int,
    rate: int,
    seq0: int,
    ts0: int,
    t0: float,
    rounds: list[tuple[list[Step], tuple[str, int, float]]],
) -> None:
    py, c = ReceptionStats(ssrc, rate), nr.Reception(ssrc, rate)
    seq, ts, now = seq0, ts0, t0
    for steps, (kind, value, when) in rounds:
        for sequence, timestamp, arrival in packets(seq, ts, now, steps):
            py.update(sequence, timestamp, arrival)
            c.update(sequence, timestamp, arrival)
            seq, ts, now = sequence, timestamp, arrival
            assert c.jitter == py.jitter
            assert c.received == py.received
        if kind == "sr":
            py.sender_report(value, now + when)
            c.sender_report(value, now + when)
        else:
            at = now + when
            assert c.report(at) == py.report(at)
    assert c.report(now + 1) == py.report(now + 1)


def test_reception_wraps_and_restarts() -> None:
    """Deterministic: a wrap, a restart after a jump, a lone jump ignored,
    reordering and duplicates; the report after each."""
    py, c = ReceptionStats(7, 90000), nr.Reception(7, 90000)
    now = 100.0
    sequence = [65530 + i for i in range(6)] + [
        0,
        1,
        3,
        2,
        2,
        4,
        40000,
        5,
        6,
        30000,
        30001,
        30002,
        29990,
    ]
    for i, seq in enumerate(sequence):
        now += 0.033 + (i % 3) * 0.004
        py.update(seq & 0xFFFF, (i * 3000) & 0xFFFFFFFF, now)
        c.update(seq & 0xFFFF, (i * 3000) & 0xFFFFFFFF, now)
        if i == 8:
            py.sender_report(0x0123456789ABCDEF, now)
            c.sender_report(0x0123456789ABCDEF, now)
        assert c.report(now + 0.5) == py.report(now + 0.5)
    assert c.jitter == py.jitter and c.jitter > 0


@pytest.mark.parametrize("delay_s", [0.5, -0.5, 1e15, 3.7e17, -2.9e18, 1e20, 1e300, -1e300])
def test_reception_delay_masked_as_python(delay_s: float) -> None:
    """int(delay * 65536) & 0xFFFFFFFF is exact in Python at any size."""
    py, c = ReceptionStats(1, 48000), nr.Reception(1, 48000)
    for r in (py, c):
        r.update(10, 0, 1.0)
        r.sender_report(0x1234_5678_9ABC_DEF0, 1.25)
    assert c.report(1.25 + delay_s) == py.report(1.25 + delay_s)


def test_reception_report_before_any_packet() -> None:
    """The reference says 2 expected, 2 lost before the first packet; so does C."""
    assert nr.Reception(1, 48000).report(5.0) == ReceptionStats(1, 48000).report(5.0)


def test_reception_rejects_out_of_range() -> None:
    r = nr.Reception(1, 48000)
    with pytest.raises(ValueError):
        r.update(0x10000, 0, 0.0)
    with pytest.raises(ValueError):
        r.update(0, 2**32, 0.0)
    with pytest.raises(ValueError):
        r.sender_report(2**64, 0.0)
    with pytest.raises(ValueError):
        nr.Reception(-1, 48000)
    with pytest.raises(TypeError):
        r.update("1", 0, 0.0)  # type: ignore[arg-type]


# --- missing packets and NACKs ---------------------------------------------------------

missing_op = st.one_of(
    st.tuples(st.just("step"), st.just(1)),
    st.tuples(st.just("step"), st.integers(-30, 30)),
    st.tuples(st.just("step"), st.integers(2, 260)),
    st.tuples(st.just("step"), st.integers(-0x8001, 0x8001)),
    st.tuples(st.just("back"), st.integers(1, 300)),  # a late packet from a gap, maybe
    st.tuples(st.just("due"), reals(0, 0.15)),
    st.tuples(st.just("due"), reals(-0.2, 0.0)),
)


@SETTINGS
@given(st.integers(0, 0xFFFF), reals(0, 1e6), st.lists(missing_op, max_size=80))
def test_missing_matches_python(seq: int, now: float, ops: list[tuple[str, float]]) -> None:
    py, c = MissingPackets(), nr.Missing()
    for kind, value in ops:
        if kind == "due":
            now += value
            assert c.due(now) == py.due(now)
        else:
            delta = int(value)
            seq = (seq + delta) & 0xFFFF if kind == "step" else (seq - delta) & 0xFFFF
            assert c.update(seq) == py.update(seq)
            if kind == "back":
                seq = (seq + delta) & 0xFFFF  # the highest stays where it was
        assert c.items() == list(py.missing.items())
        assert len(c) == len(py.missing)


def test_missing_overflow_and_retries() -> None:
    """More than MAX_MISSING gaps evict the oldest; each is NACKed three times."""
    py, c = MissingPackets(), nr.Missing()
    now = 10.0
    for seq in [0, 200, 400, 600, 601, 350, 650, 700]:
        assert c.update(seq) == py.update(seq)
        assert c.items() == list(py.missing.items())
    asked = []
    for _ in range(6):
        now += 0.1
        lost = c.due(now)
        assert lost == py.due(now)
        assert c.items() == list(py.missing.items())
        asked.append(len(lost))
    assert asked == [256, 256, 256, 0, 0, 0]
    assert len(py.missing) == 0 and len(c) == 0


def test_missing_nan_time() -> None:
    """A NaN time is never later than an entry's: everything is due, as in Python."""
    py, c = MissingPackets(), nr.Missing()
    for seq in [0, 5, 9]:
        c.update(seq)
        py.update(seq)
    for now in [float("nan"), 1.0, float("nan"), float("nan")]:
        assert c.due(now) == py.due(now)
        assert repr(c.items()) == repr(list(py.missing.items()))


def test_missing_old_entry_keeps_its_place() -> None:
    """A gap opening over a number still missing from 65536 packets ago resets it in
    place (dict assignment keeps the key's position)."""
    py, c = MissingPackets(), nr.Missing()
    for seq in [0, 2, 10]:  # 1 and 3..9 missing
        assert c.update(seq) == py.update(seq)
    for seq in range(11, 65536 + 1):
        c.update(seq & 0xFFFF)
        py.update(seq & 0xFFFF)
    for seq in [5, 7]:  # gap 1..6 over old 1, 3, 4, 5, 6; 5 and 7 arrive late
        assert c.update(seq) == py.update(seq)
        assert c.items() == list(py.missing.items())
    assert c.due(1.0) == py.due(1.0)
    assert c.items() == list(py.missing.items())


lost_lists = st.one_of(
    st.lists(st.integers(0, 0xFFFF), max_size=60),
    st.builds(
        lambda base, offsets: [(base + o) & 0xFFFF for o in offsets],
        st.integers(0, 0xFFFF),
        st.lists(st.integers(-40, 40), max_size=60),
    ),
    st.builds(
        lambda base, n: [(base + i) & 0xFFFF for i in range(n)],
        st.integers(0, 0xFFFF),
        st.integers(0, 400),
    ),
)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), lost_lists)
def test_nack_matches_python(sender: int, media: int, lost: list[int]) -> None:
    assert nr.nack(sender, media, lost) == rtcp.nack(sender, media, lost)


def test_nack_edges() -> None:
    for lost in [[], [0], [65535], [65535, 0], list(range(0, 65536, 17)), list(range(65536))]:
        assert nr.nack(1, 2, lost) == rtcp.nack(1, 2, lost)
    with pytest.raises(ValueError):
        nr.nack(1, 2, [0x10000])
    with pytest.raises(ValueError):
        nr.nack(1, 2, [-1])


@SETTINGS
@given(st.integers(0, 0xFFFF), reals(0, 1e5), st.lists(missing_op, max_size=60))
def test_missing_then_nack_matches_python(
    seq: int, now: float, ops: list[tuple[str, float]]
) -> None:
    """What the relay sends: due() then nack(), end to end."""
    py, c = MissingPackets(), nr.Missing()
    for kind, value in ops:
        if kind == "due":
            now += value
            assert nr.nack(5, 6, c.due(now)) == rtcp.nack(5, 6, py.due(now))
        else:
            delta = int(value)
            seq = (seq + delta) & 0xFFFF if kind == "step" else (seq - delta) & 0xFFFF
            c.update(seq)
            py.update(seq)


# --- audio levels -------------------------------------------------------------------------


def reference_level(data: bytes, ext_id: int) -> int | None:
    try:
        header = RtpHeader.parse(data)
    except ValueError:
        return None
    return next((value[0] for i, value in header.extensions if i == ext_id), None)


@st.composite
def rtp_packets(draw: st.DrawFn) -> tuple[bytes, int]:
    """RTP packets, well-formed or a little (or very) wrong, and an extension id:
    mostly one of those the packet has."""
    version = draw(st.sampled_from([2, 2, 2, 2, 0, 1, 3]))
    csrcs = draw(st.integers(0, 15)) if draw(st.booleans()) else 0
    elements = b""
    ids = [draw(st.integers(-1, 16))]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            elements += b"\x00" * draw(st.integers(1, 3))  # padding
        elif kind == 1:
            elements += bytes([0xF0 | draw(st.integers(0, 15))])  # id 15: stop
        else:
            ext_id = draw(st.integers(1, 14))
            ids.append(ext_id)
            size = draw(st.integers(1, 16))
            elements += bytes([ext_id << 4 | (size - 1)]) + draw(
                st.binary(min_size=size, max_size=size)
            )
    words = (len(elements) + 3) // 4
    block = elements + bytes(4 * words - len(elements))
    profile = draw(st.sampled_from([0xBEDE, 0xBEDE, 0xBEDE, 0x1000, 0xBEDF]))
    words = draw(st.one_of(st.just(words), st.integers(0, words + 2)))
    extension = struct.pack("!HH", profile, words) + block
    has_extension = draw(st.booleans()) or draw(st.booleans())
    padding = draw(st.sampled_from([0, 0, 0, 1, 4, 255]))
    first = version << 6 | csrcs | (0x10 if has_extension else 0) | (0x20 if padding else 0)
    data = struct.pack("!BBHII", first, 111, 1, 2, 3) + bytes(4 * csrcs)
    if has_extension:
        data += extension
    data += draw(st.binary(max_size=20))
    if padding:
        data += bytes(padding - 1) + bytes([draw(st.sampled_from([padding, padding, 0, 200]))])
    cut = draw(st.one_of(st.just(len(data)), st.just(len(data)), st.integers(0, len(data))))
    return data[:cut], draw(st.sampled_from(ids))


@SETTINGS
@given(st.one_of(rtp_packets(), st.tuples(st.binary(max_size=80), st.integers(-1, 16))))
def test_audio_level_matches_python(packet: tuple[bytes, int]) -> None:
    data, ext_id = packet
    assert nr.audio_level(data, ext_id) == reference_level(data, ext_id)
    voice, summed = VoiceLevel(), nr.LevelSum()
    try:
        voice.observe(RtpHeader.parse(data).extensions, ext_id)
    except ValueError:
        pass
    summed.observe(data, ext_id)
    assert (summed.total, summed.count) == (voice.total, voice.count)


def test_audio_level_edges() -> None:
    base = struct.pack("!BBHII", 0x90, 111, 1, 2, 3)
    packet = base + struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x85, 0x00, 0x00])
    assert nr.audio_level(packet, 1) == 0x85 == reference_level(packet, 1)
    assert nr.audio_level(packet, 2) is None
    truncated = base + struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x85, 0x23, 0x00])
    assert nr.audio_level(truncated, 1) is None is reference_level(truncated, 1)
    for size in range(len(packet)):
        assert nr.audio_level(packet[:size], 1) is None
    assert nr.audio_level(memoryview(packet), 1) == 0x85
    twice = base + struct.pack("!HH", 0xBEDE, 2) + bytes([0x10, 0x85, 0x10, 0x7F, 0, 0, 0, 0])
    assert nr.audio_level(twice, 1) == 0x85 == reference_level(twice, 1)  # the first one
    padded = bytes([packet[0] | 0x20]) + packet[1:] + bytes([0, 0, 0, 4])
    assert nr.audio_level(padded, 1) == 0x85 == reference_level(padded, 1)
    zero_padding = padded[:-1] + b"\x00"
    assert nr.audio_level(zero_padding, 1) is None is reference_level(zero_padding, 1)
    too_much = padded[:-1] + b"\x09"  # would end inside the extension block
    assert nr.audio_level(too_much, 1) is None is reference_level(too_much, 1)
    csrc_past_end = bytes([0x9F]) + packet[1:]
    assert nr.audio_level(csrc_past_end, 1) is None is reference_level(csrc_past_end, 1)


@SETTINGS
@given(st.lists(st.integers(-(2**70), 2**70) | st.integers(0, 255), max_size=100))
def test_level_sum_matches_python(levels: list[int]) -> None:
    voice, summed = VoiceLevel(), nr.LevelSum()
    for level in levels:
        voice.add(level)
        summed.add(level)
        assert (summed.total, summed.count) == (voice.total, voice.count)
    summed.clear()
    assert (summed.total, summed.count) == (0.0, 0)


def test_amplitude_table() -> None:
    for level in range(-300, 300):
        assert nr.level_amplitude(level) == _AMPLITUDE[level & 0x7F]
