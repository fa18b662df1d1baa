"""Load participants: a peer connection that publishes clip tracks and counts what
it receives (`CountingPeer`), and `ConclaveParticipant`, which speaks
docs/signaling.md itself. A worker process makes them with a `Factory` per server
("conclave" here; bench/ adds Janus and a naive aiortc relay)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

import aiohttp
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from client.errors import ConclaveError
from client.loadtest.clips import ClipTrack, audio_clip, video_clip
from client.loadtest.receive import Counter
from conclave.tls import client_ssl_context, find_ca_file

LEAVE_TIMEOUT_S = 5.0
KIND_SOURCES = {"audio": "microphone", "video": "camera"}


class Participant(Protocol):
    counter: Counter
    errors: list[str]

    async def start(self, timeout: float) -> None: ...

    async def leave(self) -> None: ...


Factory = Callable[[aiohttp.ClientSession, dict[str, Any]], Participant]


def load_http() -> aiohttp.ClientSession:
    """The HTTP session a process's participants share. limit=0: every WebSocket
    holds a connection, and aiohttp's default pool of 100 would make participant
    101 wait forever. wss:// relays are checked against the system's CAs and the
    one `find_ca_file()` finds (a dev cluster's)."""
    connector = aiohttp.TCPConnector(limit=0, ssl=client_ssl_context(find_ca_file()))
    return aiohttp.ClientSession(connector=connector)


def new_pc() -> RTCPeerConnection:
    """A peer connection as a browser's: no ICE servers, everything bundled."""
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


def publish_tracks(kinds: Sequence[str], video: dict[str, int]) -> dict[str, ClipTrack]:
    """A clip track per kind ("audio", "video"); the clips are shared per process."""
    tracks: dict[str, ClipTrack] = {}
    for kind in kinds:
        clip = video_clip(**video) if kind == "video" else audio_clip()
        tracks[kind] = ClipTrack(clip)
    return tracks


async def close_pc(
    pc: RTCPeerConnection,
    tracks: Iterable[MediaStreamTrack] = (),
    timeout: float = LEAVE_TIMEOUT_S,
) -> None:
    for track in tracks:
        track.stop()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await pc.close()


class CountingPeer:
    """What every load participant holds: the clip tracks it publishes (entry
    "publish": kinds, "video": clip settings), a `Counter`, the errors it met and
    one bundled peer connection. Servers' participants add their signalling."""

    #: What counts; bench/native_counter.py's worker counts in C instead.
    counter_type: ClassVar[type[Counter]] = Counter

    def __init__(self, http: aiohttp.ClientSession, entry: dict[str, Any]) -> None:
        self.http = http
        self.publish = [str(k) for k in entry.get("publish") or []]
        self.tracks = publish_tracks(self.publish, dict(entry.get("video") or {}))
        self.counter = self.counter_type()
        self.errors: list[str] = []
        self.pc = new_pc()

    async def leave(self) -> None:
        await close_pc(self.pc, self.tracks.values())


class ConclaveParticipant(CountingPeer):
    """One participant speaking docs/signaling.md: joins with its grant (entry
    "signal_url", "grant"), publishes clip tracks on the m-lines the relay names,
    answers every offer, counts. Subclasses change what counts (`_hook`) and what
    follows an answer (`_answered_offer`)."""

    wait_joined = False  # start(): a relay error before `joined` fails at once

    def __init__(self, http: aiohttp.ClientSession, entry: dict[str, Any]) -> None:
        super().__init__(http, entry)
        self.signal_url = str(entry["signal_url"])
        self.grant = str(entry["grant"])
        self.participant_id: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._joined = asyncio.get_running_loop().create_future()
        self._answered = asyncio.Event()
        self._closed = asyncio.Event()
        self._left = False

    async def start(self, timeout: float) -> None:
        """Join, and return once the relay's first offer has been answered."""
        async with asyncio.timeout(timeout):
            self._ws = await self.http.ws_connect(self.signal_url)
            self._reader = asyncio.create_task(self._read(self._ws), name="load-signalling")
            sources = [KIND_SOURCES[k] for k in self.publish]
            await self._ws.send_str(
                json.dumps({"type": "join", "grant": self.grant, "publish": sources})
            )
            if self.wait_joined:
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
            raise ConclaveError(f"the relay closed the connection before an offer: {self.errors}")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = message.get("type")
                if kind == "offer":
                    await self._answer(message)
                    await self._answered_offer(message)
                elif kind == "joined":
                    self.participant_id = str(message.get("participant_id"))
                    self._settle_join(None)
                elif kind == "error":
                    text = f"{message.get('code')}: {message.get('message')}"
                    self.errors.append(text)
                    self._settle_join(RuntimeError(f"relay error {text}"))
                elif kind == "room_closed":
                    self.errors.append(f"room_closed: {message.get('reason')}")
        except Exception as exc:  # a bad offer or message: this participant is done
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

    async def _answer(self, message: dict[str, Any]) -> None:
        pc = self.pc
        sdp = str(message["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        publish = {str(s): str(m) for s, m in (message.get("publish") or {}).items()}
        for kind, track in self.tracks.items():
            transceiver = _by_mid(pc, publish.get(KIND_SOURCES[kind], ""))
            if transceiver is None or transceiver.kind != kind:
                continue
            if transceiver.sender.track is not track:
                transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        self._hook(sdp)
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))
        self._answered.set()

    def _hook(self, sdp: str) -> None:
        """After each answer: the counter in place of the RTP handler."""
        self.counter.hook(self.pc, sdp)

    async def _answered_offer(self, message: dict[str, Any]) -> None:
        """After the answer to `message` (an offer) went out; nothing here."""

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

    async def leave(self, timeout: float = LEAVE_TIMEOUT_S) -> None:
        if self._left:
            return
        self._left = True
        ws = self._ws
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                if ws is not None and not ws.closed and not self._closed.is_set():
                    await ws.send_str(json.dumps({"type": "leave"}))
                    await self._closed.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await close_pc(self.pc, self.tracks.values(), timeout)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


def _by_mid(pc: RTCPeerConnection, mid: str) -> RTCRtpTransceiver | None:
    return next((t for t in pc.getTransceivers() if t.mid == mid), None)


FACTORIES: dict[str, Factory] = {"conclave": ConclaveParticipant}
