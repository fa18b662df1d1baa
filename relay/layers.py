"""Which simulcast layer each subscriber receives, and which layers a publisher
keeps sending (docs/simulcast.md).

Decisions only: the room measures each layer (`TrackLayers.measure`), feeds each
subscriber's bandwidth estimate (REMB) and requested video size into its
`SubscriberLayers`, and applies what comes out (forwarder targets, `layers`
messages to the publisher). Layers are indexed from the lowest quality (0).

Receivers' REMB estimates never exceed about 1.5 times what they receive
(libwebrtc's and aiortc's AIMD rate control clamp them there) and climb by a few
percent a second, so an estimate's level cannot say whether a layer three times
larger would fit. The relay reads its trend instead: a drop means congestion (the
estimate then binds for a back-off that doubles when it recurs), a flat estimate
close to what the subscriber receives means the network is the limit, and a rising
or clamped one limits nothing. Without padding probes (Jitsi, LiveKit) a layer that
does not fit is found by trying it; the back-off bounds how often.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

HEADROOM = 1.3  # estimate / received bitrate above which the estimate limits nothing
DROP = 0.9  # an estimate below this share of a recent one signals congestion
RISE = 1.03  # an estimate this much above its recent low is still rising
TREND_S = 3.0  # how far back "recent" reaches
BACKOFF_S = (4.0, 60.0)  # the estimate after a drop binds this long (doubling on repeats)
TRIAL_S = 15.0  # a drop this long after the last cap ended starts the back-off over
RAISE_INTERVAL_S = 1.0  # at most one layer up per this long
LIVE_S = 1.0  # a layer without packets for this long is not being sent
# How long a layer the relay resumed may take to send again: Chromium enables a
# layer only once its own bandwidth estimate covers it.
RESUME_S = 5.0
REFUSED_S = 30.0  # a layer that did not resume is not asked for again before this
PAUSE_AFTER_S = 2.0  # a layer nobody needs is paused after this long
RATE_SMOOTHING = 0.3  # weight of the newest measurement in a layer's bitrate
# A layer never seen (paused before it sent anything) is assumed this much larger
# than the one below it: twice the width and height (the scales the relay asks
# for, relay/simulcast.py), about three times the bitrate (VP8 at equal quality).
LADDER_SCALE = 2
LADDER_BITRATE = 3


@dataclass(frozen=True)
class Layer:
    """What the choice knows about one layer of a track."""

    bitrate: int  # bit/s as received; for a paused layer, the last figure measured
    width: int  # from its latest key frame; 0 when unknown
    height: int
    available: bool  # being sent, or paused by the relay and able to resume


class SubscriberLayers:
    """One subscriber's constraints for one track (requested size, bandwidth
    estimate) and what its estimate has been doing lately."""

    def __init__(self, max_size: tuple[int, int] | None = None) -> None:
        self.max_size = max_size
        self.estimate: int | None = None
        self._recent: deque[tuple[float, int]] = deque()  # (time, estimate), TREND_S long
        self._cap = 0  # the estimate after its last drop, binding until _cap_until
        self._cap_until = -math.inf
        self._backoff = BACKOFF_S[0]
        self._raised_at = -math.inf

    def set_estimate(self, bitrate: int, now: float) -> None:
        while self._recent and now - self._recent[0][0] > TREND_S:
            self._recent.popleft()
        if self._recent and bitrate < DROP * max(e for _, e in self._recent):
            # Congestion. A drop soon after the last cap ended (the try above it
            # failed) waits twice as long before the next try.
            repeated = now - self._cap_until < TRIAL_S
            self._backoff = min(self._backoff * 2, BACKOFF_S[1]) if repeated else BACKOFF_S[0]
            self._cap, self._cap_until = bitrate, now + self._backoff
        elif now < self._cap_until:
            self._cap = min(self._cap, bitrate)
        self.estimate = bitrate
        self._recent.append((now, bitrate))

    def limit(self, current_bitrate: int, now: float) -> int | None:
        """The bitrate this subscriber's layer must fit in, or None when nothing
        says the network is the limit: no estimate yet, the estimate still rising,
        or well above what the subscriber receives (a receiver keeps it at most
        about 1.5 times that, whatever the network could take)."""
        if now < self._cap_until:
            return self._cap
        if self.estimate is None or self.estimate >= HEADROOM * current_bitrate:
            return None
        if self._rising(now):
            return None
        return self.estimate

    def _rising(self, now: float) -> bool:
        """Whether the estimate grew lately; also while too young to tell."""
        if not self._recent or now - self._recent[0][0] < TREND_S / 2:
            return True
        assert self.estimate is not None
        return self.estimate > RISE * min(e for _, e in self._recent)

    def choose(self, layers: Sequence[Layer], current: int, now: float) -> int:
        """The layer to receive, given the one chosen last time (`current`): the
        smallest that covers the requested size, lower while the network limits
        the subscriber, and upwards one layer at a time."""
        candidates = [i for i, layer in enumerate(layers) if layer.available]
        if not candidates:
            return current
        allowed = candidates[: candidates.index(self._size_ceiling(layers, candidates)) + 1]
        current_bitrate = layers[current].bitrate if current < len(layers) else 0
        limit = self.limit(current_bitrate, now)
        if limit is not None:
            fitting = [i for i in allowed if layers[i].bitrate <= limit]
            allowed = fitting or allowed[:1]
        target = allowed[-1]
        if target > current and current in candidates:
            if now - self._raised_at < RAISE_INTERVAL_S:
                return current
            target = next(i for i in allowed if i > current)
            self._raised_at = now
        return target

    def _size_ceiling(self, layers: Sequence[Layer], candidates: list[int]) -> int:
        """The smallest layer at least as large as the requested size (the largest
        when none is); layers whose size is unknown do not count as large enough."""
        if self.max_size is None:
            return candidates[-1]
        width, height = self.max_size
        return next(
            (i for i in candidates if layers[i].width >= width and layers[i].height >= height),
            candidates[-1],
        )


class TrackLayers:
    """Measurements and dynacast state of one simulcast track's layers."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.bitrates = [0.0] * count
        self.live = [False] * count
        self.paused: set[int] = set()  # by the relay (dynacast)
        self._octets = [0] * count
        self._measured_at: float | None = None
        self._resumed_at = [-math.inf] * count
        self._resuming: set[int] = set()
        self._refused_at = [-math.inf] * count  # resumed, but the publisher sent nothing
        self._unneeded_since: list[float | None] = [None] * count

    def measure(self, octets: Sequence[int], last_arrivals: Sequence[float], now: float) -> None:
        """Update bitrates from the layers' byte counters and arrival times."""
        elapsed = now - self._measured_at if self._measured_at is not None else 0.0
        for i in range(self.count):
            self.live[i] = octets[i] > 0 and now - last_arrivals[i] < LIVE_S
            if elapsed > 0 and (self.live[i] or i not in self.paused):
                rate = (octets[i] - self._octets[i]) * 8 / elapsed
                if self.bitrates[i] and self.live[i]:
                    rate = RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * self.bitrates[i]
                self.bitrates[i] = rate
            self._octets[i] = octets[i]
            if i in self._resuming and (self.live[i] or now - self._resumed_at[i] >= RESUME_S):
                self._resuming.discard(i)
                if not self.live[i]:
                    self._refused_at[i] = now
        self._measured_at = now

    def views(
        self, sizes: Sequence[tuple[int, int]], now: float, live_only: bool = False
    ) -> list[Layer]:
        """What a choice may pick from. `live_only` for a new subscriber: its first
        frame should not wait for a paused layer to resume."""
        views: list[Layer] = []
        for i in range(self.count):
            available = self.live[i] and not (live_only and i in self.paused)
            if not live_only and not available:
                resumable = i in self.paused and now - self._refused_at[i] >= REFUSED_S
                available = i in self._resuming or resumable
            width, height, bitrate = *sizes[i], int(self.bitrates[i])
            if not width or not bitrate:  # never seen: guessed from the layer below
                below = views[i - 1] if i else None
                if below is not None and not width and below.width:
                    width, height = below.width * LADDER_SCALE, below.height * LADDER_SCALE
                if below is not None and not bitrate:
                    bitrate = below.bitrate * LADDER_BITRATE
            views.append(Layer(bitrate, width, height, available))
        return views

    def dynacast(self, needed: set[int], now: float) -> set[int] | None:
        """Resume needed layers at once, pause unneeded ones after a while; the
        lowest layer being sent always stays on. Returns the active set when it
        changed, else None."""
        lowest = next((i for i in range(self.count) if self.live[i]), 0)
        needed = needed | {lowest}
        changed = False
        for i in range(self.count):
            if i in needed:
                self._unneeded_since[i] = None
                if i in self.paused:
                    self.paused.discard(i)
                    self._resumed_at[i] = now
                    self._resuming.add(i)
                    changed = True
                continue
            since = self._unneeded_since[i]
            if since is None:
                self._unneeded_since[i] = now
            elif i not in self.paused and now - since >= PAUSE_AFTER_S:
                self.paused.add(i)
                changed = True
        if not changed:
            return None
        return {i for i in range(self.count) if i not in self.paused}
