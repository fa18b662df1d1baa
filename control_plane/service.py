"""The public RoomService: meetings, joining them, rosters, host controls, the
audit log, ending them.

Every handler turns the named errors of errors.py into one gRPC status with a
message meant for the caller. Room ids and names appear in logs at DEBUG only.

A meeting's record lives on an expiring lease (`meeting_ttl`): etcd deletes it when
the meeting expires, and control_plane/expiry.py then drops its placement. Its audit
log (conclave/audit.py) is on a second lease that runs `audit_retention` longer, so
hosts can read it after the meeting ended or expired (docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from etcd3aio.errors import EtcdError

from conclave import audit, rejoin, spans
from conclave.meeting import MeetingGone, MeetingPolicy, policy_actions, update_policy
from conclave.store import EtcdStore, StoreError
from conclave.tls import TlsFiles
from control_plane import access, passcodes, validation
from control_plane.access import (
    WEB_BUCKET,
    ApiKeys,
    CreateLimiter,
    TooManyCreations,
    Unauthenticated,
    WrongOrganisation,
)
from control_plane.attempts import AttemptLimiter
from control_plane.errors import (
    ControlPlaneError,
    InvalidArgument,
    MeetingLocked,
    NoRelayAvailable,
    NoSuchMeeting,
    NoSuchParticipant,
    NotHost,
    PlacementUnsettled,
    PolicyConflict,
    RelayRefused,
    RelayUnavailable,
    RemovedFromMeeting,
    RoomNotFound,
    StoreUnavailable,
    TooManyAttempts,
)
from control_plane.failover import Failover
from control_plane.ids import NodeId, RoomId, new_participant_id, new_room_id
from control_plane.metrics import ControlPlaneMetrics
from control_plane.placer import Placer
from control_plane.records import (
    NodeInfo,
    RoomRecord,
    decode_placement,
    encode_placement,
    placement_key,
    room_key,
)
from control_plane.registry import NodeRegistry
from control_plane.relay_client import RelayClient
from control_plane.router import JoinRouter
from control_plane.signing import GrantSigner
from protos import rooms_pb2, rooms_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_MEETING_TTL_S = 86_400  # a day
DEFAULT_AUDIT_RETENTION_S = 30 * 86_400  # after the meeting's expiry
MAX_NODE_ID = 256  # a longer unreachable_node_id or full_node_id names no relay: ignored
MAX_REGION = 64  # a longer region names none: the joiner is taken to be anywhere
HOST_API = "host-api"  # the audit log's actor for RoomService calls with the host key

_STATUS: dict[type[ControlPlaneError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    RoomNotFound: grpc.StatusCode.NOT_FOUND,
    NoSuchMeeting: grpc.StatusCode.NOT_FOUND,
    NotHost: grpc.StatusCode.NOT_FOUND,
    TooManyAttempts: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooManyCreations: grpc.StatusCode.RESOURCE_EXHAUSTED,
    MeetingLocked: grpc.StatusCode.FAILED_PRECONDITION,
    PolicyConflict: grpc.StatusCode.FAILED_PRECONDITION,
    RemovedFromMeeting: grpc.StatusCode.PERMISSION_DENIED,
    NoSuchParticipant: grpc.StatusCode.NOT_FOUND,
    NoRelayAvailable: grpc.StatusCode.UNAVAILABLE,
    PlacementUnsettled: grpc.StatusCode.UNAVAILABLE,
    RelayUnavailable: grpc.StatusCode.UNAVAILABLE,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    WrongOrganisation: grpc.StatusCode.PERMISSION_DENIED,
}

# Failures of the etcd client: the store is down or slow, not the request wrong.
_STORE_FAILURES = (StoreError, EtcdError, grpc.aio.AioRpcError, TimeoutError)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["RoomService", Req, Any], Awaitable[Resp]]


def _rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Check the caller's credentials as `access.POLICY` says for this method (a
    method without an entry fails here, at import), then map control-plane and
    store errors to gRPC statuses; keep details out of logs."""
    policy = access.POLICY[handler.__name__]

    @functools.wraps(handler)
    async def wrapper(self: RoomService, request: Req, context: Any) -> Resp:
        try:
            self._check_credentials(policy, request, context)
            return await handler(self, request, context)
        except ControlPlaneError as exc:
            if isinstance(exc, RelayRefused):
                code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.FAILED_PRECONDITION)
            else:
                code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
            log.debug("%s -> %s: %s", handler.__name__, code.name, exc)
            await context.abort(code, str(exc))
        except _STORE_FAILURES as exc:
            log.warning("%s: etcd request failed (%s)", handler.__name__, type(exc).__name__)
            log.debug("etcd failure detail: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cluster store is unavailable")
        except Exception as exc:
            # The message may carry request data: its type at ERROR, the rest at DEBUG.
            log.error("%s failed unexpectedly: %s", handler.__name__, type(exc).__name__)
            log.debug("unexpected failure", exc_info=True)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper


class RoomService(rooms_pb2_grpc.RoomServiceServicer):
    """grpc.aio implementation of conclave.v1.RoomService."""

    def __init__(
        self,
        store: EtcdStore,
        registry: NodeRegistry,
        placer: Placer,
        signer: GrantSigner,
        relays: RelayClient,
        attempts: AttemptLimiter,
        api_keys: ApiKeys,
        *,
        web_organisation: str = "",
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        meeting_ttl: int = DEFAULT_MEETING_TTL_S,
        audit_retention: int = DEFAULT_AUDIT_RETENTION_S,
        metrics: ControlPlaneMetrics | None = None,
        creates: CreateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        relay_tls: TlsFiles | None = None,
    ) -> None:
        self._metrics = metrics or ControlPlaneMetrics(attempts, registry)
        self._store = store
        self._registry = registry
        self._placer = placer
        self._signer = signer
        self._relays = relays
        # checks rejoiners' unreachable-node hints
        self._failover = Failover(store, registry, tls=relay_tls)
        self._router = JoinRouter(store, registry, placer)  # the node for each joiner
        self._attempts = attempts
        self._api_keys = api_keys
        # The organisation of meetings the web page creates without an API key
        # (`--web-create-organisation`); empty: the web page needs one too.
        self._web_organisation = web_organisation
        self._creates = creates if creates is not None else CreateLimiter()  # per key id
        self._trusted_proxies = tuple(trusted_proxies)
        self._meeting_ttl = meeting_ttl
        self._audit_retention = audit_retention
        self._clock = clock

    def _check_credentials(self, policy: str, request: Any, context: Any) -> None:
        """Before anything else is read: a token that does not verify is refused
        everywhere; a method that needs credentials gets some. Whether they fit the
        meeting (its organisation, its host key) is decided where it is read."""
        caller = self._api_keys.caller(context)  # raises Unauthenticated for a bad token
        if caller is not None or policy == access.INVITED:
            return
        host_key: str = getattr(request, "host_key", "")
        if policy == access.MEETING and host_key:
            return
        from_web_page: bool = getattr(context, "from_web_page", False)
        if policy == access.API_KEY and self._web_organisation and from_web_page:
            return
        raise Unauthenticated("missing")

    @_rpc
    async def CreateRoom(
        self, request: rooms_pb2.CreateRoomRequest, context: Any
    ) -> rooms_pb2.Room:
        caller = self._api_keys.caller(context)
        organisation = caller.organisation if caller is not None else self._web_organisation
        name = validation.room_name(request.name)
        limit = validation.max_participants(request.max_participants)
        screen_share = validation.screen_share(request.screen_share)
        passcode = validation.passcode(request.passcode)
        # After validation (a typo costs nothing), before the passcode's scrypt.
        try:
            self._creates.take(caller.key_id if caller is not None else WEB_BUCKET)
        except TooManyCreations:
            self._metrics.creates_limited.inc()
            raise
        if not passcode and not request.waiting_room:
            passcode = passcodes.generate()  # a waiting room is the only other gate
        protected = await passcodes.protect(passcode) if passcode else None
        host_key = passcodes.new_host_key()
        policy = MeetingPolicy(waiting_room=request.waiting_room, screen_share=screen_share)
        # Placed with its creation, in the same transaction, so GetRoom names the
        # node; with no relay up the meeting still exists and the first JoinRoom
        # places it.
        room, node = await self._create_record(
            name, limit, protected, passcodes.host_key_digest(host_key), policy, organisation
        )
        node_id = node.node_id if node is not None else ""
        log.debug("created room %s on node %r", room.room_id, node_id)
        reply = _room_message(room, node_id)
        reply.passcode = passcode  # the only time either is told ("": none needed)
        reply.host_key = host_key
        return reply

    @_rpc
    async def GetRoom(self, request: rooms_pb2.GetRoomRequest, context: Any) -> rooms_pb2.Room:
        room = await self._host_room(validation.room_id(request.room_id), request.host_key, context)
        node = await self._current_node(room.room_id)
        return _room_message(room, node.node_id if node is not None else "")

    @_rpc
    async def JoinRoom(
        self, request: rooms_pb2.JoinRoomRequest, context: Any
    ) -> rooms_pb2.JoinRoomResponse:
        try:
            return await self._join_room(request, context)
        except (NoRelayAvailable, PlacementUnsettled):
            self._metrics.joins.labels(result="unavailable").inc()
            raise
        except _STORE_FAILURES:
            self._metrics.joins.labels(result="error").inc()
            raise

    async def _join_room(
        self, request: rooms_pb2.JoinRoomRequest, context: Any
    ) -> rooms_pb2.JoinRoomResponse:
        room_id = validation.room_id(request.room_id)
        display_name = validation.display_name(request.display_name)
        passcode = validation.passcode(request.passcode)
        source = self._source(context)
        limited = self._attempts.keys(room_id, source)
        wait, spent = await self._attempts.admit(limited)
        if wait > 0:
            self._metrics.joins.labels(result="locked_out").inc()
            raise TooManyAttempts(wait)
        raw = await self._store.get(room_key(room_id))
        room = RoomRecord.from_json(raw) if raw is not None else None
        # The same work and the same reply whether the meeting is missing or the
        # passcode wrong: the answer must not tell which ids exist. A host comes
        # with the host key instead. A meeting without a passcode needs none while
        # its waiting room is on (the host is the gate then); without either (a
        # record from before passcodes) it admits nobody but its host.
        if request.host_key:
            admitted = passcodes.is_host_key(request.host_key, room.host_key_sha256 if room else "")
        elif room is not None and room.passcode is None:
            admitted = room.policy.waiting_room
        else:
            admitted = await passcodes.check(passcode, room.passcode if room else None)
        if room is None or not admitted:
            await self._attempts.failed(limited, spent)
            self._metrics.joins.labels(result="not_found").inc()
            raise NoSuchMeeting()
        if spent:  # only after someone's failures: their records exist
            await self._attempts.succeeded(spent)
        role = "host" if request.host_key else "participant"
        # Back after a lost connection, with the token its relay gave it: not new.
        rejoin_of = ""
        if request.rejoin_participant_id and await rejoin.check(
            self._store, room_id, request.rejoin_participant_id, request.rejoin_token
        ):
            rejoin_of = request.rejoin_participant_id
        if room.policy.closed_to_newcomers and role != "host" and not rejoin_of:
            self._metrics.joins.labels(result="meeting_locked").inc()
            raise MeetingLocked()
        source_tag = self._attempts.tag(source)
        # A host holds the key that decides: a removal of someone behind the same
        # address does not keep it out (the relay applies the same rule).
        if role != "host" and room.policy.is_removed(rejoin_of, source_tag):
            self._metrics.joins.labels(result="removed").inc()
            raise RemovedFromMeeting()
        # A rejoiner that lost its relay: moved off it only if it does not answer us.
        exclude = frozenset[NodeId]()
        if 0 < len(request.unreachable_node_id) <= MAX_NODE_ID:  # only compared, never a key
            reported = NodeId(request.unreachable_node_id)
            exclude = await self._failover.excluded(room_id, reported)
        # A relay that refused this joiner as full, and where the joiner is: both only
        # compared with node records, never used as keys.
        full = (
            NodeId(request.full_node_id) if 0 < len(request.full_node_id) <= MAX_NODE_ID else None
        )
        region = request.region if len(request.region) <= MAX_REGION else ""
        routed = await self._router.node_for(room_id, exclude, full, region)
        node = routed.node
        if routed.wrote and await self._store.get(room_key(room_id)) is None:
            # EndRoom ran while we placed it or added a node: undo, or the placement
            # and spans outlive the room.
            await self._store.delete(placement_key(room_id))
            self._registry.forget_placement(room_id)
            await spans.forget_meeting(self._store, room_id)
            self._registry.forget_spans(room_id)
            raise RoomNotFound(room_id)
        participant_id = new_participant_id()
        grant, expires_at_ms = self._signer.issue(
            room_id,
            participant_id,
            node.node_id,
            display_name,
            sources=room.policy.default_sources(role, request.publish),
            can_subscribe=True,
            node_lease=node.lease,
            role=role,
            source_tag=source_tag,
            rejoin_of=rejoin_of,
        )
        log.debug("grant for room %s on node %s", room_id, node.node_id)
        self._metrics.joins.labels(result="granted").inc()
        return rooms_pb2.JoinRoomResponse(
            room_id=room_id,
            participant_id=participant_id,
            node_id=node.node_id,
            signal_url=node.signal_url,
            grant=grant,
            grant_expires_at_ms=expires_at_ms,
        )

    @_rpc
    async def ListParticipants(
        self, request: rooms_pb2.ListParticipantsRequest, context: Any
    ) -> rooms_pb2.ListParticipantsResponse:
        room = await self._host_room(validation.room_id(request.room_id), request.host_key, context)
        node = await self._current_node(room.room_id)
        if node is None:
            return rooms_pb2.ListParticipantsResponse()
        participants = await self._relays.list_participants(node, room.room_id)
        return rooms_pb2.ListParticipantsResponse(participants=participants)

    @_rpc
    async def EndRoom(
        self, request: rooms_pb2.EndRoomRequest, context: Any
    ) -> rooms_pb2.EndRoomResponse:
        room = await self._host_room(validation.room_id(request.room_id), request.host_key, context)
        room_id = room.room_id
        node = await self._current_node(room_id)
        await self._audit(room, "end")  # first: a meeting never ends unrecorded
        # The placement before the record: replicas that see the record go (expiry.py)
        # then find no placement left to clean up, and leave closing it to us.
        await self._store.delete(placement_key(room_id))
        self._registry.forget_placement(room_id)
        await spans.forget_meeting(self._store, room_id)
        self._registry.forget_spans(room_id)
        existed = await self._store.delete(room_key(room_id))
        await self._store.delete_prefix(rejoin.room_prefix(room_id))
        if node is not None:
            try:
                await self._relays.close_room(node, room_id)
            except RelayUnavailable as exc:
                # Its participants' grants name a room that no longer exists; the
                # relay drops them when it next checks, or when it dies.
                log.debug("ending room %s: %s", room_id, exc)
        if not existed:
            raise RoomNotFound(room_id)
        return rooms_pb2.EndRoomResponse()

    # --- host controls ------------------------------------------------------------------

    @_rpc
    async def UpdateRoom(
        self, request: rooms_pb2.UpdateRoomRequest, context: Any
    ) -> rooms_pb2.Room:
        room_id = validation.room_id(request.room_id)
        screen_share = (
            validation.screen_share(request.screen_share)
            if request.HasField("screen_share")
            else None
        )
        room = await self._host_room(room_id, request.host_key, context)
        if request.HasField("waiting_room") and not request.waiting_room and room.passcode is None:
            raise PolicyConflict(
                "this meeting has no passcode: its waiting room cannot be turned off"
            )
        changes: dict[str, Any] = {}
        for flag in ("locked", "suspended", "waiting_room"):
            if request.HasField(flag):
                changes[flag] = getattr(request, flag)
        if screen_share is not None:
            changes["screen_share"] = screen_share

        def change(policy: MeetingPolicy) -> MeetingPolicy:
            return dataclasses.replace(policy, **changes)

        try:
            before, after = await update_policy(self._store, room_id, change)
        except MeetingGone:
            raise NotHost() from None
        for action, detail in policy_actions(before, after):
            await self._audit(room, action, detail=detail)
        log.debug("room %s policy now %s", room_id, after)
        node = await self._current_node(room_id)
        updated = dataclasses.replace(room, policy=after)
        return _room_message(updated, node.node_id if node is not None else "")

    @_rpc
    async def AdmitParticipants(
        self, request: rooms_pb2.AdmitParticipantsRequest, context: Any
    ) -> rooms_pb2.AdmitParticipantsResponse:
        room_id = validation.room_id(request.room_id)
        ids = validation.participant_ids(request.participant_ids)
        if not ids and not request.all:
            raise InvalidArgument("participant_ids or all is required")
        room, node = await self._host_node(room_id, request.host_key, context)
        admitted = await self._relays.admit_participants(
            node,
            rooms_pb2.AdmitParticipantsRequest(
                room_id=room_id, participant_ids=ids, all=request.all
            ),
        )
        await self._audit_each(room, "admit", admitted)
        return rooms_pb2.AdmitParticipantsResponse(admitted=admitted)

    @_rpc
    async def DenyParticipants(
        self, request: rooms_pb2.DenyParticipantsRequest, context: Any
    ) -> rooms_pb2.DenyParticipantsResponse:
        room_id = validation.room_id(request.room_id)
        ids = validation.participant_ids(request.participant_ids)
        if not ids:
            raise InvalidArgument("participant_ids is required")
        room, node = await self._host_node(room_id, request.host_key, context)
        denied = await self._relays.deny_participants(
            node, rooms_pb2.DenyParticipantsRequest(room_id=room_id, participant_ids=ids)
        )
        await self._audit_each(room, "deny", denied)
        return rooms_pb2.DenyParticipantsResponse(denied=denied)

    @_rpc
    async def RemoveParticipant(
        self, request: rooms_pb2.ParticipantRequest, context: Any
    ) -> rooms_pb2.ParticipantActionResponse:
        room_id = validation.room_id(request.room_id)
        pid = validation.participant_id(request.participant_id)
        room, node = await self._host_node(room_id, request.host_key, context)
        # The relay writes the removal into the meeting's policy: it knows the
        # participant's source tag, which bars later joins from the same address.
        await self._relays.remove_participant(
            node, rooms_pb2.ParticipantRequest(room_id=room_id, participant_id=pid)
        )
        await self._audit(room, "remove", target=pid)
        return rooms_pb2.ParticipantActionResponse()

    @_rpc
    async def MuteParticipant(
        self, request: rooms_pb2.MuteParticipantRequest, context: Any
    ) -> rooms_pb2.ParticipantActionResponse:
        room_id = validation.room_id(request.room_id)
        pid = validation.participant_id(request.participant_id)
        source = validation.source(request.source)
        room, node = await self._host_node(room_id, request.host_key, context)
        await self._relays.mute_participant(
            node,
            rooms_pb2.MuteParticipantRequest(room_id=room_id, participant_id=pid, source=source),
        )
        await self._audit(room, "mute", target=pid, detail=source)
        return rooms_pb2.ParticipantActionResponse()

    @_rpc
    async def SetPublishRights(
        self, request: rooms_pb2.SetPublishRightsRequest, context: Any
    ) -> rooms_pb2.ParticipantActionResponse:
        room_id = validation.room_id(request.room_id)
        pid = validation.participant_id(request.participant_id)
        sources = validation.sources(request.sources)
        room, node = await self._host_node(room_id, request.host_key, context)
        await self._relays.set_publish_rights(
            node,
            rooms_pb2.SetPublishRightsRequest(room_id=room_id, participant_id=pid, sources=sources),
        )
        await self._audit(room, "publish_rights", target=pid, detail=",".join(sources) or "none")
        return rooms_pb2.ParticipantActionResponse()

    @_rpc
    async def SetRole(
        self, request: rooms_pb2.SetRoleRequest, context: Any
    ) -> rooms_pb2.ParticipantActionResponse:
        room_id = validation.room_id(request.room_id)
        pid = validation.participant_id(request.participant_id)
        role = validation.role(request.role)
        room, node = await self._host_node(room_id, request.host_key, context)
        await self._relays.set_role(
            node, rooms_pb2.SetRoleRequest(room_id=room_id, participant_id=pid, role=role)
        )
        await self._audit(room, "role", target=pid, detail=role)
        return rooms_pb2.ParticipantActionResponse()

    @_rpc
    async def GetAuditLog(
        self, request: rooms_pb2.GetAuditLogRequest, context: Any
    ) -> rooms_pb2.AuditLog:
        room_id = validation.room_id(request.room_id)
        if await self._store.get(room_key(room_id)) is not None:
            await self._host_room(room_id, request.host_key, context)
        else:  # ended or expired: the log outlives it, with the host key's digest only
            digest = (await self._store.get(audit.host_key(room_id)) or b"").decode()
            if not passcodes.is_host_key(request.host_key, digest):
                raise NotHost()
        entries = await audit.read(self._store, room_id)
        return rooms_pb2.AuditLog(
            entries=[
                rooms_pb2.AuditEntry(
                    at_ms=e.at_ms, action=e.action, actor=e.actor, target=e.target, detail=e.detail
                )
                for e in entries
            ]
        )

    def _source(self, context: Any) -> str:
        """The caller's address: the peer's, or behind a trusted proxy (an ingress)
        the first address of its x-forwarded-for."""
        peer = str(context.peer() or "")
        address = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if any(ip in network for network in self._trusted_proxies):
            for key, value in context.invocation_metadata() or ():
                if key == "x-forwarded-for" and value:
                    return str(value).split(",")[0].strip()
        return address

    async def _create_record(
        self,
        name: str,
        limit: int,
        passcode: passcodes.PasscodeHash | None,
        host_key_sha256: str,
        policy: MeetingPolicy,
        organisation: str,
    ) -> tuple[RoomRecord, NodeInfo | None]:
        """Write a new meeting: its record on a lease that ends at its expiry, the
        start of its audit log (the host key's digest, for reading the log after
        the record is gone, and the "create" entry) on a lease that ends
        `audit_retention` later, and its placement on the chosen node's lease. All
        in one transaction: one etcd revision per meeting (docs/benchmarks.md), and
        never a meeting without its log. Returns the node, None if none had room."""
        now_ms = int(self._clock() * 1000)
        lease, audit_lease = await asyncio.gather(
            self._store.grant_expiring_lease(self._meeting_ttl),
            self._store.grant_expiring_lease(self._meeting_ttl + self._audit_retention),
        )
        detail = (
            f"waiting_room={'on' if policy.waiting_room else 'off'} "
            f"screen_share={policy.screen_share} passcode={'yes' if passcode else 'no'}"
        )
        node = self._placer.choose_new()
        for _ in range(3):  # a collision of 100-bit ids is next to impossible
            room = RoomRecord(
                new_room_id(),
                name,
                now_ms,
                limit,
                passcode,
                host_key_sha256,
                policy=policy,
                expires_at_ms=now_ms + self._meeting_ttl * 1000,
                lease=lease,
                audit_lease=audit_lease,
                organisation=organisation,
            )
            entry_key, entry, _ = audit.prepare(room.room_id, "create", HOST_API, detail=detail)
            items = [
                (room_key(room.room_id), room.to_json(), lease),
                (audit.host_key(room.room_id), host_key_sha256.encode(), audit_lease),
                (entry_key, entry, audit_lease),
            ]
            if node is not None:
                items.append(
                    (placement_key(room.room_id), encode_placement(node.node_id), node.lease)
                )
            try:
                created = await self._store.create_all_if_absent(items)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or node is None:
                    raise
                # "requested lease not found": the node died since the cache saw it.
                node = self._placer.choose_new(frozenset({node.node_id}))
                continue
            if created:
                self._metrics.host_actions.labels(action="create").inc()
                if node is not None:
                    self._placer.placed_new(room.room_id, node)
                return room, node
        raise StoreUnavailable("could not allocate a unique room id")

    async def _audit(
        self, room: RoomRecord, action: str, *, target: str = "", detail: str = ""
    ) -> None:
        """One audit entry by the host API (none for meetings made before audit logs)."""
        if room.audit_lease > 0:
            await audit.append(
                self._store, room.room_id, room.audit_lease, action, HOST_API, target, detail
            )
        self._metrics.host_actions.labels(action=action).inc()

    async def _audit_each(self, room: RoomRecord, action: str, targets: Sequence[str]) -> None:
        await asyncio.gather(*(self._audit(room, action, target=t) for t in targets))

    async def _host_node(
        self, room_id: RoomId, host_key: str, context: Any
    ) -> tuple[RoomRecord, NodeInfo]:
        """The meeting, for its host, and the relay hosting it; a meeting on no relay
        has no participants to act on."""
        room = await self._host_room(room_id, host_key, context)
        node = await self._current_node(room_id)
        if node is None:
            raise NoSuchParticipant()
        return room, node

    async def _host_room(self, room_id: RoomId, host_key: str, context: Any) -> RoomRecord:
        """The meeting, for its host (the host key) or its organisation (an API token
        of it, control_plane/access.py); the same refusal for a missing meeting."""
        caller = self._api_keys.caller(context)
        if caller is None and not host_key:
            raise Unauthenticated("missing")
        raw = await self._store.get(room_key(room_id))
        room = RoomRecord.from_json(raw) if raw is not None else None
        if caller is not None:
            if room is not None and room.organisation and room.organisation == caller.organisation:
                return room
            if room is None or not room.organisation:
                raise NotHost()
            raise WrongOrganisation()
        if room is None or not passcodes.is_host_key(host_key, room.host_key_sha256):
            raise NotHost()
        return room

    async def _current_node(self, room_id: RoomId) -> NodeInfo | None:
        """The live node hosting the meeting, without placing it (cache, then etcd)."""
        node = self._registry.live_placement(room_id)
        if node is not None:
            return node
        raw = await self._store.get(placement_key(room_id))
        if raw is None:
            return None
        return self._registry.node(decode_placement(raw))


def _room_message(room: RoomRecord, node_id: str) -> rooms_pb2.Room:
    policy = room.policy
    return rooms_pb2.Room(
        room_id=room.room_id,
        name=room.name,
        created_at_ms=room.created_at_ms,
        node_id=node_id,
        max_participants=room.max_participants,
        waiting_room=policy.waiting_room,
        locked=policy.locked,
        suspended=policy.suspended,
        screen_share=policy.screen_share,
        expires_at_ms=room.expires_at_ms,
        has_passcode=room.passcode is not None,
    )
