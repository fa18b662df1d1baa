"""What the relay knows about one incoming stream: loss, jitter, gaps to NACK.

RFC 3550 Appendix A.1 (sequence tracking), A.3 (expected and lost), A.8 (jitter),
§6.4.1 (LSR/DLSR); RFC 4585 §6.2.1 (generic NACK). Because the relay bypasses
aiortc's receiver, it has to produce this feedback for its publishers itself.
"""

from __future__ import annotations

from relay.rtcp import report_block

MAX_DROPOUT = 3000
MAX_MISSING = 256  # a larger gap is a restart or a burst not worth repairing
NACK_RETRY_S = 0.1
NACK_MAX_TRIES = 3


class ReceptionStats:
    """Per-SSRC receive statistics and the reception report block built from them."""

    __slots__ = (
        "bad_seq",
        "base_seq",
        "clock_rate",
        "cycles",
        "expected_prior",
        "jitter",
        "last_sr",
        "last_sr_arrival",
        "max_seq",
        "received",
        "received_prior",
        "ssrc",
        "transit",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.base_seq = -1
        self.bad_seq = -1
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self.transit: float | None = None
        self.last_sr = 0
        self.last_sr_arrival = 0.0

    def update(self, sequence: int, timestamp: int, arrival_s: float) -> None:
        if self.base_seq < 0:
            self.base_seq = self.max_seq = sequence
        delta = (sequence - self.max_seq) & 0xFFFF
        if 0 < delta < MAX_DROPOUT:
            if sequence < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = sequence
        elif MAX_DROPOUT <= delta <= 0x10000 - MAX_DROPOUT:
            # A jump either way (RFC 3550 A.1): the source restarted if the next packet
            # follows this one; until then this one is ignored.
            if sequence != self.bad_seq:
                self.bad_seq = (sequence + 1) & 0xFFFF
                return
            self.base_seq = self.max_seq = sequence
            self.cycles = self.received = self.expected_prior = self.received_prior = 0
        self.received += 1
        transit = arrival_s * self.clock_rate - timestamp
        if self.transit is not None:
            jump = abs(transit - self.transit)
            if jump < self.clock_rate * 10:  # a timestamp jump is not jitter
                self.jitter += (jump - self.jitter) / 16
        self.transit = transit

    def sender_report(self, ntp: int, arrival_s: float) -> None:
        self.last_sr = (ntp >> 16) & 0xFFFFFFFF  # middle 32 bits of the NTP timestamp
        self.last_sr_arrival = arrival_s

    def report(self, now_s: float) -> bytes:
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 else 0
        delay = int((now_s - self.last_sr_arrival) * 65536) if self.last_sr else 0
        return report_block(
            self.ssrc, max(0, min(fraction, 255)), expected - self.received, extended_max,
            int(self.jitter), self.last_sr, delay,
        )  # fmt: skip


class MissingPackets:
    """Sequence numbers not (yet) received, and when to NACK them again."""

    __slots__ = ("highest", "missing")

    def __init__(self) -> None:
        self.highest = -1
        # sequence -> (next NACK time, tries so far)
        self.missing: dict[int, tuple[float, int]] = {}

    def update(self, sequence: int) -> bool:
        """Record a packet; True when it opened a new gap worth a NACK now."""
        if self.highest < 0:
            self.highest = sequence
            return False
        gap = (sequence - self.highest) & 0xFFFF
        if gap == 0 or gap >= 0x8000:  # duplicate, or late / retransmitted packet
            self.missing.pop(sequence, None)
            return False
        self.highest = sequence
        if gap == 1:
            return False
        if gap > MAX_MISSING:
            self.missing.clear()
            return False
        for lost in range(1, gap):
            self.missing[(sequence - gap + lost) & 0xFFFF] = (0.0, 0)
        while len(self.missing) > MAX_MISSING:
            self.missing.pop(next(iter(self.missing)))
        return True

    def due(self, now_s: float) -> list[int]:
        """Sequence numbers to NACK now; each is asked for at most NACK_MAX_TRIES times."""
        wanted: list[int] = []
        for sequence, (when, tries) in list(self.missing.items()):
            if when > now_s:
                continue
            if tries >= NACK_MAX_TRIES:
                del self.missing[sequence]
                continue
            self.missing[sequence] = (now_s + NACK_RETRY_S, tries + 1)
            wanted.append(sequence)
        return wanted
