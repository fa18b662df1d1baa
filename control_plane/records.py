"""The JSON records the control plane reads and writes in etcd (docs/architecture.md).

Parsing is strict: a record written by a buggy or foreign writer raises
`ValueError` here instead of surfacing as a `KeyError` deep in a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from conclave import placements
from conclave.meeting import MeetingPolicy
from conclave.placements import encode_placement as encode_placement  # shared with relays
from conclave.placements import placement_key as placement_key
from conclave.store import NODES_PREFIX, ROOMS_PREFIX
from control_plane.ids import NodeId, RoomId
from control_plane.passcodes import PasscodeHash


def node_key(node_id: NodeId) -> str:
    return NODES_PREFIX + node_id


def room_key(room_id: RoomId) -> str:
    return ROOMS_PREFIX + room_id


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a relay publishes about itself under its lease.

    `draining` is optional (absent means False): a relay that is shutting down can
    set it to keep its meetings while refusing new ones. `region` is optional too
    (`--region`): where the node is, for placing meetings near their joiners.
    """

    node_id: NodeId
    signal_url: str
    rpc_address: str
    capacity: int
    load: float
    lease: int
    draining: bool = False
    region: str = ""  # absent: a node that names no region

    @classmethod
    def from_json(cls, raw: bytes) -> NodeInfo:
        data = _object(raw)
        lease = data.get("lease")
        if isinstance(lease, str) and lease.isdigit():
            lease = int(lease)  # tolerate a lease id written as a decimal string
        node = cls(
            node_id=NodeId(_field(data, "node_id", str)),
            signal_url=_field(data, "signal_url", str),
            rpc_address=_field(data, "rpc_address", str),
            capacity=_field(data, "capacity", int),
            load=float(_field(data, "load", (int, float))),
            lease=_checked(lease, "lease", int),
            draining=data.get("draining", False) is True,
            region=_checked(data.get("region", ""), "region", str),
        )
        if not node.node_id or node.lease <= 0:
            raise ValueError("node info needs a node_id and a positive lease id")
        return node

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "node_id": self.node_id,
                "signal_url": self.signal_url,
                "rpc_address": self.rpc_address,
                "capacity": self.capacity,
                "load": self.load,
                "lease": self.lease,
                "draining": self.draining,
                "region": self.region,
            }
        ).encode()


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """A meeting as stored under /conclave/rooms/{room_id}.

    `lease` is the expiring etcd lease the record is put under (etcd deletes the
    record when it runs out, at `expires_at_ms`); every rewrite of the record (the
    policy's compare-and-swap writes) reuses it. `audit_lease` outlives it by the
    audit retention: the audit log and the host-key digest kept for it are on that
    one. Zero for either means none (records written before meetings expired).
    """

    room_id: RoomId
    name: str
    created_at_ms: int
    max_participants: int
    # None: joiners need no passcode while the waiting room is on, and cannot join
    # without the host key while it is off (control_plane/service.py, JoinRoom).
    passcode: PasscodeHash | None = None
    host_key_sha256: str = ""  # hex; empty: nobody is this meeting's host
    policy: MeetingPolicy = field(default_factory=MeetingPolicy)
    expires_at_ms: int = 0
    lease: int = 0
    audit_lease: int = 0
    # The organisation of the API key that created it (control_plane/access.py);
    # its keys may act on the meeting like its host. "": none (host key only).
    organisation: str = ""

    @classmethod
    def from_json(cls, raw: bytes) -> RoomRecord:
        data = _object(raw)
        passcode = data.get("passcode")
        return cls(
            room_id=RoomId(_field(data, "room_id", str)),
            name=_field(data, "name", str),
            created_at_ms=_field(data, "created_at_ms", int),
            max_participants=_field(data, "max_participants", int),
            passcode=PasscodeHash.from_json(passcode) if passcode is not None else None,
            host_key_sha256=str(data.get("host_key_sha256", "")),
            policy=MeetingPolicy.from_json(data.get("policy")),
            expires_at_ms=_checked(data.get("expires_at_ms", 0), "expires_at_ms", int),
            lease=_checked(data.get("lease", 0), "lease", int),
            audit_lease=_checked(data.get("audit_lease", 0), "audit_lease", int),
            organisation=_checked(data.get("org", ""), "org", str),
        )

    def to_json(self) -> bytes:
        data: dict[str, object] = {
            "room_id": self.room_id,
            "name": self.name,
            "created_at_ms": self.created_at_ms,
            "max_participants": self.max_participants,
        }
        if self.passcode is not None:
            data["passcode"] = self.passcode.to_json()
        if self.host_key_sha256:
            data["host_key_sha256"] = self.host_key_sha256
        data["policy"] = self.policy.to_json()
        if self.expires_at_ms:
            data["expires_at_ms"] = self.expires_at_ms
        if self.lease:
            data["lease"] = self.lease
        if self.audit_lease:
            data["audit_lease"] = self.audit_lease
        if self.organisation:
            data["org"] = self.organisation
        return json.dumps(data).encode()


def decode_placement(raw: bytes) -> NodeId:
    """The node a placement names (conclave/placements.py); strict, as above."""
    node_id = placements.placed_node(raw)
    if node_id is None:
        raise ValueError("placement names no node")
    return NodeId(node_id)


def _object(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("record is not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    return _checked(data.get(name), name, kind)


def _checked(value: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    # bool is an int subclass in Python; a boolean is never a valid number here.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"record field {name!r} is missing or has the wrong type")
    return value
