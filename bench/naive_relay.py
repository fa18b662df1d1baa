"""The naive aiortc SFU, as a lower bound: decode once, re-encode per subscriber.

What a first aiortc "SFU" usually is: the publisher's tracks are decoded by aiortc's
receiver, fanned out with aiortc's MediaRelay, and every subscriber's sender runs
an encoder of its own (VP8 pinned at the benchmark's bitrate, Opus). It saturates
early, so bench/side_by_side.py tries only a few small N.

Run as a script it is the server (`--port`): POST /publish and POST /subscribe
take a client's SDP offer as JSON `{"sdp": ...}` and answer `{"sdp": ...}`; one
meeting, the latest publisher. `NaiveParticipant` is the load side (counting
subscribers, clip publishers: client/loadtest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import aiohttp
import aiortc.codecs.vpx
import uvloop
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from client.loadtest.participants import CountingPeer, new_pc
from client.loadtest.receive import payload_clocks
from conclave.ice import use_host_addresses

HOST = "127.0.0.1"


class NaiveRelay:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.pcs: set[RTCPeerConnection] = set()

    def _pc(self) -> RTCPeerConnection:
        pc = new_pc()
        self.pcs.add(pc)

        @pc.on("connectionstatechange")
        async def closed() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.pcs.discard(pc)
                await pc.close()

        return pc

    async def publish(self, request: web.Request) -> web.Response:
        offer = (await request.json())["sdp"]
        pc = self._pc()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks[track.kind] = track

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp})

    async def subscribe(self, request: web.Request) -> web.Response:
        offer = (await request.json())["sdp"]
        pc = self._pc()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for transceiver in pc.getTransceivers():
            track = self.tracks.get(transceiver.kind)
            if track is not None:
                transceiver.sender.replaceTrack(self.relay.subscribe(track))
                transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp})


async def serve(port: int, bitrate: int) -> None:
    # aiortc's VP8 encoder starts at DEFAULT_BITRATE and moves only on REMB, which
    # the counting subscribers never send: raising the default pins the bitrate.
    aiortc.codecs.vpx.MAX_BITRATE = max(aiortc.codecs.vpx.MAX_BITRATE, bitrate)
    aiortc.codecs.vpx.DEFAULT_BITRATE = bitrate
    use_host_addresses([HOST])
    relay = NaiveRelay()
    app = web.Application()
    app.router.add_post("/publish", relay.publish)
    app.router.add_post("/subscribe", relay.subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    print("naive relay ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.gather(*(pc.close() for pc in list(relay.pcs)), return_exceptions=True)
        await runner.cleanup()


class NaiveParticipant(CountingPeer):
    """Entry: {"url" (http://host:port), "publish" (kinds), "kinds" (a subscriber's
    kinds), "video"}."""

    def __init__(self, http: aiohttp.ClientSession, entry: dict[str, Any]) -> None:
        super().__init__(http, entry)
        self.url = str(entry["url"])
        self.kinds = [str(k) for k in entry.get("kinds") or []]

    async def start(self, timeout: float) -> None:
        pc = self.pc
        if self.publish:
            for track in self.tracks.values():
                pc.addTransceiver(track, direction="sendonly")
        else:
            for kind in self.kinds:
                pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        path = "/publish" if self.publish else "/subscribe"
        async with asyncio.timeout(timeout):
            async with self.http.post(self.url + path, json={"sdp": pc.localDescription.sdp}) as r:
                answer = (await r.json())["sdp"]
            if not self.publish:
                self.counter.hook(pc, pc.localDescription.sdp)
                self.counter.clocks.update(payload_clocks(answer))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bitrate", type=int, default=2_000_000)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, args.bitrate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
