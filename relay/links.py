"""Opening and accepting links between the relays of a meeting (docs/cascading.md).

Who may link: a relay of this cell, proven by a hello signed with the node key its
node record in etcd publishes (under its lease, so a key dies with its relay), for
a meeting whose node set in etcd names both ends (conclave/spans.py). Keys come
from the cell, never from clients; a process that is not a registered relay of
the meeting gets UNAUTHENTICATED or a refusal before it learns anything.

Who dials: a relay that gets its first participant in a meeting links to every
other relay of the meeting; a new relay therefore dials the ones already there.
If two relays dial each other at once, the link the lower node id opened stays
(both ends apply the same rule). A link that breaks is dialled again by the relay
that opened it, while it still has participants there and both are in the set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from conclave import spans
from conclave.store import NODES_PREFIX
from conclave.tasks import spawn
from conclave.tls import TlsFiles, mutual_channel_credentials
from protos import link_pb2_grpc
from protos.link_pb2 import LinkFrame
from relay import metrics
from relay.errors import SignalingError
from relay.link import LinkChannel, LinkClosed, MeetingLink, media_endpoint
from relay.link_crypto import (
    LinkAuthError,
    NodeIdentity,
    derive_keys,
    make_hello,
    peek_hello,
    public_key_from_b64,
    transcript,
    verify_hello,
)
from relay.link_socket import LinkSocket

if TYPE_CHECKING:
    from relay.node import RelayNode
    from relay.room import Room

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 3.0  # how long a first joiner waits for the meeting's other relays
REDIAL_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # then every 4 s while still wanted
MAX_ROOM_ID = 64
# Keepalive on link streams: a peer host that vanished is noticed in seconds.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class PeerRecord:
    """What a relay's node record says about linking to it."""

    rpc_address: str
    link_key: str
    lease: int


class CallChannel:
    """The dialer's end of a link stream."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, frame: LinkFrame) -> None:
        await self._call.write(frame)

    async def read(self) -> LinkFrame | None:
        frame = await self._call.read()
        return None if frame is grpc.aio.EOF else frame

    def cancel(self) -> None:
        self._call.cancel()


class ServerChannel:
    """The acceptor's end of a link stream."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def write(self, frame: LinkFrame) -> None:
        await self._context.write(frame)

    async def read(self) -> LinkFrame | None:
        frame = await self._context.read()
        return None if frame is grpc.aio.EOF else frame


class LinkManager:
    """This relay's links: dialling, accepting, and dialling again after a break."""

    def __init__(
        self,
        node: RelayNode,
        identity: NodeIdentity,
        socket: LinkSocket,
        media_host: str,
        tls: TlsFiles | None = None,
    ) -> None:
        """`tls`: dial peers' RelayLink over mutual TLS with this certificate
        (None: in clear); the links' hello authenticates them either way."""
        self.node = node
        self.tls = tls
        self.identity = identity
        self.socket = socket
        self.media_host = media_host
        self.lease: Callable[[], int] = lambda: 0  # this relay's current lease id, set by main
        self._dialing: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Dials in their handshake now (not waiting to retry): what a simultaneous
        # dial from the other side is weighed against.
        self._handshaking: set[tuple[str, str]] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def stop(self) -> None:
        for task in list(self._dialing.values()):
            task.cancel()
        for room in list(self.node.rooms.values()):
            for link in list(room.links.values()):
                await link.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    # -- dialling ----------------------------------------------------------------

    def wanted(self, room: Room) -> None:
        """The room has participants here: make sure it links to every other relay of
        the meeting (again, after a link broke)."""
        spawn(self._ensure_links(room.room_id), "link-ensure")

    async def ready(self, room: Room, timeout: float = READY_TIMEOUT_S) -> None:
        """Link the room to the meeting's other relays and wait (bounded) until each
        has told what is on its side: the first participant here must see the whole
        meeting from its first roster on, or it would start a key exchange of its
        own (docs/e2ee.md) that the meeting's leader could not take over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._ensure_links(room.room_id)
        except TimeoutError:
            return
        dials = [t for (rid, _), t in self._dialing.items() if rid == room.room_id]
        if dials:
            await asyncio.wait(dials, timeout=max(deadline - loop.time(), 0.01))
        for link in list(room.links.values()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.synced.wait(), remaining)

    async def _ensure_links(self, room_id: str) -> None:
        try:
            nodes = await spans.meeting_nodes(self.node.store, room_id)
        except Exception as exc:
            log.warning("reading a meeting's relays failed: %s", type(exc).__name__)
            return
        room = self.node.rooms.get(room_id)
        if room is None or self.node.node_id not in nodes:
            return
        for peer in sorted(nodes - {self.node.node_id} - set(room.links)):
            if (room_id, peer) not in self._dialing:
                self._dialing[(room_id, peer)] = spawn(self._dial(room_id, peer), "link-dial")

    async def _dial(self, room_id: str, peer: str) -> None:
        attempt = 0
        try:
            while True:
                room = self.node.rooms.get(room_id)
                if room is None or peer in room.links:
                    return
                if attempt and not room.local_count:
                    return  # nobody here needs it any more
                self._handshaking.add((room_id, peer))
                try:
                    outcome = await self._dial_once(room_id, peer)
                except Exception as exc:
                    metrics.LINK_OPENS.labels(result="failed").inc()
                    log.info("linking to a peer relay failed: %s", type(exc).__name__)
                    log.debug("link dial failure detail", exc_info=True)
                    outcome = "failed"
                finally:
                    self._handshaking.discard((room_id, peer))
                if outcome in ("opened", "duplicate", "not_member"):
                    return
                if not await spans.is_member(self.node.store, room_id, peer):
                    return  # it left the meeting (died, drained): nothing to link to
                delay = REDIAL_DELAYS_S[min(attempt, len(REDIAL_DELAYS_S) - 1)]
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            if self._dialing.get((room_id, peer)) is asyncio.current_task():
                del self._dialing[(room_id, peer)]

    async def _dial_once(self, room_id: str, peer: str) -> str:
        record = await self._peer_record(peer)
        if record is None:
            return "not_member"  # not registered (any more)
        channel = self._channels.get(record.rpc_address)
        if channel is None:
            if self.tls is None:
                channel = grpc.aio.insecure_channel(record.rpc_address, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    record.rpc_address,
                    mutual_channel_credentials(self.tls),
                    options=CHANNEL_OPTIONS,
                )
            self._channels[record.rpc_address] = channel
        call = link_pb2_grpc.RelayLinkStub(channel).Link()  # type: ignore[no-untyped-call]
        stream = CallChannel(call)
        try:
            ephemeral = X25519PrivateKey.generate()
            payload, signature = make_hello(
                self.identity, self.node.node_id, self.lease(), peer, ephemeral
            )
            await stream.write(LinkFrame(payload=payload, signature=signature))
            reply = await asyncio.wait_for(stream.read(), HANDSHAKE_TIMEOUT_S)
            if reply is None:
                raise LinkClosed("the peer ended the link during the handshake")
            hello = verify_hello(
                reply.payload,
                reply.signature,
                public_key_from_b64(record.link_key),
                expect_to=self.node.node_id,
                expect_reply_to=transcript(payload),
            )
            if hello.node_id != peer or hello.lease != record.lease:
                raise LinkAuthError("wrong_node", "the answer is not from the relay dialled")
            keys = derive_keys(ephemeral, hello.ephemeral, payload, reply.payload, dialer=True)
            link = MeetingLink(room_id, peer, True, keys, stream, self.socket)
            try:
                await link.send_now(
                    {
                        "type": "open",
                        "room_id": room_id,
                        "media": media_endpoint(self.media_host, self.socket.port, link.receive_id),
                    }
                )
                answer = await link.receive_message(HANDSHAKE_TIMEOUT_S)
                if answer["type"] == "refused":
                    reason = str(answer.get("reason", ""))
                    log.info("a peer relay refused a link: %s", reason)
                    await link.close(say_bye=False)
                    return reason if reason in ("duplicate", "not_member") else "failed"
                if answer["type"] != "opened":
                    raise LinkClosed("unexpected answer to open")
                link.set_peer_media(answer.get("media"))
                room = self.node.rooms.get(room_id)
                if room is None:
                    await link.close()
                    return "opened"  # the room closed meanwhile
                await self._attach(room, link)
            except BaseException:
                await link.close(say_bye=False)
                raise
        except BaseException:
            stream.cancel()
            raise
        return "opened"

    async def _attach(self, room: Room, link: MeetingLink) -> None:
        metrics.LINK_OPENS.labels(result="opened").inc()
        await room.attach_link(link)
        link.start(room, self._closed)

    async def _closed(self, link: MeetingLink) -> None:
        room = self.node.rooms.get(link.room_id)
        if room is None:
            return
        await room.detach_link(link)
        self.node.participants_changed(room.room_id)
        if link.dialer and not link.said_bye and room.local_count:
            self.wanted(room)  # it broke: dial again (stops once the peer left the set)

    async def _peer_record(self, node_id: str) -> PeerRecord | None:
        raw = await self.node.store.get(NODES_PREFIX + node_id)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            rpc_address, link_key, lease = data["rpc_address"], data["link_key"], data["lease"]
        except (ValueError, KeyError, TypeError):
            return None
        if not (
            isinstance(rpc_address, str) and isinstance(link_key, str) and isinstance(lease, int)
        ):
            return None
        return PeerRecord(rpc_address, link_key, lease)

    # -- accepting -----------------------------------------------------------------

    async def accept(self, stream: LinkChannel, abort: Any) -> None:
        """Serve one incoming link stream until the link ends. `abort(code, text)`
        ends the call with a gRPC status."""
        first = await asyncio.wait_for(stream.read(), HANDSHAKE_TIMEOUT_S)
        if first is None:
            return
        try:
            claimed = peek_hello(first.payload)
            record = await self._peer_record(claimed.node_id)
            if record is None:
                raise LinkAuthError("unknown_node", "no relay of this cell has that node id")
            hello = verify_hello(
                first.payload,
                first.signature,
                public_key_from_b64(record.link_key),
                expect_to=self.node.node_id,
                expect_reply_to=b"",
            )
            if hello.lease != record.lease:
                raise LinkAuthError("stale", "the hello names an earlier run of that relay")
        except LinkAuthError as exc:
            metrics.LINK_OPENS.labels(result="unauthenticated").inc()
            log.info("refused a link: %s", exc.code)
            await abort(grpc.StatusCode.UNAUTHENTICATED, f"link refused: {exc.code}")
            return
        peer = hello.node_id
        ephemeral = X25519PrivateKey.generate()
        payload, signature = make_hello(
            self.identity,
            self.node.node_id,
            self.lease(),
            peer,
            ephemeral,
            reply_to=transcript(first.payload),
        )
        await stream.write(LinkFrame(payload=payload, signature=signature))
        keys = derive_keys(ephemeral, hello.ephemeral, first.payload, payload, dialer=False)
        link = MeetingLink("", peer, False, keys, stream, self.socket)
        try:
            opening = await link.receive_message(HANDSHAKE_TIMEOUT_S)
            room_id = opening.get("room_id")
            if (
                opening["type"] != "open"
                or not isinstance(room_id, str)
                or not 0 < len(room_id) <= MAX_ROOM_ID
            ):
                raise LinkClosed("malformed open")
            link.room_id = room_id
            link.set_peer_media(opening.get("media"))
            store = self.node.store
            if not (
                await spans.is_member(store, room_id, peer)
                and await spans.is_member(store, room_id, self.node.node_id)
            ):
                metrics.LINK_OPENS.labels(result="not_member").inc()
                await link.send_now({"type": "refused", "reason": "not_member"})
                await link.close(say_bye=False)
                return
            if (room_id, peer) in self._handshaking and self.node.node_id < peer:
                # Both dialled at once: the lower node id's link stays (both apply this).
                await link.send_now({"type": "refused", "reason": "duplicate"})
                await link.close(say_bye=False)
                return
            dialing = self._dialing.pop((room_id, peer), None)
            if dialing is not None:
                dialing.cancel()  # theirs stands; ours was losing or waiting to retry
            try:
                room = await self.node.open_linked_room(room_id)
            except SignalingError:  # the meeting's record is gone: it ended
                metrics.LINK_OPENS.labels(result="not_member").inc()
                await link.send_now({"type": "refused", "reason": "not_member"})
                await link.close(say_bye=False)
                return
            await link.send_now(
                {
                    "type": "opened",
                    "media": media_endpoint(self.media_host, self.socket.port, link.receive_id),
                }
            )
            await self._attach(room, link)
        except Exception as exc:  # malformed, timed out, or etcd did not answer
            log.info("an incoming link failed while opening: %s", type(exc).__name__)
            await link.close(say_bye=False)
            return
        await link.closed.wait()


class LinkServicer(link_pb2_grpc.RelayLinkServicer):
    """The gRPC face of `LinkManager.accept`."""

    def __init__(self, manager: LinkManager) -> None:
        self._manager = manager

    async def Link(self, request_iterator: Any, context: Any) -> None:
        try:
            await self._manager.accept(ServerChannel(context), context.abort)
        except TimeoutError:
            return
