"""WebSocket signalling (docs/signaling.md): one session per participant.

Every message is validated before it touches a room; a bad one gets an `error`
reply and changes nothing, so a misbehaving client cannot hurt the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from conclave.tasks import spawn
from protos.grants import GrantError
from relay import metrics
from relay.errors import SignalingError
from relay.node import RelayNode
from relay.room import MEDIA_KINDS, Participant, Room

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
CLOSE_GRANT_REFUSED = 4001
CLOSE_NOT_ALLOWED = 4003
VIDEO_CODECS = ("vp8", "h264")  # what `join` may ask to send video in (relay/peer.py)
MAX_VIDEO_DIMENSION = 16384  # VP8 frames are at most 16383 pixels wide or high
# E2EE material is opaque to the relay (base64 text); these only bound its size. A
# key message carries the whole signed roster (up to 256 members).
MAX_BINDING_CHARS = 2048
MAX_KEY_MESSAGE_CHARS = 128 * 1024
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


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


class SignalingSession:
    """The signalling side of one participant, from `join` to disconnect."""

    def __init__(self, node: RelayNode, ws: web.WebSocketResponse) -> None:
        self.node = node
        self.ws = ws
        self.room: Room | None = None
        self.participant: Participant | None = None
        self._send_lock = asyncio.Lock()
        self._peer_watch: asyncio.Task[None] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(message))

    async def disconnect(self, reason: str, code: int) -> None:
        """Called by the room (meeting ended, node draining) to end this session."""
        with contextlib.suppress(Exception):
            await self.send({"type": "room_closed", "reason": reason})
        await self.ws.close(code=code, message=reason.encode()[:120])

    async def run(self) -> None:
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
                if self.ws.closed:
                    break
        finally:
            await self._leave()

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
            await self.ws.close(
                code=error.close_code or CLOSE_GRANT_REFUSED, message=error.code.encode()
            )

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "join":
            await self._join(message)
            return
        if self.participant is None:
            if kind in ("answer", "ice", "leave", "mute", "video_size", "e2ee_binding", "e2ee_key"):
                raise SignalingError("not_joined", "send 'join' first")
            raise SignalingError("malformed", f"unknown message type {kind!r}")
        if kind == "answer":
            self.participant.peer.apply_answer(_require(message, "sdp", str))
        elif kind == "ice":
            candidate = message.get("candidate")
            if candidate is not None and not isinstance(candidate, dict):
                raise SignalingError("malformed", "field 'candidate' must be an object or null")
            await self.participant.peer.add_ice_candidate(candidate)
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
            await self.ws.close()
        else:
            raise SignalingError("malformed", f"unknown message type {kind!r}")

    async def _mute(self, message: dict[str, Any]) -> None:
        media = message.get("kind")
        if media not in MEDIA_KINDS:
            raise SignalingError("malformed", "field 'kind' must be 'audio' or 'video'")
        muted = _require(message, "muted", bool)
        assert self.room is not None and self.participant is not None
        await self.room.set_muted(self.participant, str(media), muted)

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
        token = _require(message, "grant", str)
        publish = message.get("publish", [])
        if not isinstance(publish, list) or any(k not in MEDIA_KINDS for k in publish):
            raise SignalingError("malformed", "'publish' must be a list of 'audio'/'video'")
        video_codec = message.get("video_codec", "vp8")
        if not isinstance(video_codec, str) or video_codec.lower() not in VIDEO_CODECS:
            raise SignalingError("malformed", f"'video_codec' must be one of {VIDEO_CODECS}")
        try:
            grant = await self.node.grants.check(token)
        except GrantError as exc:
            raise SignalingError(f"grant_{exc.code}", str(exc), CLOSE_GRANT_REFUSED) from None
        if publish and not grant.can_publish:
            raise SignalingError(
                "not_allowed", "this grant does not allow publishing", CLOSE_NOT_ALLOWED
            )
        room = await self.node.open_room(grant.room_id)
        self.participant = await room.join(
            grant.participant_id,
            grant.display_name,
            list(dict.fromkeys(publish)),
            grant.can_subscribe,
            self.send,
            self.disconnect,
            f"video/{video_codec.lower()}",
            "host" if grant.role == "host" else "participant",
        )
        self.room = room
        self.node.participants_changed(room.room_id)
        self._peer_watch = spawn(self._watch_peer(self.participant), "peer-watch")

    async def _watch_peer(self, participant: Participant) -> None:
        """A participant whose negotiation failed (for example no answer in time) is
        disconnected rather than left half-connected."""
        await participant.peer.failed.wait()
        if self.participant is participant:
            await self.disconnect("negotiation_failed", 4008)

    async def _leave(self) -> None:
        if self._peer_watch is not None:
            self._peer_watch.cancel()
        if self.room is not None and self.participant is not None:
            room, participant = self.room, self.participant
            self.participant = None
            await room.leave(participant.participant_id)
            self.node.participants_changed(room.room_id)


def routes(node: RelayNode) -> list[web.RouteDef]:
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30)
        await ws.prepare(request)
        await SignalingSession(node, ws).run()
        return ws

    return [web.get("/ws", websocket)]
