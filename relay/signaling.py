"""WebSocket signalling (docs/signaling.md): one session per participant.

Every message is validated before it touches a room; a bad one gets an `error`
reply and changes nothing, so a misbehaving client cannot hurt the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from conclave.meeting import SCREEN_SHARE, SOURCES, MeetingPolicy
from conclave.tasks import spawn
from protos.grant_pb2 import JoinGrant
from protos.grants import GrantError
from relay import metrics
from relay.errors import SignalingError
from relay.node import RelayNode
from relay.room import CLOSE_LOCKED, CLOSE_REMOVED, Participant, Room, Waiting

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
CLOSE_GRANT_REFUSED = 4001
CLOSE_NOT_ALLOWED = 4003
CLOSE_TOO_SLOW = 4010
# Outgoing messages wait in a queue per session, written by one task: aiohttp's
# send waits for the socket to drain, and the room's broadcasts go through every
# participant in turn, so a client that stops reading must hold up only itself.
# One that falls this far behind (a few minutes of a busy meeting's roster and
# speaker messages), or whose socket takes this long to take one message, is
# closed `too_slow`: it is better off joining again than being fed a backlog.
MAX_QUEUED_MESSAGES = 512
MAX_QUEUED_BYTES = 1024 * 1024  # of JSON text
SEND_TIMEOUT_S = 5.0
# How long a slow client gets to read up to our close frame before its
# connection is dropped: it has shown it does not read.
SLOW_CLOSE_TIMEOUT_S = 2.0
# The kernel's send buffer of a signalling socket (Linux doubles it). Its default
# grows to megabytes on a fast link, which would hide a stalled client from the
# queue's bounds for that much longer; signalling needs little throughput.
SEND_BUFFER_BYTES = 128 * 1024
VIDEO_CODECS = ("vp8", "h264")  # what `join` may ask to send video in (relay/peer.py)
MAX_VIDEO_DIMENSION = 16384  # VP8 frames are at most 16383 pixels wide or high
# E2EE material is opaque to the relay (base64 text); these only bound its size. A
# key message carries the whole signed roster (up to 256 members).
MAX_BINDING_CHARS = 2048
MAX_KEY_MESSAGE_CHARS = 128 * 1024
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
# The media kinds name the two sources every client had before screen sharing.
_SOURCE_ALIASES = {"audio": "microphone", "video": "camera"}
# What a joined participant may send; a waiting one may only `leave`.
_PARTICIPANT_MESSAGES = frozenset(
    {"answer", "ice", "leave", "mute", "video_size", "e2ee_binding", "e2ee_key", "publish",
     "unpublish"}
)  # fmt: skip
# Moderator messages (hosts and co-hosts); `set_role` is the host's alone.
_MODERATOR_MESSAGES = frozenset(
    {"admit", "deny", "remove", "mute_participant", "set_publish_rights", "set_role",
     "update_room"}
)  # fmt: skip
_POLICY_FLAGS = ("locked", "suspended", "waiting_room")


def _require(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(name)
    if not isinstance(value, kind):
        raise SignalingError("malformed", f"field {name!r} is missing or has the wrong type")
    return value


def _opaque(message: dict[str, Any], name: str, limit: int) -> str:
    """A base64 text field the relay carries without reading it."""
    value = _require(message, name, str)
    if not value or len(value) > limit or not _BASE64.issuperset(value.encode()):
        raise SignalingError(
            "malformed", f"field {name!r} must be base64 text of at most {limit} characters"
        )
    return str(value)


def _source(value: Any) -> str:
    source = _SOURCE_ALIASES.get(value, value) if isinstance(value, str) else None
    if source not in SOURCES:
        raise SignalingError("malformed", f"a source is one of {list(SOURCES)}")
    return str(source)


def _participant_ids(message: dict[str, Any]) -> list[str]:
    ids = message.get("participant_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise SignalingError("malformed", "'participant_ids' must be a non-empty list of ids")
    return list(dict.fromkeys(ids))


class SignalingSession:
    """The signalling side of one participant, from `join` to disconnect."""

    def __init__(
        self,
        node: RelayNode,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.node = node
        self.ws = ws
        self._transport = transport  # to drop a client that does not read
        self.room: Room | None = None
        self.participant: Participant | None = None
        self.waiting: Waiting | None = None  # in the waiting room, until admitted
        self._left_on_purpose = False  # sent `leave`: its rejoin token ends too
        self._outbox: deque[str] = deque()  # JSON text, for `_write_queued`
        self._outbox_bytes = 0
        self._queued = asyncio.Event()
        self._closing = False  # nothing more is queued; the socket closes after the queue
        self._close_code: int | None = None  # the close to send after the queue, if any
        self._close_reason = ""
        self._writer: asyncio.Task[None] | None = None
        self._dropping: asyncio.Task[None] | None = None  # closing it as too slow
        self._peer_watch: asyncio.Task[None] | None = None
        self._join_started_ms: int | None = None  # the grant's issue, Unix ms

    async def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the writer task; never waits on the socket.

        On a closing or closed session this does nothing, and raises nothing: the
        session's own `run()` leaves the room when its socket ends, so no caller
        needs to learn it here, and an exception would stop room-wide work half
        done (a broadcast, `Room.join` between `joined` and the roster)."""
        if self._closing or self.ws.closed:
            return
        text = json.dumps(message)
        self._outbox.append(text)
        self._outbox_bytes += len(text)
        if len(self._outbox) > MAX_QUEUED_MESSAGES or self._outbox_bytes > MAX_QUEUED_BYTES:
            self._too_slow()
        self._queued.set()

    async def disconnect(self, reason: str, code: int) -> None:
        """Called by the room (meeting ended, node draining) to end this session:
        `room_closed` goes after what is queued, then the close. Neither is waited
        for here, so a stalled client holds up nobody (`Room.close` goes through
        everyone in turn)."""
        await self.send({"type": "room_closed", "reason": reason})
        self._close_after_queue(code, reason)

    def _close_after_queue(self, code: int, reason: str) -> None:
        """Close the socket once the writer has sent what is queued; nothing more is."""
        if not self._closing:
            self._closing = True
            self._close_code, self._close_reason = code, reason
            self._queued.set()

    async def _write_queued(self) -> None:
        """The one task that writes to the socket: queued messages in order, then
        the close asked for, if any."""
        try:
            while self._outbox or not self._closing:
                if not self._outbox:
                    self._queued.clear()
                    await self._queued.wait()
                    continue
                text = self._outbox.popleft()
                self._outbox_bytes -= len(text)
                if self.ws.closed:
                    return  # the client went: `run()` ends the session
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await self.ws.send_str(text)
        except TimeoutError:
            self._too_slow()
            return
        except Exception as exc:  # its transport is closing: `run()` notices too
            log.debug("signalling write failed: %s", type(exc).__name__)
            self._closing = True
            return
        if self._close_code is not None:
            await self._close(self._close_code, self._close_reason, SEND_TIMEOUT_S)

    def _too_slow(self) -> None:
        """Give up on a client that does not read what it is sent."""
        if self._dropping is not None:
            return
        self._closing = True
        self._outbox.clear()
        self._outbox_bytes = 0
        metrics.SIGNALING_SLOW_CLIENTS.inc()
        log.info("closing a signalling session whose client does not read (too_slow)")
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()  # stuck in a write, or about to be
        self._dropping = spawn(self._drop_slow(), "signaling-too-slow")

    async def _drop_slow(self) -> None:
        try:
            await self._leave()  # the room learns now, not when the socket gives up
        finally:
            # Behind what its socket holds already: a client that reads on sees why.
            farewell = json.dumps({"type": "room_closed", "reason": "too_slow"})
            await self._close(CLOSE_TOO_SLOW, "too_slow", SLOW_CLOSE_TIMEOUT_S, farewell)

    async def _close(
        self, code: int, reason: str, timeout: float, farewell: str | None = None
    ) -> None:
        """The closing handshake, bounded; a client that does not take part in
        time is cut off (a transport with unsent data would never close)."""
        try:
            async with asyncio.timeout(timeout):
                if farewell is not None:
                    await self.ws.send_str(farewell)
                await self.ws.close(code=code, message=reason.encode()[:120])
        except Exception as exc:
            log.debug("signalling close failed: %s", type(exc).__name__)
            if self._transport is not None:
                self._transport.abort()

    async def _finish_writing(self) -> None:
        """Wait for the writer (and a slow client's close): each step is bounded."""
        self._closing = True
        self._queued.set()
        if self._writer is not None:
            await asyncio.wait([self._writer])
        if self._dropping is not None:  # perhaps started by the writer just now
            await asyncio.wait([self._dropping])

    async def run(self) -> None:
        self._writer = spawn(self._write_queued(), "signaling-writer")
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    await self._refuse(SignalingError("malformed", "messages must be JSON text"))
                    continue
                try:
                    await self.handle(self._parse(msg.data))
                except SignalingError as exc:
                    await self._refuse(exc)
                except Exception as exc:  # a bug or etcd outage: refuse, keep the node up
                    log.warning("signalling message failed: %s", type(exc).__name__)
                    log.debug("signalling failure detail", exc_info=True)
                    await self._refuse(SignalingError("internal", "the relay could not do that"))
                if self.ws.closed or self._closing:
                    break
        finally:
            try:
                await self._leave()
            finally:
                await self._finish_writing()

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        try:
            message = json.loads(text)
        except ValueError:
            raise SignalingError("malformed", "message is not valid JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise SignalingError("malformed", "message must be an object with a string 'type'")
        return message

    async def _refuse(self, error: SignalingError) -> None:
        metrics.SIGNALING_ERRORS.labels(code=error.code).inc()
        await self.send({"type": "error", "code": error.code, "message": error.message})
        if error.close_code is not None or (error.code == "malformed" and self.room is None):
            self._close_after_queue(error.close_code or CLOSE_GRANT_REFUSED, error.code)

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "join":
            try:
                await self._join(message)
            except SignalingError as exc:
                if exc.code in metrics.GRANT_REFUSALS:
                    metrics.GRANTS_REFUSED.labels(reason=exc.code).inc()
                    metrics.JOINS.labels(result="refused").inc()
                raise
            return
        if self.participant is None:
            if self.waiting is not None and kind == "leave":
                self._close_after_queue(WSCloseCode.OK, "")
                return
            if kind in _PARTICIPANT_MESSAGES or kind in _MODERATOR_MESSAGES:
                if self.waiting is not None:
                    raise SignalingError("waiting", "wait until a host admits you")
                raise SignalingError("not_joined", "send 'join' first")
            raise SignalingError("malformed", f"unknown message type {kind!r}")
        if kind in _MODERATOR_MESSAGES:
            await self._moderate(kind, message)
        elif kind == "publish":
            assert self.room is not None
            await self.room.start_publishing(self.participant, _source(message.get("source")))
        elif kind == "unpublish":
            assert self.room is not None
            source = _source(message.get("source"))
            await self.room.stop_publishing(self.participant, source, "unpublished")
        elif kind == "answer":
            self.participant.connection.apply_answer(_require(message, "sdp", str))
        elif kind == "ice":
            candidate = message.get("candidate")
            if candidate is not None and not isinstance(candidate, dict):
                raise SignalingError("malformed", "field 'candidate' must be an object or null")
            await self.participant.connection.add_ice_candidate(candidate)
        elif kind == "mute":
            await self._mute(message)
        elif kind == "video_size":
            await self._video_size(message)
        elif kind == "e2ee_binding":
            binding = _opaque(message, "binding", MAX_BINDING_CHARS)
            assert self.room is not None
            await self.room.set_e2ee_binding(self.participant, binding)
        elif kind == "e2ee_key":
            to = _require(message, "to", str)
            key_message = _opaque(message, "message", MAX_KEY_MESSAGE_CHARS)
            assert self.room is not None
            await self.room.send_e2ee_key(self.participant, to, key_message)
        elif kind == "leave":
            self._left_on_purpose = True
            self._close_after_queue(WSCloseCode.OK, "")
        else:
            raise SignalingError("malformed", f"unknown message type {kind!r}")

    async def _mute(self, message: dict[str, Any]) -> None:
        source = _source(message.get("source", message.get("kind")))
        muted = _require(message, "muted", bool)
        assert self.room is not None and self.participant is not None
        await self.room.set_muted(self.participant, source, muted)

    async def _moderate(self, kind: str, message: dict[str, Any]) -> None:
        """A host's or co-host's action on the meeting, logged with its id."""
        room, actor = self.room, self.participant
        assert room is not None and actor is not None
        if not actor.moderates or (kind == "set_role" and actor.role != "host"):
            raise SignalingError("not_host", "only the meeting's hosts may do that")
        me = actor.participant_id
        node = self.node
        if kind == "admit":
            ids = None if message.get("all") is True else _participant_ids(message)
            for pid in await room.admit(ids):
                await node.audit(room, "admit", me, pid)
            node.participants_changed(room.room_id)
        elif kind == "deny":
            for pid in await room.deny(_participant_ids(message)):
                await node.audit(room, "deny", me, pid)
            node.participants_changed(room.room_id)
        elif kind == "remove":
            target = _require(message, "participant_id", str)
            if target == me:
                raise SignalingError("not_allowed", "leave instead of removing yourself")
            await node.remove(room, target, me)
        elif kind == "mute_participant":
            target = _require(message, "participant_id", str)
            source = _source(message.get("source"))
            await room.mute_participant(target, source)
            await node.audit(room, "mute", me, target, source)
        elif kind == "set_publish_rights":
            target = _require(message, "participant_id", str)
            sources = message.get("sources")
            if not isinstance(sources, list):
                raise SignalingError("malformed", "'sources' must be a list")
            rights = {_source(s) for s in sources}
            await room.set_rights(target, rights)
            await node.audit(room, "publish_rights", me, target, ",".join(sorted(rights)))
        elif kind == "set_role":
            target = _require(message, "participant_id", str)
            role = message.get("role")
            if role not in ("cohost", "participant"):
                raise SignalingError("malformed", "'role' must be 'cohost' or 'participant'")
            await room.set_role(target, str(role))
            await node.audit(room, "role", me, target, str(role))
        else:
            await node.update_room(room, _policy_change(message), me)

    async def _video_size(self, message: dict[str, Any]) -> None:
        track_id = _require(message, "track_id", str)
        size = []
        for name in ("width", "height"):
            value = message.get(name)
            if type(value) is not int or not 1 <= value <= MAX_VIDEO_DIMENSION:
                limit = MAX_VIDEO_DIMENSION
                raise SignalingError(
                    "malformed", f"field {name!r} must be an integer from 1 to {limit}"
                )
            size.append(value)
        assert self.room is not None and self.participant is not None
        await self.room.set_video_size(self.participant, track_id, size[0], size[1])

    async def _join(self, message: dict[str, Any]) -> None:
        if self.participant is not None:
            raise SignalingError("already_joined", "this session has already joined")
        if self.waiting is not None:
            raise SignalingError("already_joined", "this session is in the waiting room")
        token = _require(message, "grant", str)
        publish = message.get("publish", [])
        if not isinstance(publish, list):
            raise SignalingError("malformed", "'publish' must be a list of sources")
        publish = list(dict.fromkeys(_source(s) for s in publish))
        video_codec = message.get("video_codec", "vp8")
        if not isinstance(video_codec, str) or video_codec.lower() not in VIDEO_CODECS:
            raise SignalingError("malformed", f"'video_codec' must be one of {VIDEO_CODECS}")
        try:
            grant = await self.node.grants.check(token)
        except GrantError as exc:
            raise SignalingError(f"grant_{exc.code}", str(exc), CLOSE_GRANT_REFUSED) from None
        rights = {s for s in grant.sources if s in SOURCES}
        refused = [s for s in publish if s not in rights]
        if refused:
            raise SignalingError(
                "not_allowed", f"this grant does not allow publishing {refused}", CLOSE_NOT_ALLOWED
            )
        room = await self.node.open_room(grant.room_id)
        try:
            await self._enter(room, grant, publish, rights, f"video/{video_codec.lower()}")
        except BaseException:
            self.room = None
            self.waiting = None
            raise
        finally:
            self.node.participants_changed(room.room_id)

    async def _enter(
        self, room: Room, grant: JoinGrant, publish: list[str], rights: set[str], codec: str
    ) -> None:
        """Into the meeting, or its waiting room, as the meeting's policy says now."""
        role = "host" if grant.role == "host" else "participant"
        policy = room.policy
        # A host holds the key that could undo any of this: neither a removal
        # (of someone behind the same address) nor a lock keeps it out.
        removed = policy.is_removed(grant.participant_id, grant.source_tag) or (
            grant.rejoin_of and policy.is_removed(grant.rejoin_of, "")
        )
        # Rejoining after a lost connection (conclave/rejoin.py): it was inside.
        rejoining = bool(grant.rejoin_of)
        if role != "host" and removed:
            raise SignalingError("removed", "you were removed from this meeting", CLOSE_REMOVED)
        if policy.closed_to_newcomers and role != "host" and not rejoining:
            raise SignalingError("locked", "the meeting is locked", CLOSE_LOCKED)
        self.room = room
        # The join began when the control plane issued the grant.
        self._join_started_ms = grant.issued_at_ms or None
        if policy.waiting_room and role != "host" and not rejoining:
            self._join_started_ms = None  # waiting for a host is not join time
            metrics.JOINS.labels(result="waiting").inc()
            self.waiting = Waiting(
                grant.participant_id,
                grant.display_name,
                role,
                rights,
                grant.source_tag,
                publish,
                grant.can_subscribe,
                self.send,
                self.disconnect,
                codec,
                self._admitted,
            )
            await room.wait(self.waiting)
            return
        participant = await room.join(
            grant.participant_id,
            grant.display_name,
            publish,
            grant.can_subscribe,
            self.send,
            self.disconnect,
            codec,
            role,
            rights,
            grant.source_tag,
        )
        self._admitted(participant)

    def _admitted(self, participant: Participant) -> None:
        self.waiting = None
        self.participant = participant
        metrics.JOINS.labels(result="joined").inc()
        participant.peer.join_started_ms = self._join_started_ms or int(time.time() * 1000)
        self._peer_watch = spawn(self._watch_peer(participant), "peer-watch")
        if self.room is not None:
            spawn(self.node.record_rejoin(self.room, participant), "rejoin-token")

    async def _watch_peer(self, participant: Participant) -> None:
        """A participant whose negotiation failed (for example no answer in time) is
        disconnected rather than left half-connected."""
        await participant.connection.failed.wait()
        if self.participant is participant:
            await self.disconnect("negotiation_failed", 4008)

    async def _leave(self) -> None:
        if self._peer_watch is not None:
            self._peer_watch.cancel()
        member = self.participant or self.waiting
        if self.room is not None and member is not None:
            room = self.room
            self.participant = None
            self.waiting = None
            await room.leave(member.participant_id)
            self.node.participants_changed(room.room_id)
            if self._left_on_purpose:
                await self.node.forget_rejoin(room, member.participant_id)


def routes(node: RelayNode) -> list[web.RouteDef]:
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30)
        await ws.prepare(request)
        _limit_send_buffer(request.transport)
        await SignalingSession(node, ws, request.transport).run()
        return ws

    return [web.get("/ws", websocket)]


def _limit_send_buffer(transport: asyncio.Transport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def _policy_change(message: dict[str, Any]) -> Callable[[MeetingPolicy], MeetingPolicy]:
    """The `update_room` fields present, checked, as a change to the policy."""
    changes: dict[str, Any] = {}
    for name in _POLICY_FLAGS:
        if name in message:
            changes[name] = _require(message, name, bool)
    if "screen_share" in message:
        if message["screen_share"] not in SCREEN_SHARE:
            raise SignalingError("malformed", f"'screen_share' is one of {list(SCREEN_SHARE)}")
        changes["screen_share"] = message["screen_share"]
    if not changes:
        raise SignalingError("malformed", "update_room changes nothing")
    return lambda policy: replace(policy, **changes)
