"""Active-speaker detection (relay/speaker.py) with injected time and levels."""

from __future__ import annotations

import pytest

from relay.speaker import INTERVAL_S, SpeakerDetector, VoiceLevel, linear_level

LOUD = 15  # -15 dBov: a tone at a quarter of full scale
SPEECH = 30
SILENT = 127
PACKETS = 15  # 20 ms packets in a 300 ms interval


class Meeting:
    """A detector, its participants' voices and a clock that advances per decision."""

    def __init__(self, *names: str, **settings: float) -> None:
        self.detector = SpeakerDetector(**settings)  # type: ignore[arg-type]
        self.voices = {name: self.detector.add(name) for name in names}
        self.now = 0.0
        self.updates: list[list[str]] = []

    def tick(self, **levels: int) -> list[str]:
        """One interval in which each named participant sends PACKETS packets at its
        level (unnamed ones send nothing); returns the speaker ids after it."""
        for name, level in levels.items():
            for _ in range(PACKETS):
                self.voices[name].add(level)
        self.now += INTERVAL_S
        changed = self.detector.decide(self.now)
        if changed is not None:
            self.updates.append([pid for pid, _ in changed])
        return [pid for pid, _ in self.detector.speakers]

    def ticks(self, count: int, **levels: int) -> list[str]:
        speakers: list[str] = []
        for _ in range(count):
            speakers = self.tick(**levels)
        return speakers


def test_the_loud_participant_is_the_speaker_and_silence_lists_nobody() -> None:
    m = Meeting("ann", "ben", "cat")
    assert m.tick(ann=SILENT, ben=SILENT, cat=SILENT) == []
    assert m.ticks(3, ann=LOUD, ben=SILENT, cat=SILENT) == ["ann"]
    assert m.updates == [["ann"]]  # one message, not one per decision
    level = m.detector.speakers[0][1]
    assert 0.1 < level < 0.3  # -15 dBov as a linear amplitude
    # A pause between words keeps the speaker; lasting silence drops them.
    assert m.ticks(2, ann=SILENT, ben=SILENT, cat=SILENT) == ["ann"]
    assert m.ticks(5, ann=SILENT, ben=SILENT, cat=SILENT) == []
    assert m.updates == [["ann"], []]


def test_a_participant_who_stops_sending_counts_as_silent() -> None:
    m = Meeting("ann")
    assert m.ticks(3, ann=LOUD) == ["ann"]
    assert m.ticks(8) == []


def test_speakers_are_ordered_loudest_first() -> None:
    m = Meeting("ann", "ben", "cat")
    assert m.ticks(4, ann=40, ben=LOUD, cat=25) == ["ben", "cat", "ann"]


def test_the_dominant_speaker_does_not_flap_between_similar_levels() -> None:
    m = Meeting("ann", "ben")
    assert m.ticks(3, ann=SPEECH, ben=SILENT) == ["ann"]
    # ben joins in, slightly louder (3 dB): ann keeps the floor, in either order.
    assert m.ticks(2, ann=SPEECH, ben=SPEECH - 3) == ["ann", "ben"]
    for _ in range(10):
        assert m.tick(ann=SPEECH, ben=SPEECH - 3) == ["ann", "ben"]
        assert m.tick(ann=SPEECH - 3, ben=SPEECH) == ["ann", "ben"]
    assert m.updates == [["ann"], ["ann", "ben"]]


def test_the_floor_passes_to_a_clearly_louder_speaker_after_two_decisions() -> None:
    m = Meeting("ann", "ben")
    assert m.ticks(3, ann=SPEECH, ben=SILENT) == ["ann"]
    after = [m.tick(ann=SPEECH + 20, ben=LOUD) for _ in range(3)]
    assert after[0][0] == "ann"  # one louder interval is not enough
    assert after[-1][0] == "ben"
    # ann, now quiet, drops out after the hold time; ben stays alone.
    assert m.ticks(6, ann=SILENT, ben=LOUD) == ["ben"]


def test_a_single_loud_burst_does_not_take_the_floor() -> None:
    m = Meeting("ann", "ben")
    assert m.ticks(3, ann=SPEECH, ben=SILENT) == ["ann"]
    assert m.ticks(3, ann=SPEECH, ben=SPEECH + 8) == ["ann", "ben"]
    assert m.tick(ann=SPEECH, ben=LOUD) == ["ann", "ben"]
    for _ in range(6):
        assert m.tick(ann=SPEECH, ben=SPEECH + 8) == ["ann", "ben"]


def test_a_muted_participant_is_never_a_speaker() -> None:
    m = Meeting("ann", "ben")
    assert m.ticks(3, ann=LOUD, ben=SILENT) == ["ann"]
    m.detector.set_muted("ann", True)
    # The relay keeps forwarding whatever arrives: loud packets from a muted
    # participant must still not list them.
    assert m.tick(ann=LOUD, ben=SILENT) == []
    assert m.ticks(5, ann=LOUD, ben=SILENT) == []
    assert m.ticks(3, ann=LOUD, ben=SPEECH) == ["ben"]
    m.detector.set_muted("ann", False)
    speakers = m.ticks(4, ann=LOUD, ben=SPEECH)
    assert set(speakers) == {"ann", "ben"}
    assert speakers[0] in ("ann", "ben")


def test_a_muted_dominant_speaker_hands_the_floor_on_at_once() -> None:
    m = Meeting("ann", "ben")
    assert m.ticks(3, ann=LOUD, ben=SPEECH) == ["ann", "ben"]
    m.detector.set_muted("ann", True)
    assert m.tick(ann=LOUD, ben=SPEECH) == ["ben"]


def test_a_participant_who_leaves_is_dropped_at_the_next_decision() -> None:
    m = Meeting("ann", "ben")
    assert m.ticks(3, ann=LOUD, ben=SPEECH) == ["ann", "ben"]
    m.detector.remove("ann")
    del m.voices["ann"]
    assert m.tick(ben=SPEECH) == ["ben"]


def test_background_noise_below_the_threshold_is_not_speech() -> None:
    m = Meeting("ann")
    assert m.ticks(10, ann=60) == []  # -60 dBov: a quiet room


def test_levels_are_read_from_the_negotiated_extension_id_only() -> None:
    voice = VoiceLevel()
    # mid on id 1, audio level on id 5 with the V flag set: level 20.
    extensions = [(1, b"0"), (5, bytes([0x80 | 20]))]
    voice.observe(extensions, 5)
    assert voice.count == 1
    voice.observe(extensions, 2)  # another connection negotiated id 2: not present
    assert voice.count == 1
    voice.settle(attack=1.0, release=1.0)
    assert voice.dbov == pytest.approx(-20.0)
    assert voice.count == 0 and voice.total == 0.0


def test_reported_levels_are_linear_between_zero_and_one() -> None:
    assert linear_level(0.0) == 1.0
    assert linear_level(-20.0) == pytest.approx(0.1)
    assert linear_level(-127.0) == 0.0


def test_thresholds_must_leave_room_for_hysteresis() -> None:
    with pytest.raises(ValueError):
        SpeakerDetector(enter_dbov=-50, exit_dbov=-40)
