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
import json
import logging
import os
import sys
import time
from typing import Any

import aiohttp
import uvloop
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from conclave.ice import addresses_from_env, use_host_addresses

log = logging.getLogger("bench.subscriber")

VideoSize = tuple[int, int]

JOIN_TIMEOUT_S = 15.0
LEAVE_TIMEOUT_S = 5.0
REMB_INTERVAL_S = 1.0


class CountingSubscriber:
    """One participant that publishes nothing and counts the RTP packets it gets."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        signal_url: str,
        grant: str,
        video_size: VideoSize | None = None,
        remb: int = 0,
    ) -> None:
        self.http = http
        self.signal_url = signal_url
        self.grant = grant
        self.video_size = video_size
        self.remb = remb
        self._ssrcs: set[bytes] = set()  # media SSRCs received, for the REMB
        self._remb_task: asyncio.Task[None] | None = None
        self.packets = 0
        self.bytes = 0
        self.padded = 0  # packets with the padding bit (counted only with `remb`)
        self.first_packet_at: float | None = None
        self.errors: list[str] = []
        self.participant_id: str | None = None
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._joined = asyncio.get_running_loop().create_future()
        self._answered = asyncio.Event()
        self._closed = asyncio.Event()
        self._hooked: set[int] = set()
        self._sized: set[str] = set()  # video tracks this subscriber sent video_size for
        self._left = False

    async def start(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Join, and return once the relay's first offer has been answered."""
        async with asyncio.timeout(timeout):
            self._ws = await self.http.ws_connect(self.signal_url)
            self._reader = asyncio.create_task(self._read(self._ws), name="bench-sub-signalling")
            await self._ws.send_str(
                json.dumps({"type": "join", "grant": self.grant, "publish": []})
            )
            await asyncio.shield(self._joined)
            waits = [
                asyncio.ensure_future(self._answered.wait()),
                asyncio.ensure_future(self._closed.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
        if not self._answered.is_set():
            raise RuntimeError(f"the relay closed the connection before an offer: {self.errors}")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = message.get("type")
                if kind == "offer":
                    await self._answer(str(message["sdp"]))
                    await self._send_video_sizes(message.get("streams") or [])
                elif kind == "joined":
                    self.participant_id = str(message.get("participant_id"))
                    self._settle_join(None)
                elif kind == "error":
                    text = f"{message.get('code')}: {message.get('message')}"
                    self.errors.append(text)
                    self._settle_join(RuntimeError(f"relay error {text}"))
        except Exception as exc:  # a bad offer or message: this subscriber is done
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self._settle_join(exc)
        finally:
            self._closed.set()
            self._settle_join(RuntimeError("the relay closed the connection"))

    def _settle_join(self, error: BaseException | None) -> None:
        if self._joined.done():
            return
        if error is None:
            self._joined.set_result(None)
        else:
            self._joined.set_exception(error)
            self._joined.exception()  # retrieved: start() may have timed out already

    async def _answer(self, sdp: str) -> None:
        pc = self.pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self._hook()
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))
        self._answered.set()

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

    def progress(self) -> str:
        """How far the join got, for error messages."""
        steps = [
            f"websocket={'open' if self._ws is not None else 'no'}",
            f"joined={self._joined.done() and not self._joined.exception()}",
            f"answered={self._answered.is_set()}",
            f"closed={self._closed.is_set()}",
            f"ice={self.pc.iceConnectionState}",
            f"errors={self.errors}",
        ]
        return " ".join(steps)

    def _hook(self) -> None:
        """Replace the bundled DTLS transport's RTP handler with the counter."""
        for transceiver in self.pc.getTransceivers():
            transport = transceiver.receiver.transport
            if transport is None or id(transport) in self._hooked:
                continue
            self._hooked.add(id(transport))
            if self.remb:
                transport._handle_rtp_data = self._count_ssrcs  # type: ignore[method-assign]
                if self._remb_task is None:
                    self._remb_task = asyncio.create_task(
                        self._send_remb(transport), name="bench-sub-remb"
                    )
            else:
                transport._handle_rtp_data = self._count  # type: ignore[method-assign]

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
        if self._left:
            return
        self._left = True
        if self._remb_task is not None:
            self._remb_task.cancel()
            await asyncio.gather(self._remb_task, return_exceptions=True)
        ws = self._ws
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                if ws is not None and not ws.closed and not self._closed.is_set():
                    await ws.send_str(json.dumps({"type": "leave"}))
                    await self._closed.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.pc.close()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


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
            # limit=0: every WebSocket holds a connection, and aiohttp's default pool
            # of 100 would make subscriber 101 wait forever.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
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
    use_host_addresses(addresses_from_env())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pool = SubscriberPool()
    try:
        while line := await reader.readline():
            try:
                reply = {"ok": True, **await _handle(pool, json.loads(line))}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    uvloop.run(serve_worker())
