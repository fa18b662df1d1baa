"""Active-speaker detection from RFC 6464 audio levels, without decoding audio.

Every publisher's audio packets carry the client's own measurement of the packet's
level in the `urn:ietf:params:rtp-hdrext:ssrc-audio-level` header extension: one
byte, bit 7 the voice-activity flag, bits 0-6 the level as -dBov (0 loudest, 127
silence). The relay reads that byte per packet (O(1): a table lookup and two
additions into the participant's `VoiceLevel`), and every `INTERVAL_S` the room asks
`SpeakerDetector.decide` for the speaker list:

* each participant's packets of the last interval are averaged (linear amplitude)
  and folded into a smoothed level in dBov that rises fast and falls slower;
* a participant enters the list above `enter_dbov`, stays while above `exit_dbov`,
  and is dropped only after being below it for `hold_s` (pauses between words do not
  drop a speaker); silence therefore ends in an empty list;
* the first entry is the dominant speaker: another participant takes that place
  only after being `margin_db` louder for `switch_ticks` decisions in a row, and the
  others are ordered loudest first, swapping only across `margin_db`, so that the
  list does not flap between speakers of similar loudness;
* muted participants are never listed.

The voice-activity flag is ignored: not every sender sets it (aiortc never does).
Everything here is pure: time is passed in, so it is unit-tested without a clock.
"""

from __future__ import annotations

import math

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

INTERVAL_S = 0.3  # how often the room decides
SILENCE_DBOV = -127.0
ENTER_DBOV = -45.0
EXIT_DBOV = -52.0
HOLD_S = 1.0
MARGIN_DB = 6.0
SWITCH_TICKS = 2
ATTACK = 0.7  # share of the way to a louder interval's level taken per decision
RELEASE = 0.25  # ...to a quieter interval's level

# Linear amplitude (relative to full scale) of each RFC 6464 level; 127 means silence.
_AMPLITUDE = tuple(10.0 ** (-level / 20.0) if level < 127 else 0.0 for level in range(128))


class VoiceLevel:
    """One publisher's audio level: this interval's sum, and the smoothed level."""

    __slots__ = ("count", "dbov", "muted", "quiet_since", "total")

    def __init__(self) -> None:
        self.total = 0.0  # sum of linear amplitudes of this interval's packets
        self.count = 0
        self.dbov = SILENCE_DBOV  # smoothed
        self.muted = False
        self.quiet_since: float | None = None  # below the exit threshold since

    def observe(self, extensions: list[tuple[int, bytes]], ext_id: int) -> None:
        """Account one packet's header extensions; `ext_id` is the negotiated id of
        the audio-level extension on this publisher's connection."""
        for element_id, value in extensions:
            if element_id == ext_id:
                self.total += _AMPLITUDE[value[0] & 0x7F]
                self.count += 1
                return

    def add(self, level: int) -> None:
        """Account one packet's audio-level byte (the V flag is ignored)."""
        self.total += _AMPLITUDE[level & 0x7F]
        self.count += 1

    def add_sum(self, total: float, count: int) -> None:
        """Account `count` packets whose linear amplitudes were summed elsewhere
        (the native engine, Leg.take_levels)."""
        self.total += total
        self.count += count

    def settle(self, attack: float, release: float) -> None:
        """Fold this interval into the smoothed level; an interval without packets
        counts as silence (the publisher stopped sending)."""
        mean = self.total / self.count if self.count else 0.0
        interval = max(SILENCE_DBOV, 20.0 * math.log10(mean)) if mean > 0 else SILENCE_DBOV
        share = attack if interval > self.dbov else release
        self.dbov += share * (interval - self.dbov)
        self.total = 0.0
        self.count = 0

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0
        self.dbov = SILENCE_DBOV
        self.quiet_since = None


def linear_level(dbov: float) -> float:
    """What `active_speakers` reports: amplitude relative to full scale, 0.0..1.0."""
    return round(min(1.0, 10.0 ** (dbov / 20.0)), 4) if dbov > SILENCE_DBOV else 0.0


class SpeakerDetector:
    """The speaker list of one meeting; see the module docstring."""

    def __init__(
        self,
        *,
        enter_dbov: float = ENTER_DBOV,
        exit_dbov: float = EXIT_DBOV,
        hold_s: float = HOLD_S,
        margin_db: float = MARGIN_DB,
        switch_ticks: int = SWITCH_TICKS,
        attack: float = ATTACK,
        release: float = RELEASE,
    ) -> None:
        if exit_dbov > enter_dbov:
            raise ValueError("the exit threshold must not be above the enter threshold")
        self.enter_dbov = enter_dbov
        self.exit_dbov = exit_dbov
        self.hold_s = hold_s
        self.margin_db = margin_db
        self.switch_ticks = switch_ticks
        self.attack = attack
        self.release = release
        self._voices: dict[str, VoiceLevel] = {}
        self._order: list[str] = []  # current speakers, dominant first
        self._challenger: str | None = None
        self._challenge = 0

    def add(self, participant_id: str) -> VoiceLevel:
        """Start following a publisher's audio; feed packets to the returned object."""
        voice = self._voices.get(participant_id)
        if voice is None:
            voice = self._voices[participant_id] = VoiceLevel()
        return voice

    def remove(self, participant_id: str) -> None:
        """Forget a participant; the next `decide` reports the list without them."""
        self._voices.pop(participant_id, None)

    def set_muted(self, participant_id: str, muted: bool) -> None:
        voice = self._voices.get(participant_id)
        if voice is not None and voice.muted != muted:
            voice.muted = muted
            voice.reset()  # an unmuted participant qualifies again from silence

    @property
    def speakers(self) -> list[tuple[str, float]]:
        """(participant id, level 0.0..1.0), dominant speaker first."""
        return [(pid, linear_level(self._voices[pid].dbov)) for pid in self._order]

    def decide(self, now: float) -> list[tuple[str, float]] | None:
        """Close the current interval; the new list if it changed, else None."""
        voices = self._voices
        for voice in voices.values():
            voice.settle(self.attack, self.release)

        members: list[str] = []
        for pid in self._order:
            listed_voice = voices.get(pid)
            if listed_voice is None or listed_voice.muted:
                continue
            if listed_voice.dbov >= self.exit_dbov:
                listed_voice.quiet_since = None
            elif listed_voice.quiet_since is None:
                listed_voice.quiet_since = now
            elif now - listed_voice.quiet_since >= self.hold_s:
                continue
            members.append(pid)
        listed = set(members)
        newcomers = [
            pid
            for pid, voice in voices.items()
            if pid not in listed and not voice.muted and voice.dbov >= self.enter_dbov
        ]
        newcomers.sort(key=lambda pid: voices[pid].dbov, reverse=True)
        for pid in newcomers:
            voices[pid].quiet_since = None

        dominant = self._order[0] if self._order and self._order[0] in listed else None
        rest = [pid for pid in members if pid != dominant] + newcomers
        self._settle(rest)
        if dominant is None:
            self._challenger, self._challenge = None, 0
            if rest:
                dominant = max(rest, key=lambda pid: voices[pid].dbov)
                rest.remove(dominant)
        else:
            dominant = self._challenge_dominant(dominant, rest)

        order = [dominant, *rest] if dominant is not None else []
        if order == self._order:
            return None
        self._order = order
        return self.speakers

    def _challenge_dominant(self, dominant: str, rest: list[str]) -> str:
        """The dominant speaker, replaced only by one `margin_db` louder for
        `switch_ticks` decisions in a row; `rest` is updated in place."""
        voices = self._voices
        top = max(rest, key=lambda pid: voices[pid].dbov, default=None)
        if top is None or voices[top].dbov <= voices[dominant].dbov + self.margin_db:
            self._challenger, self._challenge = None, 0
            return dominant
        if top == self._challenger:
            self._challenge += 1
        else:
            self._challenger, self._challenge = top, 1
        if self._challenge < self.switch_ticks:
            return dominant
        self._challenger, self._challenge = None, 0
        rest.remove(top)
        rest.insert(0, dominant)
        self._settle(rest)
        return top

    def _settle(self, order: list[str]) -> None:
        """Loudest first, but two neighbours swap only across `margin_db`: keeps the
        previous order among participants of similar loudness. Terminates: every
        swap removes one inversion of the strict loudness order."""
        voices = self._voices
        swapped = True
        while swapped:
            swapped = False
            for i in range(len(order) - 1):
                if voices[order[i + 1]].dbov > voices[order[i]].dbov + self.margin_db:
                    order[i], order[i + 1] = order[i + 1], order[i]
                    swapped = True
