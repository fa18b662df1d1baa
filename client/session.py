"""A meeting connection to a relay (`Session`), following docs/signaling.md: the
relay is always the offerer, so the client only ever answers. Call
`conclave.ice.use_host_addresses(addresses_from_env())` once at start-up (the CLI
does) before opening a session, so that loopback ICE candidates exist on a
single-machine cluster.

Given the control plane (`rooms=`), a session outlives its relay: when the relay
asks it to move (`reconnect`, a draining relay) or the connection drops, it asks
the control plane again with its rejoin token and joins wherever the meeting is
now, with a new peer connection, its tracks and new end-to-end keys; its counters
carry on (docs/signaling.md, "Reconnecting").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
from client.errors import AdmissionRefused, ConclaveError
from client.media import PatternVideoTrack, SineAudioTrack
from client.rooms import FIND_CA, CaDefault, RoomsClient
from conclave.tls import client_ssl_context, find_ca_file
from protos import rooms_pb2

log = logging.getLogger("conclave.client")

KINDS = ("audio", "video")
#: What a participant publishes (grants, publish rights, signalling): the camera and
#: the screen are both video tracks.
SOURCES = ("microphone", "camera", "screen")
SOURCE_KINDS = {"microphone": "audio", "camera": "video", "screen": "video"}
#: The source a kind means in `Session(publish=...)`, `set_muted` and `is_muted`.
KIND_SOURCES = {"audio": "microphone", "video": "camera"}
ROLES = ("host", "cohost", "participant")
SCREEN_SHARE = ("hosts", "everyone")
VIDEO_CODECS = ("VP8", "H264")  # Session(video_codec=...)

#: Why a meeting turned a participant away (room_closed reason / close code), as said
#: to a person.
REFUSALS = {
    "denied": "the host did not let you into the meeting",
    "removed": "you were removed from this meeting",
    "locked": "the meeting is locked: nobody new may enter",
}
REFUSAL_CLOSE_CODES = {4005: "locked", 4006: "removed", 4007: "denied"}
#: `room_closed` reasons after which joining again does not help (others, such as
#: "node_draining", "node_shutdown" or a dropped connection, send a session with a
#: control plane to another relay).
FINAL_REASONS = frozenset({*REFUSALS, "room_ended"})
#: JoinRoom refusals that end a reconnecting session, and the `closed_reason` they
#: leave; anything else (UNAVAILABLE, a relay's node_draining, ...) is tried again.
FINAL_JOIN_CODES = {
    "NOT_FOUND": "room_ended",
    "PERMISSION_DENIED": "removed",
    "FAILED_PRECONDITION": "locked",
    "INVALID_ARGUMENT": "refused",
}
# Reconnect back-off: at once, then 0.25 s doubling up to 2 s, for `reconnect_timeout`.
RECONNECT_FIRST_DELAY_S = 0.25
RECONNECT_MAX_DELAY_S = 2.0
DEFAULT_RECONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RemoteStream:
    """One receiving m-line, as the relay's `offer.streams` describes it."""

    mid: str
    participant_id: str
    track_id: str
    kind: str
    source: str = ""  # "microphone", "camera" or "screen" ("" if the relay did not say)


class RemoteStats(TypedDict):
    audio_packets: int
    video_frames_decoded: int
    decrypt_failures: int


@dataclass
class _Counters:
    audio_frames: int = 0
    video_frames: int = 0
    video_size: tuple[int, int] | None = None  # of the latest decoded frame
    screen_frames: int = 0  # of video_frames, those of a screen track
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

    Publishes `publish` kinds ("audio" is the microphone source, "video" the
    camera; synthetic tracks unless `tracks` supplies them, keyed by kind), and a
    screen on demand (`publish_screen`); receives everyone else's media, keeps the
    roster with roles, the active speakers and who muted what, and counts what
    arrives per publisher. `on_active_speakers` is called with the display names of
    the speakers (loudest first) whenever the relay sends a new list.

    In a meeting with a waiting room, `start()` returns only once a host admitted
    us (`waiting` is True meanwhile, and `on_waiting` is called when the wait
    begins); `wait_timeout` bounds the wait (None: as long as it takes). Hosts and
    co-hosts see `waiting_list` and act with `admit`, `deny`, `remove`,
    `mute_participant`, `set_publish_rights`, `set_role` and `update_room`.

    With `rooms` (the control plane client it joined through) and the same
    `passcode` or `host_key`, the session reconnects by itself: when the relay says
    `reconnect` (it is draining), and when the signalling connection drops without
    a final `room_closed` (the relay died). It gets a new grant with its rejoin
    token (past the waiting room and a lock), opens a new peer connection, sends
    its tracks again and makes new end-to-end keys; `stats()` keeps counting. It
    retries with a short back-off for `reconnect_timeout` seconds, then gives up
    (`closed`, `closed_reason` "connection_lost"). `reconnects` counts the moves,
    `reconnecting` says one is under way. Without `rooms` a lost connection ends
    the session, as before.

    Use `async with Session(...)` or `start()` / `leave()`.
    """

    def __init__(
        self,
        join: rooms_pb2.JoinRoomResponse,
        display_name: str,
        publish: Sequence[str] = (),
        *,
        tracks: Mapping[str, MediaStreamTrack] | None = None,
        join_timeout: float = 10.0,
        wait_timeout: float | None = None,
        stats_interval: float = 1.0,
        on_active_speakers: Callable[[list[str]], None] | None = None,
        on_waiting: Callable[[], None] | None = None,
        e2ee: bool = True,
        identity: IdentityKey | None = None,
        video_codec: str = "VP8",
        rooms: RoomsClient | None = None,
        passcode: str = "",
        host_key: str = "",
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT_S,
        region: str = "",
        ca: Path | CaDefault | None = FIND_CA,
    ) -> None:
        unknown = [kind for kind in publish if kind not in KINDS]
        if unknown:
            raise ValueError(f"cannot publish {unknown}: kinds are {list(KINDS)}")
        self.grant = join.grant
        self.signal_url = join.signal_url
        #: besides the system's CAs, the CA a wss:// relay's certificate may be
        #: signed by (by default `rooms`'s, else what `find_ca_file()` finds)
        self.ca = (rooms.ca if rooms is not None else find_ca_file()) if ca is FIND_CA else ca
        self.participant_id = join.participant_id
        self.room_id = join.room_id
        self.node_id = join.node_id
        self.display_name = display_name
        #: the kinds asked for at the join ("audio", "video"); `publishing` says
        #: which sources are being sent now
        self.publish = list(dict.fromkeys(publish))
        #: how long the relay may take to answer the join (`joined` or `waiting`)
        self.join_timeout = join_timeout
        #: how long to wait in the waiting room for a host; None: as long as it takes
        self.wait_timeout = wait_timeout
        self.stats_interval = stats_interval
        #: relay error messages after the join, oldest first: (code, message)
        self.errors: list[tuple[str, str]] = []
        #: why the meeting ended, when the relay sent `room_closed` ("ended",
        #: "removed", ...)
        self.closed_reason: str | None = None
        #: our own mute state per published source ("microphone", "camera",
        #: "screen"): `set_muted`, or a host's `muted_by_host`
        self.muted: dict[str, bool] = {KIND_SOURCES[kind]: False for kind in self.publish}
        #: in the meeting's waiting room: joined the relay, not admitted yet
        self.waiting = False
        #: for hosts and co-hosts: who waits to be admitted, (participant_id, name)
        self.waiting_list: list[tuple[str, str]] = []
        #: "host", "cohost" or "participant" once joined (None before)
        self.role: str | None = None
        #: the sources we may publish now, as the relay says (`joined`,
        #: `publish_rights`)
        self.publish_rights: list[str] = []
        #: the meeting's policy flags from `joined` / `room_updated`: waiting_room,
        #: locked, suspended, screen_share
        self.room_state: dict[str, Any] = {}
        #: sources of ours a host muted (`muted_by_host`), oldest first
        self.muted_by_host: list[str] = []
        #: sources the relay stopped taking from us (`unpublished`): (source, reason)
        self.unpublished: list[tuple[str, str]] = []
        self.on_active_speakers = on_active_speakers
        self.on_waiting = on_waiting
        #: end-to-end encryption (docs/e2ee.md); off only for benchmarks
        self.e2ee = e2ee
        if video_codec.upper() not in VIDEO_CODECS:
            raise ValueError(f"video codec {video_codec!r}: choose from {list(VIDEO_CODECS)}")
        #: the codec to send video in; the relay then offers it first (`join`)
        self.video_codec = video_codec.upper()
        self._identity = identity
        self._keys: MeetingKeys | None = None
        #: the control plane to ask again after a lost connection (None: no reconnects)
        self.rooms = rooms
        self._passcode = passcode
        self._host_key = host_key
        self.region = region  # asked for in every JoinRoom when reconnecting
        #: how long to keep trying to reconnect before giving up
        self.reconnect_timeout = reconnect_timeout
        #: how many times the session moved to a new connection (relay)
        self.reconnects = 0
        self._rejoin: tuple[str, str] | None = None  # (participant id, token) of `joined`
        self._reconnect_task: asyncio.Task[None] | None = None
        self._generation = 0  # of the connection; media of older ones is not counted
        self._joined_once = False
        self._own_ids: set[str] = {self.participant_id}  # every participant id we had
        self._audio_rtp_before: dict[str, int] = {}  # pid -> packets on earlier connections

        self._tracks: dict[str, MediaStreamTrack] = {}  # source -> what we send
        self._own_tracks: list[MediaStreamTrack] = []
        for kind in self.publish:
            source = KIND_SOURCES[kind]
            given = tracks or {}
            self._add_own_track(source, given.get(kind) or given.get(source))

        self._roster: dict[str, str] = {}  # present now, self included
        self._seen: dict[str, str] = {}  # everyone ever present, self included
        self._roles: dict[str, str] = {}  # pid -> role, present now
        self._published: dict[str, dict[str, str]] = {}  # pid -> track_id -> kind
        self._sources: dict[str, dict[str, str]] = {}  # pid -> track_id -> source
        self._streams: dict[str, RemoteStream] = {}  # mid -> publisher, latest offer
        self._publish_mids: dict[str, str] = {}  # source -> mid, latest offer
        self._pending_publish: dict[str, asyncio.Future[None]] = {}  # publish_source
        self._join_timer: asyncio.Timeout | None = None  # start(), until joined
        self._wait_limit: float | None = wait_timeout  # of the join under way
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

        The relay must answer the join within `join_timeout`. If it puts us in the
        meeting's waiting room (`waiting`), `waiting` turns True, `on_waiting` is
        called, and the wait for a host lasts `wait_timeout` from then on (None, the
        default: as long as it takes; cancel `start()` or give up with a timeout of
        your own). Raises `AdmissionRefused` (a `ConclaveError`) with code "denied",
        "removed" or "locked" when the meeting turns us away, and `ConclaveError` with
        code "wait_timeout" when no host admitted us in time. The relay's first offer
        is answered in the background right after `joined`.
        """
        if self._http is not None:
            raise RuntimeError("a Session can only be started once")
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(self.ca))
        )
        try:
            await self._connect(self.join_timeout, self.wait_timeout)
        except BaseException:
            self._left = True
            await self._teardown()
            self._disconnected.set()
            raise
        self._poller = asyncio.create_task(self._poll_loop(), name="conclave-stats")

    async def _connect(self, join_timeout: float, wait_timeout: float | None) -> None:
        """One connection to the relay of the current grant, up to `joined`; on
        failure what it opened is closed again (the session's tracks stay)."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        self._joined = loop.create_future()
        # max-bundle: with aiortc's default ("balanced") a second m-line of the same
        # kind is created on the first one's transport and marked bundled, so BUNDLE
        # processing never moves it to the primary transport: it stays on a transport
        # that is then stopped and never sends or receives.
        pc = self._pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", functools.partial(self._on_connection_state, pc))
        assert self._http is not None
        try:
            try:
                async with asyncio.timeout(join_timeout):
                    self._ws = await self._http.ws_connect(self.signal_url)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise ConclaveError(
                    f"cannot open the signalling connection to {self.signal_url}: {reason}"
                ) from None
            self._reader = asyncio.create_task(self._read(self._ws), name="conclave-signalling")
            publish = [KIND_SOURCES[kind] for kind in self.publish]
            await self._send(
                {
                    "type": "join",
                    "grant": self.grant,
                    # the screen is asked for again after the join (`_rejoined`)
                    "publish": [source for source in publish if source in self._tracks],
                    "video_codec": self.video_codec.lower(),
                }
            )
            try:
                async with asyncio.timeout(join_timeout) as timer:
                    self._join_timer = timer  # `waiting` moves its deadline
                    self._wait_limit = wait_timeout
                    await asyncio.shield(self._joined)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._left and (task is None or not task.cancelling()):
                    # `leave()` from elsewhere, while we were waiting to be let in
                    raise ConclaveError("left the meeting before the join", "left") from None
                raise
            except TimeoutError:
                if self.waiting and wait_timeout is not None:
                    raise ConclaveError(
                        f"no host admitted us from the waiting room within {wait_timeout:g} s",
                        "wait_timeout",
                    ) from None
                raise ConclaveError(
                    f"the relay at {self.signal_url} did not answer the join "
                    f"within {join_timeout:g} s"
                ) from None
            finally:
                self._join_timer = None
        except BaseException:
            await self._close_connection(keep_tracks=True)
            raise

    async def leave(self) -> None:
        """Say `leave`, then close the peer connection and the WebSocket.

        Safe to call more than once and after the relay closed the connection.
        """
        if self._left:
            return
        self._left = True
        reconnecting = self._reconnect_task
        if reconnecting is not None:
            reconnecting.cancel()
            await asyncio.gather(reconnecting, return_exceptions=True)
        await self.refresh_stats()  # the last RTP figures, before the receivers stop
        ws = self._ws
        if ws is not None and not ws.closed and not self._disconnected.is_set():
            with contextlib.suppress(Exception):
                await self._send({"type": "leave"})
                # The relay closes the connection; give it a moment to do so.
                async with asyncio.timeout(2.0):
                    await self._disconnected.wait()
        await self._teardown()
        self._disconnected.set()

    async def wait_closed(self) -> None:
        """Until the session ends: `room_closed` for good, removed, left, or (without
        `rooms`, or after `reconnect_timeout` of failed attempts) connection lost."""
        await self._disconnected.wait()

    @property
    def closed(self) -> bool:
        return self._disconnected.is_set()

    @property
    def reconnecting(self) -> bool:
        """Moving to a new connection right now (media paused meanwhile)."""
        return self._reconnect_task is not None

    async def _teardown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._close_connection(keep_tracks=False)
        for track in self._own_tracks:
            track.stop()
        if self._http is not None:
            await self._http.close()

    async def _close_connection(self, keep_tracks: bool) -> None:
        """Close the current connection (peer connection, keys, WebSocket). With
        `keep_tracks` our tracks survive it, for the next connection to send."""
        reader, pc, keys, ws, joined = self._reader, self._pc, self._keys, self._ws, self._joined
        self._reader, self._keys, self._ws = None, None, None
        self._generation += 1  # whatever the old connection still delivers is not counted
        if reader is not None:  # first, so no offer is being applied meanwhile
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if pc is not None:
            if keep_tracks:
                await self._fold_audio_stats(pc)
                for transceiver in pc.getTransceivers():
                    # A sender stops its track when it stops: take ours away first.
                    if transceiver.sender.track is not None:
                        transceiver.sender.replaceTrack(None)
            await pc.close()
            if keep_tracks:
                self._pc = None
        # Started receivers end their tracks (MediaStreamError) when the pc closes;
        # a receiver that never started (no media yet) does not, so cancel those.
        consumers = set(self._consumers)
        if consumers:
            pending = consumers
            if not keep_tracks:  # leaving: their last frames still count
                _, pending = await asyncio.wait(consumers, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if keys is not None:
            keys.close()
        if ws is not None:
            await ws.close()
        if joined is not None and not joined.done():
            joined.cancel()

    async def _fold_audio_stats(self, pc: RTCPeerConnection) -> None:
        """Keep the audio packet counts of a connection that is about to close."""
        await self.refresh_stats()
        for pid, packets in self._audio_rtp.values():
            self._audio_rtp_before[pid] = self._audio_rtp_before.get(pid, 0) + packets
        self._audio_rtp.clear()

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
    def published_sources(self) -> dict[str, dict[str, str]]:
        """participant_id -> track_id -> source ("microphone", "camera", "screen"),
        as announced by the relay."""
        return {pid: dict(tracks) for pid, tracks in self._sources.items()}

    @property
    def roles(self) -> dict[str, str]:
        """participant_id -> "host", "cohost" or "participant", of everyone present
        (self included once joined)."""
        return dict(self._roles)

    @property
    def publishing(self) -> list[str]:
        """The sources we publish: asked for at the join or with `publish_source`,
        and neither unpublished by us nor stopped by the relay (`unpublished`)."""
        return [source for source in SOURCES if source in self._tracks]

    @property
    def publish_mids(self) -> dict[str, str]:
        """source -> mid of the m-line we send it on, from the latest offer."""
        return dict(self._publish_mids)

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
        """participant_id -> kind -> muted, for every microphone and camera track the
        relay announced (`source_mute_state` has screens too)."""
        state: dict[str, dict[str, bool]] = {}
        for pid, sources in self.source_mute_state.items():
            state[pid] = {
                SOURCE_KINDS[source]: muted
                for source, muted in sources.items()
                if source in ("microphone", "camera")
            }
        return state

    @property
    def source_mute_state(self) -> dict[str, dict[str, bool]]:
        """participant_id -> source -> muted, for every track the relay announced."""
        state: dict[str, dict[str, bool]] = {}
        for pid, tracks in self._published.items():
            muted = self._muted.get(pid, {})
            sources = self._sources.get(pid, {})
            state[pid] = {
                sources.get(tid) or KIND_SOURCES.get(kind, kind): muted.get(tid, False)
                for tid, kind in tracks.items()
            }
        return state

    def is_muted(self, participant_id: str, kind: str) -> bool:
        """Whether that participant's track is muted (ours: `set_muted`, or a host
        muted it). `kind` is a source, or a kind for the microphone or camera."""
        source = _source_name(kind)
        if participant_id == self.participant_id:
            return self.muted.get(source, False)
        return self.source_mute_state.get(participant_id, {}).get(source, False)

    async def set_muted(self, kind: str, muted: bool) -> None:
        """Mute or unmute what we publish and tell the meeting (`mute` message).
        `kind` is a source ("microphone", "camera", "screen") or a kind ("audio" is
        the microphone, "video" the camera).

        Audio: from now on silence is sent in place of the track's samples (same
        packet timing; the relay and everyone else see a silent level). Video: only
        signalled; the frames keep flowing (pause or replace the source to stop them).
        Unmuting also ends a host's mute (`muted_by_host`): the relay forwards the
        source again.
        """
        source = _source_name(kind)
        if source not in self._tracks:
            raise ValueError(f"this session does not publish {kind!r}")
        self._mute_locally(source, muted)
        await self._send({"type": "mute", "source": source, "muted": muted})

    def _mute_locally(self, source: str, muted: bool) -> None:
        track = self._tracks.get(source)
        if isinstance(track, _MutableAudioTrack):
            track.muted = muted
        self.muted[source] = muted

    # ----------------------------------------------------------- publishing

    async def publish_screen(
        self, track: MediaStreamTrack | None = None, *, timeout: float | None = None
    ) -> None:
        """Share a screen: a second video track (`track`, or a synthetic pattern like
        the camera's), end-to-end encrypted like the camera.

        Asks the relay (`publish`), which renegotiates with a screen m-line; returns
        once our answer to that offer is sent. Raises `ConclaveError` with code
        "not_allowed" when the meeting does not let us share (the host can give the
        right at run time: `publish_rights`), and after `timeout` (default
        `join_timeout`) seconds without an answer.
        """
        await self.publish_source("screen", track, timeout=timeout)

    async def publish_source(
        self,
        source: str,
        track: MediaStreamTrack | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Start publishing `source` after the join (see `publish_screen`); also
        publishes the microphone or camera again after `unpublish` or after the
        relay stopped it (`unpublished`). Without `track`, a synthetic one."""
        source = _source_name(source)
        if self.role is None:
            raise ConclaveError("not in the meeting yet: publish after the join")
        if source in self._tracks:
            raise ValueError(f"already publishing {source!r}")
        if source in self._pending_publish:
            raise ValueError(f"already asked to publish {source!r}")
        self._add_own_track(source, track)
        self.muted[source] = False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_publish[source] = done
        limit = self.join_timeout if timeout is None else timeout
        try:
            await self._send({"type": "publish", "source": source})
            try:
                async with asyncio.timeout(limit):
                    await asyncio.shield(done)
            except TimeoutError:
                raise ConclaveError(
                    f"the relay did not take our {source} within {limit:g} s", "timeout"
                ) from None
        except BaseException:
            if self._pending_publish.get(source) is done:
                del self._pending_publish[source]
            self._drop_own_track(source)
            raise

    async def unpublish(self, source: str) -> None:
        """Stop publishing `source` (a source, or "audio"/"video"): nothing more is
        sent at once, and the relay (`unpublish`) tells the others and renegotiates."""
        source = _source_name(source)
        if source not in self._tracks:
            raise ValueError(f"this session does not publish {source!r}")
        self._drop_own_track(source)
        await self._send({"type": "unpublish", "source": source})

    def _add_own_track(self, source: str, track: MediaStreamTrack | None) -> None:
        kind = SOURCE_KINDS[source]
        if track is None:
            track = SineAudioTrack() if kind == "audio" else PatternVideoTrack()
            self._own_tracks.append(track)
        if track.kind != kind:
            raise ValueError(f"track for {source!r} is a {track.kind} track")
        self._tracks[source] = _MutableAudioTrack(track) if kind == "audio" else track

    def _drop_own_track(self, source: str) -> None:
        """Stop sending `source` now; stop its track if we made it."""
        track = self._tracks.pop(source, None)
        self.muted.pop(source, None)
        if track is None:
            return
        mid = self._publish_mids.get(source)
        transceiver = _by_mid(self._pc, mid) if self._pc is not None and mid else None
        if transceiver is not None and transceiver.sender.track is track:
            transceiver.sender.replaceTrack(None)
        raw = track.source if isinstance(track, _MutableAudioTrack) else track
        if raw in self._own_tracks:
            self._own_tracks.remove(raw)
            raw.stop()

    # --------------------------------------------------------- host controls
    # Over signalling, for a host or co-host in the meeting (the same as the
    # control plane's host calls, without the host key). The relay answers a
    # participant with an `error` "not_host" (in `errors`); the effect shows in
    # `waiting_list`, `roles`, `room_state` and the roster.

    async def admit(self, participant_ids: Sequence[str] = (), *, all: bool = False) -> None:
        """Let these waiting participants in, or with `all=True` everyone waiting."""
        if all:
            await self._send({"type": "admit", "all": True})
            return
        await self._send({"type": "admit", "participant_ids": _ids(participant_ids)})

    async def deny(self, participant_ids: Sequence[str]) -> None:
        """Turn these waiting participants away."""
        await self._send({"type": "deny", "participant_ids": _ids(participant_ids)})

    async def remove(self, participant_id: str) -> None:
        """Disconnect a participant (present or waiting); it cannot come back."""
        await self._send({"type": "remove", "participant_id": participant_id})

    async def mute_participant(self, participant_id: str, source: str) -> None:
        """Stop forwarding a participant's source until it unmutes itself."""
        await self._send(
            {
                "type": "mute_participant",
                "participant_id": participant_id,
                "source": _source_name(source),
            }
        )

    async def set_publish_rights(self, participant_id: str, sources: Sequence[str]) -> None:
        """What a participant may publish from now on (empty: nothing)."""
        names = list(dict.fromkeys(_source_name(source) for source in sources))
        await self._send(
            {"type": "set_publish_rights", "participant_id": participant_id, "sources": names}
        )

    async def set_role(self, participant_id: str, role: str) -> None:
        """Make a participant a co-host ("cohost") or a participant again (hosts
        only)."""
        if role not in ("cohost", "participant"):
            raise ValueError(f"role {role!r}: choose cohost or participant")
        await self._send({"type": "set_role", "participant_id": participant_id, "role": role})

    async def update_room(
        self,
        *,
        locked: bool | None = None,
        suspended: bool | None = None,
        waiting_room: bool | None = None,
        screen_share: str | None = None,
    ) -> None:
        """Change the meeting's policy; arguments left at None stay as they are.
        The relay then sends everyone `room_updated` (see `room_state`)."""
        flags: dict[str, Any] = {
            name: value
            for name, value in (
                ("locked", locked),
                ("suspended", suspended),
                ("waiting_room", waiting_room),
                ("screen_share", screen_share),
            )
            if value is not None
        }
        if not flags:
            raise ValueError("update_room needs at least one of locked, suspended, ...")
        if screen_share is not None and screen_share not in SCREEN_SHARE:
            raise ValueError(f"screen_share {screen_share!r}: choose from {list(SCREEN_SHARE)}")
        await self._send({"type": "update_room", **flags})

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

    def received_screen_frames(self, participant_id: str) -> int:
        """Frames decoded from that participant's screen (also counted in
        `video_frames_decoded` of `stats()`)."""
        counters = self._counters.get(participant_id)
        return counters.screen_frames if counters is not None else 0

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "new"

    def stats(self) -> dict[str, RemoteStats]:
        """Media received per other participant, keyed by display name.

        `audio_packets` is the larger of audio frames decoded and the receivers'
        inbound-rtp packetsReceived (refreshed every `stats_interval`);
        `video_frames_decoded` counts frames the video tracks returned. Everyone
        seen appears, with zeros if nothing arrived; participants sharing a display
        name are summed. Across reconnects the figures add up: a participant that
        came back under a new id counts on under its name.
        """
        rtp: dict[str, int] = dict(self._audio_rtp_before)
        for pid, packets in self._audio_rtp.values():
            rtp[pid] = rtp.get(pid, 0) + packets
        result: dict[str, RemoteStats] = {}
        for pid in {*self._seen, *self._counters, *rtp}:
            if pid == self.participant_id or pid in self._own_ids:
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
        pc = self._pc
        if pc is None:
            return
        for transceiver in pc.getTransceivers():
            stream = self._streams.get(transceiver.mid or "")
            if stream is None or transceiver.kind != "audio":
                continue
            try:
                report = await transceiver.receiver.getStats()
            except Exception:  # a closing transport; the frame count still stands
                log.debug("getStats failed for mid %s", transceiver.mid, exc_info=True)
                continue
            if pc is not self._pc:
                return  # another connection now: its mids mean other streams
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
        next message is looked at, as the relay waits for each answer).

        The relay's close code is taken from its close frame: over TLS the end of
        the session can arrive with that frame, our echo of the close then fails,
        and aiohttp reports 1006 as `ws.close_code`."""
        close_code: int | None = None
        try:
            while True:
                frame = await ws.receive()
                if frame.type == aiohttp.WSMsgType.CLOSE:
                    close_code = frame.data
                    break
                if frame.type != aiohttp.WSMsgType.TEXT:
                    if frame.type == aiohttp.WSMsgType.ERROR:
                        log.warning("signalling connection error: %s", ws.exception())
                        break
                    if frame.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
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
            self._connection_lost(ws, ws.close_code if close_code is None else close_code)

    def _connection_lost(self, ws: aiohttp.ClientWebSocketResponse, close_code: int | None) -> None:
        """The relay's end of `ws` closed. Ignored for a connection already replaced
        or closed on purpose; else it fails the join under way, or reconnects (with
        a control plane, unless final), or ends the session."""
        if ws is not self._ws:
            return
        refusal = self.closed_reason if self.closed_reason in REFUSALS else None
        refusal = refusal or REFUSAL_CLOSE_CODES.get(close_code or 0)
        if refusal is not None and self.closed_reason is None:
            self.closed_reason = refusal
        joining = self._joined is not None and not self._joined.done()
        if not joining and self._may_reconnect():
            # No word from the relay before the drop: it is gone, say so. A close
            # with a code of the relay's own (4000 and up: too slow, say) is a word.
            spoke = self.closed_reason is not None or (close_code or 0) >= 4000
            self._start_reconnect(lost=not spoke)
        elif not self._joined_once or not joining:
            self._disconnected.set()  # a failed first join, or the end of the session
        if joining and self._joined is not None:
            error: ConclaveError
            if refusal is not None:
                error = AdmissionRefused(REFUSALS[refusal], refusal)
            elif self._left:
                error = ConclaveError("left the meeting before the join", "left")
            else:
                last = self.errors[-1] if self.errors else None
                detail = f"{last[0]}: {last[1]}" if last else f"close code {close_code}"
                code = last[0] if last else None
                error = ConclaveError(
                    f"the relay closed the connection before the join ({detail})", code
                )
            self._joined.set_exception(error)
            self._joined.exception()  # retrieved: start() may have given up already
        for source in list(self._pending_publish):
            self._fail_publish(
                source, ConclaveError(f"the meeting ended before our {source} was taken")
            )

    # ------------------------------------------------------------ reconnecting

    def _may_reconnect(self) -> bool:
        return (
            self.rooms is not None
            and self._joined_once
            and not self._left
            and self.closed_reason not in FINAL_REASONS
        )

    def _start_reconnect(self, lost: bool) -> None:
        """Move to a new connection in the background (once at a time). `lost`: the
        relay vanished without a word, which the control plane is told."""
        if self._reconnect_task is not None or not self._may_reconnect():
            return
        self._reconnect_task = asyncio.create_task(
            self._reconnect(self.node_id if lost else ""), name="conclave-reconnect"
        )

    async def _reconnect(self, lost_node: str) -> None:
        """Ask the control plane for a grant again, then switch connections; retried
        with back-off for `reconnect_timeout` seconds. The old connection stays up
        until the new grant is in hand (a draining relay still forwards meanwhile)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.reconnect_timeout
        delay = RECONNECT_FIRST_DELAY_S
        log.info("reconnecting to the meeting")
        final: str | None = None
        try:
            while not self._left:
                try:
                    join = await self._rejoin_grant(lost_node)
                    await self._close_connection(keep_tracks=True)
                    self._adopt(join)
                    remaining = max(give_up - loop.time(), 1.0)
                    await self._connect(min(self.join_timeout, remaining), remaining)
                    await self._rejoined()
                    return
                except AdmissionRefused as exc:
                    final = exc.code or "refused"
                except ConclaveError as exc:
                    final = FINAL_JOIN_CODES.get(exc.code or "")
                    log.debug("reconnect attempt failed: %s", exc)
                if final is not None or loop.time() + delay > give_up:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
            if self._left:
                return
            ws = self._ws
            if final is None and ws is not None and not ws.closed:
                return  # the old relay still has us: stay until it closes
            log.warning("could not reconnect to the meeting: %s", final or "gave up")
            self.closed_reason = final or "connection_lost"
            await self._close_connection(keep_tracks=True)
            self._disconnected.set()
        finally:
            self._reconnect_task = None
            ws = self._ws
            if (ws is None or ws.closed) and not self._disconnected.is_set():
                # The new connection dropped before this task ended: go again.
                self._start_reconnect(lost=self.closed_reason is None)

    async def _rejoin_grant(self, lost_node: str) -> rooms_pb2.JoinRoomResponse:
        assert self.rooms is not None
        rejoin_id, token = self._rejoin or ("", "")
        return await self.rooms.join_room(
            self.room_id,
            self.display_name,
            bool(self.publish) or bool(self._tracks),
            self._passcode,
            self._host_key,
            rejoin_participant_id=rejoin_id,
            rejoin_token=token,
            unreachable_node_id=lost_node,
            region=self.region,
        )

    def _adopt(self, join: rooms_pb2.JoinRoomResponse) -> None:
        """The new grant's relay and identity; what the old relay told us is void."""
        self.grant = join.grant
        self.signal_url = join.signal_url
        self.participant_id = join.participant_id
        self.node_id = join.node_id
        self._own_ids.add(join.participant_id)
        self.closed_reason = None
        self.role = None
        self.waiting = False
        self.waiting_list = []
        self._roster.clear()
        self._roles.clear()
        self._published.clear()
        self._sources.clear()
        self._muted.clear()
        self._streams = {}
        self._publish_mids = {}
        self._speakers = []

    async def _rejoined(self) -> None:
        """Back in: tell the new relay our mute state, and share the screen again
        if the new grant lets us (else stop it)."""
        self.reconnects += 1
        log.info("reconnected to the meeting")
        for source in list(self._tracks):
            if self.muted.get(source):
                await self._send({"type": "mute", "source": source, "muted": True})
        if "screen" in self._tracks:
            if "screen" in self.publish_rights:
                await self._send({"type": "publish", "source": "screen"})
            else:
                self._drop_own_track("screen")
                self.unpublished.append(("screen", "reconnect"))

    def _sender(
        self, ws: aiohttp.ClientWebSocketResponse
    ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """`_send` bound to one connection: key messages of an old connection's
        keys never reach the next relay."""

        async def send(message: dict[str, Any]) -> None:
            if ws is not self._ws or ws.closed:
                raise ConclaveError("the signalling connection is closed")
            await ws.send_str(json.dumps(message))

        return send

    def _fail_publish(self, source: str, error: ConclaveError) -> None:
        done = self._pending_publish.pop(source, None)
        if done is not None and not done.done():
            done.set_exception(error)
            done.exception()  # retrieved: publish_source may have given up already

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
            self._roles.pop(pid, None)
            self._published.pop(pid, None)
            self._sources.pop(pid, None)
            self._muted.pop(pid, None)
        elif kind == "participant_updated":
            self._update_participant(message["participant"])
        elif kind == "track_published":
            self._add_track(_text(message, "participant_id"), message["track"])
        elif kind == "track_unpublished":
            pid = _text(message, "participant_id")
            self._published.get(pid, {}).pop(_text(message, "track_id"), None)
            self._sources.get(pid, {}).pop(_text(message, "track_id"), None)
            self._muted.get(pid, {}).pop(_text(message, "track_id"), None)
        elif kind == "track_muted":
            muted = message["muted"]
            if not isinstance(muted, bool):
                raise TypeError("'muted' must be a boolean")
            pid = _text(message, "participant_id")
            self._muted.setdefault(pid, {})[_text(message, "track_id")] = muted
        elif kind == "active_speakers":
            self._on_active_speakers(message["speakers"])
        elif kind == "waiting":
            self._on_waiting()
        elif kind == "waiting_list":
            self.waiting_list = [
                (_text(p, "participant_id"), str(p.get("name") or p["participant_id"]))
                for p in _objects(message, "participants")
            ]
        elif kind == "room_updated":
            self.room_state = dict(_object(message, "room"))
        elif kind == "publish_rights":
            self.publish_rights = _sources(message["sources"])
        elif kind == "muted_by_host":
            source = _source_name(_text(message, "source"))
            self.muted_by_host.append(source)
            if source in self._tracks:
                self._mute_locally(source, True)
            log.info("a host muted our %s", source)
        elif kind == "unpublished":
            source = _source_name(_text(message, "source"))
            reason = str(message.get("reason") or "")
            self.unpublished.append((source, reason))
            self._drop_own_track(source)
            self._fail_publish(
                source, ConclaveError(f"the relay stopped our {source}: {reason}", reason)
            )
            log.info("the relay stopped our %s (%s)", source, reason or "no reason given")
        elif kind == "room_closed":
            self.closed_reason = str(message.get("reason") or "closed")
            log.info("meeting closed: %s", self.closed_reason)
        elif kind == "reconnect":
            log.info("the relay asks us to move (%s)", message.get("reason") or "no reason")
            self._start_reconnect(lost=False)
        elif kind == "error":
            code, text = str(message.get("code")), str(message.get("message"))
            self.errors.append((code, text))
            if self._joined is not None and not self._joined.done():
                error_class = AdmissionRefused if code in REFUSALS else ConclaveError
                self._joined.set_exception(
                    error_class(f"the relay refused the join: {code}: {text}", code)
                )
                self._joined.exception()
            elif code == "not_allowed" and self._pending_publish:
                # the refusal of a `publish` still unanswered: the one it names, else
                # the oldest
                pending = list(self._pending_publish)
                source = next((s for s in pending if s in text), pending[0])
                self._fail_publish(
                    source,
                    ConclaveError(f"the meeting does not let us publish {source}: {text}", code),
                )
            else:
                log.warning("relay error %s: %s", code, text)
        else:
            log.debug("ignoring relay message %r", kind)

    def _on_waiting(self) -> None:
        """The relay put us in the waiting room: wait for a host, up to
        `wait_timeout` from now instead of `join_timeout`."""
        if self.waiting or self.role is not None:
            return
        self.waiting = True
        timer = self._join_timer
        if timer is not None:
            deadline = None
            if self._wait_limit is not None:
                deadline = asyncio.get_running_loop().time() + self._wait_limit
            with contextlib.suppress(RuntimeError):  # already expiring: start() says so
                timer.reschedule(deadline)
        log.info("in the waiting room until a host admits us")
        callback = self.on_waiting
        if callback is not None:
            try:
                callback()
            except Exception:  # the application's bug must not end the signalling
                log.exception("on_waiting callback failed")

    def _on_joined(self, message: dict[str, Any]) -> None:
        self.participant_id = _text(message, "participant_id")
        self.room_id = str(message.get("room_id") or self.room_id)
        self.node_id = str(message.get("node_id") or self.node_id)
        self.role = str(message.get("role") or "participant")
        if "publish_rights" in message:
            self.publish_rights = _sources(message["publish_rights"])
        else:  # a relay that does not say: what we asked for
            self.publish_rights = [KIND_SOURCES[kind] for kind in self.publish]
        if message.get("room") is not None:
            self.room_state = dict(_object(message, "room"))
        self.waiting = False
        self._joined_once = True
        self._own_ids.add(self.participant_id)
        token = message.get("rejoin_token")
        if isinstance(token, str) and token:
            self._rejoin = (self.participant_id, token)
        self._roster[self.participant_id] = self.display_name
        self._seen[self.participant_id] = self.display_name
        self._roles[self.participant_id] = self.role
        if self.e2ee and self._keys is None and self._ws is not None:
            self._keys = MeetingKeys(
                self.room_id,
                self.participant_id,
                self._sender(self._ws),
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
        self._roles[pid] = str(participant.get("role") or "participant")
        self._published.setdefault(pid, {})
        self._sources.setdefault(pid, {})
        for track in participant.get("tracks") or []:
            self._add_track(pid, track)

    def _update_participant(self, participant: dict[str, Any]) -> None:
        """`participant_updated`: a new role (or name) of somebody present, us too."""
        pid = _text(participant, "participant_id")
        if pid != self.participant_id and pid not in self._roster:
            return  # left meanwhile, or never admitted
        role = participant.get("role")
        if isinstance(role, str) and role:
            self._roles[pid] = role
            if pid == self.participant_id:
                self.role = role
        name = participant.get("name")
        if isinstance(name, str) and name and pid != self.participant_id:
            self._roster[pid] = name
            self._seen[pid] = name
        rights = participant.get("publish_rights")
        if pid == self.participant_id and rights is not None:
            self.publish_rights = _sources(rights)

    def _add_track(self, pid: str, track: dict[str, Any]) -> None:
        track_id = _text(track, "track_id")
        kind = _text(track, "kind")
        source = track.get("source")
        if not isinstance(source, str) or not source:
            source = KIND_SOURCES.get(kind, kind)
        self._published.setdefault(pid, {})[track_id] = kind
        self._sources.setdefault(pid, {})[track_id] = source
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
        """Apply the relay's offer, attach our tracks on its `publish` m-lines
        (source -> mid), answer.

        `streams` is recorded before the description is applied, because aiortc
        fires the "track" event from inside setRemoteDescription.
        """
        sdp = _text(message, "sdp")
        publish: dict[str, str] = {}
        for source, mid in _object(message, "publish").items():
            publish[str(source)] = str(mid)
        streams = {}
        for entry in message.get("streams") or []:
            pid = _text(entry, "participant_id")
            track_id = str(entry.get("track_id") or "")
            kind = str(entry.get("kind") or "")
            source = str(entry.get("source") or "")
            stream = RemoteStream(
                mid=_text(entry, "mid"),
                participant_id=pid,
                track_id=track_id,
                kind=kind,
                source=source,
            )
            streams[stream.mid] = stream
        self._streams = streams
        previous, self._publish_mids = self._publish_mids, publish
        pc = self._pc
        if pc is None or self._left:
            return  # leaving: the relay gets `leave`, not an answer
        try:
            for source, mid in previous.items():
                if publish.get(source) != mid:  # the relay no longer takes it there
                    old = _by_mid(pc, mid)
                    if old is not None and old.sender.track is not None:
                        old.sender.replaceTrack(None)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            self._encrypt_media(pc, publish)
            for source, mid in publish.items():
                transceiver = _by_mid(pc, mid)
                track = self._tracks.get(source)
                wanted = SOURCE_KINDS.get(source)
                if transceiver is None or track is None or transceiver.kind != wanted:
                    log.warning("offer asks to publish %s on mid %s: not possible", source, mid)
                    continue
                if transceiver.sender.track is not track:
                    transceiver.sender.replaceTrack(track)
                transceiver.direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            log.warning("cannot answer the relay's offer: %s", exc)
            self.errors.append(("client_bad_offer", str(exc)))
            return
        await self._send({"type": "answer", "sdp": pc.localDescription.sdp})
        for source in publish:
            done = self._pending_publish.get(source)
            if done is not None and source in self._tracks:
                del self._pending_publish[source]
                if not done.done():
                    done.set_result(None)

    # ------------------------------------------------------------------- media

    def _encrypt_media(self, pc: RTCPeerConnection, publish: Mapping[str, str]) -> None:
        """Encrypt what we send (on the m-line of every source we publish: microphone,
        camera, screen) and decrypt what we receive on every m-line, before any media
        flows (the relay connects only after our answer)."""
        keys = self._keys
        if keys is None:
            return
        publish_mids = set(publish.values())
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid or ""
            decrypt_receiver(
                transceiver.receiver,
                transceiver.kind,
                keys,
                functools.partial(self._decrypt_failed, self._generation, mid),
            )
            if mid in publish_mids:
                encrypt_sender(transceiver.sender, keys)

    def _decrypt_failed(self, generation: int, mid: str) -> None:
        if generation != self._generation:
            return
        stream = self._streams.get(mid)
        if stream is not None:
            self._counters.setdefault(stream.participant_id, _Counters()).decrypt_failures += 1

    def _on_epoch(self) -> None:
        """New keys: start our video (camera and screen) on a key frame under them,
        so receivers that could not decrypt the frames before have a picture at once."""
        pc = self._pc
        if pc is None:
            return
        for source in ("camera", "screen"):
            mid = self._publish_mids.get(source)
            transceiver = _by_mid(pc, mid) if mid is not None else None
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
        task = asyncio.create_task(
            self._consume(track, mid, self._generation), name=f"conclave-recv-{mid}"
        )
        self._consumers.add(task)
        task.add_done_callback(self._consumers.discard)

    async def _consume(self, track: MediaStreamTrack, mid: str, generation: int) -> None:
        """Pull every frame (aiortc queues them unboundedly otherwise) and count it
        for whoever the latest offer says publishes on `mid` (of this connection)."""
        try:
            while True:
                frame = await track.recv()
                if generation != self._generation:
                    return  # the session moved to another connection
                stream = self._streams.get(mid)
                if stream is None:
                    continue
                counters = self._counters.setdefault(stream.participant_id, _Counters())
                if track.kind == "audio":
                    counters.audio_frames += 1
                else:
                    counters.video_frames += 1
                    if stream.source == "screen":
                        counters.screen_frames += 1
                    if isinstance(frame, VideoFrame):
                        counters.video_size = (frame.width, frame.height)
        except MediaStreamError:
            log.debug("remote track on mid %s ended", mid)

    def _on_connection_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self._pc:
            return  # an old connection closing
        state = pc.connectionState
        log.debug("peer connection %s", state)
        if state == "failed":
            log.warning("media connection to the relay failed")
            # The relay may still answer signalling yet forward nothing to us: move
            # (a dead relay is told apart by the control plane, which asks it).
            self._start_reconnect(lost=True)


def _by_mid(pc: RTCPeerConnection, mid: str) -> RTCRtpTransceiver | None:
    return next((t for t in pc.getTransceivers() if t.mid == mid), None)


def _source_name(name: str) -> str:
    """A source, from its name or from a kind ("audio": microphone, "video": camera)."""
    source = KIND_SOURCES.get(name, name)
    if source not in SOURCES:
        raise ValueError(f"{name!r} is not a source: choose from {list(SOURCES)}")
    return source


def _sources(value: Any) -> list[str]:
    """A list of sources from the relay; TypeError/ValueError mark it malformed."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("sources must be a list of strings")
    return [_source_name(v) for v in value]


def _ids(participant_ids: Sequence[str]) -> list[str]:
    if isinstance(participant_ids, str):
        raise TypeError("participant_ids is a list of ids, not one id")
    ids = list(dict.fromkeys(participant_ids))
    if not ids:
        raise ValueError("no participant ids given")
    return ids


def _object(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An optional object field ({} when absent); TypeError marks it malformed."""
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{key!r} must be an object")
    return value


def _objects(message: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """A required list of objects; KeyError/TypeError mark the message malformed."""
    value = message[key]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError(f"{key!r} must be a list of objects")
    return value


def _text(message: Mapping[str, Any], key: str) -> str:
    """A required string field; KeyError/TypeError mark the message malformed."""
    value = message[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string")
    return value
