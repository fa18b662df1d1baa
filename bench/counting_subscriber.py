"""Subscribers that only count packets: the receiving side of the forwarding benchmark.

Each `CountingSubscriber` speaks docs/signaling.md itself (join with a grant and
`publish: []`, answer every offer) over an aiohttp WebSocket, and after applying its
answer replaces the bundled DTLS transport's `_handle_rtp_data` with a counter.
SRTP is still decrypted (aiortc does that before the hook), but no RTP parsing,
jitter buffer or decoder ever runs, so a subscriber costs as little as an aiortc
endpoint can. A subscriber may be given a video size: it then sends `video_size`
(docs/signaling.md) for every video track an offer lists, which steers the relay's
simulcast layer choice. By default it sends no RTCP feedback of its own (no REMB);
given a `remb` bitrate it sends a REMB with that constant figure every second naming
the SSRCs it receives (read from the first packet of each), as a real receiver
would send its estimate. A constant estimate far above what it receives limits no
layer (relay/layers.py) but makes the relay tell a simulcast publisher its upstream
figure (without any subscriber's REMB the relay sends none upstream). Such a
subscriber also counts the packets with the RTP padding bit set (`padded`).

Run as a script, this module is a worker process holding a `SubscriberPool` and
obeying one JSON request per line on stdin (one JSON reply per line on stdout):
`{"op": "join", "subscribers": [[signal_url, grant, [width, height] or null], ...],
"remb": bit/s or 0}`,
`{"op": "counts"}`, `{"op": "padded"}`,
`{"op": "leave_all"}`. It leaves everyone and exits at end of input.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
from typing import Any

import aiohttp
import uvloop
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from client.loadtest.participants import LEAVE_TIMEOUT_S, ConclaveParticipant, load_http
from client.loadtest.receive import hook_rtp
from client.loadtest.worker import serve_lines

log = logging.getLogger("bench.subscriber")

VideoSize = tuple[int, int]

JOIN_TIMEOUT_S = 15.0
REMB_INTERVAL_S = 1.0


class CountingSubscriber(ConclaveParticipant):
    """One participant that publishes nothing and counts the RTP packets it gets:
    client/loadtest's signalling, with a cheaper count (packets and bytes, no
    per-SSRC statistics), `video_size` and an optional constant REMB."""

    wait_joined = True

    def __init__(
        self,
        http: aiohttp.ClientSession,
        signal_url: str,
        grant: str,
        video_size: VideoSize | None = None,
        remb: int = 0,
    ) -> None:
        super().__init__(http, {"signal_url": signal_url, "grant": grant})
        self.video_size = video_size
        self.remb = remb
        self._ssrcs: set[bytes] = set()  # media SSRCs received, for the REMB
        self._remb_task: asyncio.Task[None] | None = None
        self.packets = 0
        self.bytes = 0
        self.padded = 0  # packets with the padding bit (counted only with `remb`)
        self.first_packet_at: float | None = None
        self._hooked: set[int] = set()
        self._sized: set[str] = set()  # video tracks this subscriber sent video_size for

    async def start(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        await super().start(timeout)

    async def _answered_offer(self, message: dict[str, Any]) -> None:
        await self._send_video_sizes(message.get("streams") or [])

    async def _send_video_sizes(self, streams: list[dict[str, Any]]) -> None:
        """`video_size` once for each video track the relay sends this subscriber."""
        if self.video_size is None or self._ws is None:
            return
        width, height = self.video_size
        for stream in streams:
            track_id = stream.get("track_id")
            if stream.get("kind") != "video" or not track_id or track_id in self._sized:
                continue
            self._sized.add(str(track_id))
            message = {"type": "video_size", "track_id": track_id, "width": width, "height": height}
            await self._ws.send_str(json.dumps(message))

    def _hook(self, sdp: str) -> None:
        """Replace the bundled DTLS transport's RTP handler with the counter."""
        handler = self._count_ssrcs if self.remb else self._count
        for transport in hook_rtp(self.pc, handler, self._hooked):
            if self.remb and self._remb_task is None:
                self._remb_task = asyncio.create_task(
                    self._send_remb(transport), name="bench-sub-remb"
                )

    async def _count(self, data: bytes, arrival_time_ms: int) -> None:
        if self.first_packet_at is None:
            self.first_packet_at = time.monotonic()
        self.packets += 1
        self.bytes += len(data)

    async def _count_ssrcs(self, data: bytes, arrival_time_ms: int) -> None:
        self._ssrcs.add(data[8:12])
        if data[0] & 0x20:
            self.padded += 1
        await self._count(data, arrival_time_ms)

    async def _send_remb(self, transport: Any) -> None:
        """Every REMB_INTERVAL_S, until leave(): the constant estimate, naming every
        SSRC received so far."""
        rtcp_ssrc = int.from_bytes(os.urandom(4), "big")
        while True:
            await asyncio.sleep(REMB_INTERVAL_S)
            ssrcs = [int.from_bytes(s, "big") for s in sorted(self._ssrcs) if len(s) == 4]
            if not ssrcs:
                continue
            fci = pack_remb_fci(self.remb, ssrcs)
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
            with contextlib.suppress(ConnectionError):  # not connected (yet, or any more)
                await transport._send_rtp(bytes(packet))

    async def leave(self, timeout: float = LEAVE_TIMEOUT_S) -> None:
        if self._remb_task is not None:
            self._remb_task.cancel()
            await asyncio.gather(self._remb_task, return_exceptions=True)
        await super().leave(timeout)


class SubscriberPool:
    """Counting subscribers living in this process."""

    def __init__(self) -> None:
        self.subscribers: list[CountingSubscriber] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int:
        return os.getpid()

    async def join(
        self,
        entries: list[tuple[str, str, VideoSize | None]],
        timeout: float = JOIN_TIMEOUT_S,
        remb: int = 0,
    ) -> None:
        """Join `(signal_url, grant, video size)` entries concurrently; raise if any fails."""
        if self._http is None:
            self._http = load_http()
        batch = [
            CountingSubscriber(self._http, url, grant, size, remb) for url, grant, size in entries
        ]
        self.subscribers.extend(batch)
        results = await asyncio.gather(*(s.start(timeout) for s in batch), return_exceptions=True)
        failed = [
            (s, r) for s, r in zip(batch, results, strict=True) if isinstance(r, BaseException)
        ]
        if failed:
            sub, error = failed[0]
            raise RuntimeError(
                f"{len(failed)} of {len(batch)} subscribers failed to join "
                f"(after {len(self.subscribers) - len(batch)} joined before): "
                f"{type(error).__name__}: {error}; first failure: {sub.progress()}"
            )

    async def counts(self) -> list[tuple[int, int]]:
        """(packets, bytes) received so far, per subscriber."""
        return [(s.packets, s.bytes) for s in self.subscribers]

    async def padded(self) -> list[int]:
        """Packets with the padding bit received so far, per subscriber."""
        return [s.padded for s in self.subscribers]

    async def errors(self) -> list[str]:
        """Every `error` the relay sent any subscriber (e.g. a refused video_size)."""
        return [e for s in self.subscribers for e in s.errors]

    async def leave_all(self, timeout: float = LEAVE_TIMEOUT_S) -> None:
        leaving, self.subscribers = self.subscribers, []
        await asyncio.gather(*(s.leave(timeout) for s in leaving), return_exceptions=True)

    async def close(self) -> None:
        await self.leave_all()
        if self._http is not None:
            await self._http.close()
            self._http = None


async def _handle(pool: SubscriberPool, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "join":
        entries = [
            (str(entry[0]), str(entry[1]), _size(entry[2] if len(entry) > 2 else None))
            for entry in request["subscribers"]
        ]
        timeout = float(request.get("timeout", JOIN_TIMEOUT_S))
        await pool.join(entries, timeout, int(request.get("remb", 0)))
        return {"joined": len(pool.subscribers)}
    if op == "counts":
        return {"counts": await pool.counts()}
    if op == "padded":
        return {"padded": await pool.padded()}
    if op == "errors":
        return {"errors": await pool.errors()}
    if op == "leave_all":
        await pool.leave_all()
        return {}
    raise ValueError(f"unknown op {op!r}")


def _size(value: Any) -> VideoSize | None:
    if value is None:
        return None
    width, height = value
    return int(width), int(height)


async def serve_worker() -> None:
    pool = SubscriberPool()
    try:
        await serve_lines(functools.partial(_handle, pool))
    finally:
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    uvloop.run(serve_worker())
