"""A meeting connection to a relay (`Session`), following docs/signaling.md: the
relay is always the offerer, so the client only ever answers. Call
`conclave.ice.use_host_addresses(addresses_from_env())` once at start-up (the CLI
does) before opening a session, so that loopback ICE candidates exist on a
single-machine cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypedDict

import aiohttp
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.stats import RTCInboundRtpStreamStats
from av import AudioFrame, VideoFrame

from client.e2ee.exchange import MeetingKeys
from client.e2ee.identity import IdentityKey
from client.e2ee.media import decrypt_receiver, encrypt_sender
from client.errors import ConclaveError
from client.media import PatternVideoTrack, SineAudioTrack
from protos import rooms_pb2

log = logging.getLogger("conclave.client")

KINDS = ("audio", "video")
VIDEO_CODECS = ("VP8", "H264")  # Session(video_codec=...)


@dataclass(frozen=True)
class RemoteStream:
    """One receiving m-line, as the relay's `offer.streams` describes it."""

    mid: str
    participant_id: str
    track_id: str
    kind: str


class RemoteStats(TypedDict):
    audio_packets: int
    video_frames_decoded: int
    decrypt_failures: int


@dataclass
class _Counters:
    audio_frames: int = 0
    video_frames: int = 0
    video_size: tuple[int, int] | None = None  # of the latest decoded frame
    decrypt_failures: int = 0  # frames that did not decrypt (dropped, never decoded)


class _MutableAudioTrack(MediaStreamTrack):
    """What a Session publishes for audio: the given track, or silence of the same
    shape and timing while muted (as a browser does for a disabled track). The RTP
    stream goes on, so nothing is renegotiated, and its RFC 6464 audio level reads
    silence. Stopping it stops the source."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.muted = False

    async def recv(self) -> Any:
        frame = await self.source.recv()
        if not self.muted or not isinstance(frame, AudioFrame):
            return frame  # pre-encoded packets cannot be silenced here: sent as they are
        silent = AudioFrame(
            format=frame.format.name, layout=frame.layout.name, samples=frame.samples
        )
        for plane in silent.planes:
            plane.update(bytes(plane.buffer_size))
        silent.pts = frame.pts
        silent.sample_rate = frame.sample_rate
        silent.time_base = frame.time_base
        return silent

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class Session:
    """One participant's connection to its relay: a WebSocket for signalling and one
    RTCPeerConnection that answers the relay's offers.

    Publishes `publish` kinds (synthetic tracks unless `tracks` supplies them),
    receives everyone else's media, keeps the roster, the active speakers and who
    muted what, and counts what arrives per publisher. `on_active_speakers` is called
    with the display names of the speakers (loudest first) whenever the relay sends
    a new list. Use `async with Session(...)` or `start()` / `leave()`.
    """

    def __init__(
        self,
        join: rooms_pb2.JoinRoomResponse,
        display_name: str,
        publish: Sequence[str] = (),
        *,
        tracks: Mapping[str, MediaStreamTrack] | None = None,
        join_timeout: float = 10.0,
        stats_interval: float = 1.0,
        on_active_speakers: Callable[[list[str]], None] | None = None,
        e2ee: bool = True,
        identity: IdentityKey | None = None,
        video_codec: str = "VP8",
    ) -> None:
        unknown = [kind for kind in publish if kind not in KINDS]
        if unknown:
            raise ValueError(f"cannot publish {unknown}: kinds are {list(KINDS)}")
        self.grant = join.grant
        self.signal_url = join.signal_url
        self.participant_id = join.participant_id
        self.room_id = join.room_id
        self.node_id = join.node_id
        self.display_name = display_name
        self.publish = list(dict.fromkeys(publish))
        self.join_timeout = join_timeout
        self.stats_interval = stats_interval
        #: relay error messages after the join, oldest first: (code, message)
        self.errors: list[tuple[str, str]] = []
        #: why the meeting ended, when the relay sent `room_closed`
        self.closed_reason: str | None = None
        #: our own mute state per published kind (`set_muted`)
        self.muted: dict[str, bool] = {kind: False for kind in self.publish}
        self.on_active_speakers = on_active_speakers
        #: end-to-end encryption (docs/e2ee.md); off only for benchmarks
        self.e2ee = e2ee
        if video_codec.upper() not in VIDEO_CODECS:
            raise ValueError(f"video codec {video_codec!r}: choose from {list(VIDEO_CODECS)}")
        #: the codec to send video in; the relay then offers it first (`join`)
        self.video_codec = video_codec.upper()
        self._identity = identity
        self._keys: MeetingKeys | None = None

        self._tracks: dict[str, MediaStreamTrack] = {}
        self._own_tracks: list[MediaStreamTrack] = []
        for kind in self.publish:
            track = (tracks or {}).get(kind)
            if track is None:
                track = SineAudioTrack() if kind == "audio" else PatternVideoTrack()
                self._own_tracks.append(track)
            if track.kind != kind:
                raise ValueError(f"track for {kind!r} is a {track.kind} track")
            self._tracks[kind] = _MutableAudioTrack(track) if kind == "audio" else track

        self._roster: dict[str, str] = {}  # present now, self included
        self._seen: dict[str, str] = {}  # everyone ever present, self included
        self._published: dict[str, dict[str, str]] = {}  # pid -> track_id -> kind
        self._streams: dict[str, RemoteStream] = {}  # mid -> publisher, latest offer
        self._publish_mids: dict[str, str] = {}  # kind -> mid, latest offer
        self._counters: dict[str, _Counters] = {}
        self._audio_rtp: dict[str, tuple[str, int]] = {}  # mid -> (pid, packetsReceived)
        self._speakers: list[tuple[str, float]] = []  # (pid, level), loudest first
        self._muted: dict[str, dict[str, bool]] = {}  # pid -> track_id -> muted

        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._consumers: set[asyncio.Task[None]] = set()
        self._joined: asyncio.Future[None] | None = None
        self._disconnected = asyncio.Event()
        self._left = False

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    async def start(self) -> None:
        """Open the signalling connection and join; returns once `joined` arrived.

        The relay's first offer is answered in the background right after.
        """
        if self._http is not None:
            raise RuntimeError("a Session can only be started once")
        loop = asyncio.get_running_loop()
        self._joined = loop.create_future()
        # max-bundle: with aiortc's default ("balanced") a second m-line of the same
        # kind is created on the first one's transport and marked bundled, so BUNDLE
        # processing never moves it to the primary transport: it stays on a transport
        # that is then stopped and never sends or receives.
        self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._http = aiohttp.ClientSession()
        try:
            try:
                async with asyncio.timeout(self.join_timeout):
                    self._ws = await self._http.ws_connect(self.signal_url)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise ConclaveError(
                    f"cannot open the signalling connection to {self.signal_url}: {reason}"
                ) from None
            self._reader = asyncio.create_task(self._read(self._ws), name="conclave-signalling")
            await self._send(
                {
                    "type": "join",
                    "grant": self.grant,
                    "publish": self.publish,
                    "video_codec": self.video_codec.lower(),
                }
            )
            try:
                async with asyncio.timeout(self.join_timeout):
                    await asyncio.shield(self._joined)
            except TimeoutError:
                raise ConclaveError(
                    f"the relay at {self.signal_url} did not answer the join "
                    f"within {self.join_timeout:g} s"
                ) from None
        except BaseException:
            self._left = True
            await self._teardown()
            raise
        self._poller = asyncio.create_task(self._poll_loop(), name="conclave-stats")

    async def leave(self) -> None:
        """Say `leave`, then close the peer connection and the WebSocket.

        Safe to call more than once and after the relay closed the connection.
        """
        if self._left:
            return
        self._left = True
        await self.refresh_stats()  # the last RTP figures, before the receivers stop
        ws = self._ws
        if ws is not None and not ws.closed and not self._disconnected.is_set():
            with contextlib.suppress(Exception):
                await self._send({"type": "leave"})
                # The relay closes the connection; give it a moment to do so.
                async with asyncio.timeout(2.0):
                    await self._disconnected.wait()
        await self._teardown()

    async def wait_closed(self) -> None:
        """Until the signalling connection ends (`room_closed`, kicked, or network)."""
        await self._disconnected.wait()

    @property
    def closed(self) -> bool:
        return self._disconnected.is_set()

    async def _teardown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._reader is not None:  # first, so no offer is being applied meanwhile
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pc is not None:
            await self._pc.close()
        # Started receivers end their tracks (MediaStreamError) when the pc closes;
        # a receiver that never started (no media yet) does not, so cancel those.
        if self._consumers:
            _, pending = await asyncio.wait(set(self._consumers), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for track in self._own_tracks:
            track.stop()
        if self._keys is not None:
            self._keys.close()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._joined is not None and not self._joined.done():
            self._joined.cancel()

    # ------------------------------------------------------------------- state

    @property
    def roster(self) -> dict[str, str]:
        """participant_id -> display name of everyone present now, self included."""
        return dict(self._roster)

    @property
    def seen(self) -> dict[str, str]:
        """participant_id -> display name of everyone present at any time, self included."""
        return dict(self._seen)

    @property
    def streams(self) -> dict[str, RemoteStream]:
        """mid -> whose media arrives there, from the latest offer."""
        return dict(self._streams)

    @property
    def published_tracks(self) -> dict[str, dict[str, str]]:
        """participant_id -> track_id -> kind, as announced by the relay."""
        return {pid: dict(tracks) for pid, tracks in self._published.items()}

    @property
    def active_speakers(self) -> list[str]:
        """Display names of who is speaking now, dominant speaker first (self
        included when speaking); empty in silence."""
        return [self._seen.get(pid, pid) for pid, _ in self._speakers]

    @property
    def active_speaker_levels(self) -> list[tuple[str, float]]:
        """The relay's latest list as (participant_id, level 0.0..1.0)."""
        return list(self._speakers)

    @property
    def mute_state(self) -> dict[str, dict[str, bool]]:
        """participant_id -> kind -> muted, for every track the relay announced."""
        state: dict[str, dict[str, bool]] = {}
        for pid, tracks in self._published.items():
            muted = self._muted.get(pid, {})
            state[pid] = {kind: muted.get(tid, False) for tid, kind in tracks.items()}
        return state

    def is_muted(self, participant_id: str, kind: str) -> bool:
        """Whether that participant's `kind` track is muted (ours: `set_muted`)."""
        if participant_id == self.participant_id:
            return self.muted.get(kind, False)
        return self.mute_state.get(participant_id, {}).get(kind, False)

    async def set_muted(self, kind: str, muted: bool) -> None:
        """Mute or unmute what we publish and tell the meeting (`mute` message).

        Audio: from now on silence is sent in place of the track's samples (same
        packet timing; the relay and everyone else see a silent level). Video: only
        signalled; the frames keep flowing (pause or replace the source to stop them).
        """
        track = self._tracks.get(kind)
        if track is None:
            raise ValueError(f"this session does not publish {kind!r}")
        if isinstance(track, _MutableAudioTrack):
            track.muted = muted
        self.muted[kind] = muted
        await self._send({"type": "mute", "kind": kind, "muted": muted})

    async def set_video_size(self, track_id: str, width: int, height: int) -> None:
        """Tell the relay the largest size we show that video track at (`video_size`
        message): with simulcast, it then sends no larger layer than needed."""
        if width < 1 or height < 1:
            raise ValueError("a video size is at least 1x1")
        await self._send(
            {"type": "video_size", "track_id": track_id, "width": width, "height": height}
        )

    def received_video_size(self, participant_id: str) -> tuple[int, int] | None:
        """Width and height of the latest video frame decoded from that participant."""
        counters = self._counters.get(participant_id)
        return counters.video_size if counters is not None else None

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "new"

    def stats(self) -> dict[str, RemoteStats]:
        """Media received per other participant, keyed by display name.

        `audio_packets` is the larger of audio frames decoded and the receivers'
        inbound-rtp packetsReceived (refreshed every `stats_interval`);
        `video_frames_decoded` counts frames the video tracks returned. Everyone
        seen appears, with zeros if nothing arrived; participants sharing a display
        name are summed.
        """
        rtp: dict[str, int] = {}
        for pid, packets in self._audio_rtp.values():
            rtp[pid] = rtp.get(pid, 0) + packets
        result: dict[str, RemoteStats] = {}
        for pid in {*self._seen, *self._counters, *rtp}:
            if pid == self.participant_id:
                continue
            counters = self._counters.get(pid, _Counters())
            name = self._seen.get(pid, pid)
            entry = result.setdefault(
                name, {"audio_packets": 0, "video_frames_decoded": 0, "decrypt_failures": 0}
            )
            entry["audio_packets"] += max(counters.audio_frames, rtp.get(pid, 0))
            entry["video_frames_decoded"] += counters.video_frames
            entry["decrypt_failures"] += counters.decrypt_failures
        return result

    async def refresh_stats(self) -> None:
        """Read packetsReceived of every audio receiver attributed to a publisher."""
        if self._pc is None:
            return
        for transceiver in self._pc.getTransceivers():
            stream = self._streams.get(transceiver.mid or "")
            if stream is None or transceiver.kind != "audio":
                continue
            try:
                report = await transceiver.receiver.getStats()
            except Exception:  # a closing transport; the frame count still stands
                log.debug("getStats failed for mid %s", transceiver.mid, exc_info=True)
                continue
            packets = sum(
                s.packetsReceived
                for s in report.values()
                if isinstance(s, RTCInboundRtpStreamStats)
            )
            self._audio_rtp[stream.mid] = (stream.participant_id, packets)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            await self.refresh_stats()

    # ------------------------------------------------------------- signalling

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConclaveError("the signalling connection is closed")
        await self._ws.send_str(json.dumps(message))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Handle relay messages strictly in order (an offer is answered before the
        next message is looked at, as the relay waits for each answer)."""
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    if frame.type == aiohttp.WSMsgType.ERROR:
                        log.warning("signalling connection error: %s", ws.exception())
                        break
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    log.warning("relay sent a frame that is not JSON: %.80r", frame.data)
                    continue
                if not isinstance(message, dict):
                    log.warning("relay sent JSON that is not an object: %.80r", frame.data)
                    continue
                try:
                    await self._dispatch(message)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("malformed %r message from the relay: %s", message.get("type"), exc)
                except ConclaveError as exc:  # the answer could not be sent: closing
                    log.debug("signalling: %s", exc)
                    break
        finally:
            self._on_disconnected(ws.close_code)

    def _on_disconnected(self, close_code: int | None) -> None:
        self._disconnected.set()
        if self._joined is not None and not self._joined.done():
            last = self.errors[-1] if self.errors else None
            detail = f"{last[0]}: {last[1]}" if last else f"close code {close_code}"
            code = last[0] if last else None
            self._joined.set_exception(
                ConclaveError(f"the relay closed the connection before the join ({detail})", code)
            )
            self._joined.exception()  # retrieved: start() may have given up already

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "offer":
            await self._on_offer(message)
        elif kind == "joined":
            self._on_joined(message)
            if self._keys is not None:
                await self._send(self._keys.binding_message())
        elif kind == "e2ee_members":
            if self._keys is not None:
                await self._keys.on_members(message.get("members"))
        elif kind == "e2ee_key":
            if self._keys is not None:
                await self._keys.on_key(message.get("message"))
        elif kind == "participant_joined":
            self._add_participant(message["participant"])
        elif kind == "participant_left":
            pid = _text(message, "participant_id")
            self._roster.pop(pid, None)
            self._published.pop(pid, None)
            self._muted.pop(pid, None)
        elif kind == "track_published":
            self._add_track(_text(message, "participant_id"), message["track"])
        elif kind == "track_unpublished":
            pid = _text(message, "participant_id")
            self._published.get(pid, {}).pop(_text(message, "track_id"), None)
            self._muted.get(pid, {}).pop(_text(message, "track_id"), None)
        elif kind == "track_muted":
            muted = message["muted"]
            if not isinstance(muted, bool):
                raise TypeError("'muted' must be a boolean")
            pid = _text(message, "participant_id")
            self._muted.setdefault(pid, {})[_text(message, "track_id")] = muted
        elif kind == "active_speakers":
            self._on_active_speakers(message["speakers"])
        elif kind == "room_closed":
            self.closed_reason = str(message.get("reason") or "closed")
            log.info("meeting closed: %s", self.closed_reason)
        elif kind == "error":
            code, text = str(message.get("code")), str(message.get("message"))
            self.errors.append((code, text))
            if self._joined is not None and not self._joined.done():
                self._joined.set_exception(
                    ConclaveError(f"the relay refused the join: {code}: {text}", code)
                )
                self._joined.exception()
            else:
                log.warning("relay error %s: %s", code, text)
        else:
            log.debug("ignoring relay message %r", kind)

    def _on_joined(self, message: dict[str, Any]) -> None:
        self.participant_id = _text(message, "participant_id")
        self.room_id = str(message.get("room_id") or self.room_id)
        self.node_id = str(message.get("node_id") or self.node_id)
        self._roster[self.participant_id] = self.display_name
        self._seen[self.participant_id] = self.display_name
        if self.e2ee and self._keys is None:
            self._keys = MeetingKeys(
                self.room_id,
                self.participant_id,
                self._send,
                identity=self._identity,
                on_epoch=self._on_epoch,
            )
        for participant in message.get("roster") or []:
            self._add_participant(participant)
        if self._joined is not None and not self._joined.done():
            self._joined.set_result(None)

    def _add_participant(self, participant: dict[str, Any]) -> None:
        pid = _text(participant, "participant_id")
        name = str(participant.get("name") or pid)
        self._roster[pid] = name
        self._seen[pid] = name
        self._published.setdefault(pid, {})
        for track in participant.get("tracks") or []:
            self._add_track(pid, track)

    def _add_track(self, pid: str, track: dict[str, Any]) -> None:
        track_id = _text(track, "track_id")
        self._published.setdefault(pid, {})[track_id] = _text(track, "kind")
        self._muted.setdefault(pid, {})[track_id] = track.get("muted") is True

    def _on_active_speakers(self, entries: list[dict[str, Any]]) -> None:
        speakers = [(_text(e, "participant_id"), float(e.get("level") or 0.0)) for e in entries]
        self._speakers = speakers
        callback = self.on_active_speakers
        if callback is not None:
            try:
                callback(self.active_speakers)
            except Exception:  # the application's bug must not end the signalling
                log.exception("on_active_speakers callback failed")

    async def _on_offer(self, message: dict[str, Any]) -> None:
        """Apply the relay's offer, attach our tracks on its `publish` m-lines, answer.

        `streams` is recorded before the description is applied, because aiortc
        fires the "track" event from inside setRemoteDescription.
        """
        sdp = _text(message, "sdp")
        publish = {str(k): str(v) for k, v in (message.get("publish") or {}).items()}
        streams = {}
        for entry in message.get("streams") or []:
            stream = RemoteStream(
                mid=_text(entry, "mid"),
                participant_id=_text(entry, "participant_id"),
                track_id=str(entry.get("track_id") or ""),
                kind=str(entry.get("kind") or ""),
            )
            streams[stream.mid] = stream
        self._streams = streams
        self._publish_mids = publish
        pc = self._pc
        if pc is None or self._left:
            return  # leaving: the relay gets `leave`, not an answer
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            self._encrypt_media(pc, publish)
            for kind, mid in publish.items():
                transceiver = _by_mid(pc, mid)
                track = self._tracks.get(kind)
                if transceiver is None or track is None or transceiver.kind != kind:
                    log.warning("offer asks to publish %s on mid %s: not possible", kind, mid)
                    continue
                transceiver.sender.replaceTrack(track)
                transceiver.direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            log.warning("cannot answer the relay's offer: %s", exc)
            self.errors.append(("client_bad_offer", str(exc)))
            return
        await self._send({"type": "answer", "sdp": pc.localDescription.sdp})

    # ------------------------------------------------------------------- media

    def _encrypt_media(self, pc: RTCPeerConnection, publish: Mapping[str, str]) -> None:
        """Encrypt what we send and decrypt what we receive on every m-line, before
        any media flows (the relay connects only after our answer)."""
        keys = self._keys
        if keys is None:
            return
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid or ""
            decrypt_receiver(
                transceiver.receiver,
                transceiver.kind,
                keys,
                functools.partial(self._decrypt_failed, mid),
            )
            if publish.get(transceiver.kind) == mid:
                encrypt_sender(transceiver.sender, keys)

    def _decrypt_failed(self, mid: str) -> None:
        stream = self._streams.get(mid)
        if stream is not None:
            self._counters.setdefault(stream.participant_id, _Counters()).decrypt_failures += 1

    def _on_epoch(self) -> None:
        """New keys: start our video on a key frame under them, so receivers that
        could not decrypt the frames before have a picture at once."""
        pc = self._pc
        mid = self._publish_mids.get("video")
        transceiver = _by_mid(pc, mid) if pc is not None and mid is not None else None
        if transceiver is not None:
            transceiver.sender._send_keyframe()

    @property
    def security_code(self) -> str | None:
        """The meeting's security code (docs/e2ee.md): the same for everyone who
        holds the same keys; read it aloud to check. None before the first keys."""
        return self._keys.security_code if self._keys is not None else None

    @property
    def e2ee_members(self) -> tuple[str, ...]:
        """Participant ids holding the current keys (everyone who can decrypt)."""
        return self._keys.members if self._keys is not None else ()

    def e2ee_refused(self) -> dict[str, int]:
        """Key messages refused so far, by reason (forged, replayed, ...)."""
        return dict(self._keys.refused) if self._keys is not None else {}

    def _on_track(self, track: MediaStreamTrack) -> None:
        pc = self._pc
        transceiver = (
            next((t for t in pc.getTransceivers() if t.receiver.track is track), None)
            if pc is not None
            else None
        )
        mid = transceiver.mid if transceiver is not None else None
        if mid is None:
            log.warning("remote %s track without a transceiver mid: ignored", track.kind)
            return
        task = asyncio.create_task(self._consume(track, mid), name=f"conclave-recv-{mid}")
        self._consumers.add(task)
        task.add_done_callback(self._consumers.discard)

    async def _consume(self, track: MediaStreamTrack, mid: str) -> None:
        """Pull every frame (aiortc queues them unboundedly otherwise) and count it
        for whoever the latest offer says publishes on `mid`."""
        try:
            while True:
                frame = await track.recv()
                stream = self._streams.get(mid)
                if stream is None:
                    continue
                counters = self._counters.setdefault(stream.participant_id, _Counters())
                if track.kind == "audio":
                    counters.audio_frames += 1
                else:
                    counters.video_frames += 1
                    if isinstance(frame, VideoFrame):
                        counters.video_size = (frame.width, frame.height)
        except MediaStreamError:
            log.debug("remote track on mid %s ended", mid)

    def _on_connection_state(self) -> None:
        state = self.connection_state
        log.debug("peer connection %s", state)
        if state == "failed":
            log.warning("media connection to the relay failed")


def _by_mid(pc: RTCPeerConnection, mid: str) -> RTCRtpTransceiver | None:
    return next((t for t in pc.getTransceivers() if t.mid == mid), None)


def _text(message: Mapping[str, Any], key: str) -> str:
    """A required string field; KeyError/TypeError mark the message malformed."""
    value = message[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string")
    return value
