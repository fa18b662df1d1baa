"""Grant checks and bad input at a real relay process (real etcd, real WebSocket)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.sdk import Session
from conclave.ice import use_host_addresses
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames, wait_for_frames


async def exchange(
    relay: RelayProcess, *messages: Any, read: int = 1
) -> tuple[list[dict[str, Any]], int | None]:
    """Send raw frames, read `read` JSON replies, report the close code if closed."""
    replies: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(relay.signal_url) as ws:
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            elif isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_str(json.dumps(message))
        async with asyncio.timeout(10):
            while len(replies) < read:
                frame = await ws.receive()
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                replies.append(json.loads(frame.data))
            if len(replies) >= read:
                await ws.close()
            else:
                await ws.receive()
        return replies, ws.close_code


async def join(relay: RelayProcess, token: str, publish: list[str]) -> dict[str, Any]:
    replies, _ = await exchange(relay, {"type": "join", "grant": token, "publish": publish})
    return replies[0]


async def test_valid_grant_joins_once_then_replay_is_refused(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    token = minter.token(room, "p_alice", relay.node_id)
    first = await join(relay, token, [])
    assert first["type"] == "joined" and first["participant_id"] == "p_alice"
    replies, close_code = await exchange(relay, {"type": "join", "grant": token, "publish": []})
    assert replies[0]["code"] == "grant_replayed"
    assert close_code == 4001


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("other_key", "grant_unknown_key"),
        ("tampered", "grant_bad_signature"),
        ("expired", "grant_expired"),
        ("wrong_node", "grant_wrong_node"),
        ("garbage", "grant_malformed"),
    ],
)
async def test_bad_grants_are_refused_with_a_clear_code(
    relay: RelayProcess, minter: GrantMinter, case: str, code: str
) -> None:
    room = await minter.new_room()
    makers: dict[str, Callable[[], str]] = {
        "other_key": lambda: minter.token(
            room, "p_x", relay.node_id, key=Ed25519PrivateKey.generate()
        ),
        "tampered": lambda: _tamper(minter.token(room, "p_x", relay.node_id)),
        "expired": lambda: minter.token(room, "p_x", relay.node_id, lifetime_s=-1),
        "wrong_node": lambda: minter.token(room, "p_x", "some-other-node"),
        "garbage": lambda: "not-a-grant!",
    }
    token = makers[case]()
    replies, close_code = await exchange(relay, {"type": "join", "grant": token, "publish": []})
    assert replies[0]["type"] == "error"
    assert replies[0]["code"] == code, replies[0]
    assert replies[0]["message"]
    assert close_code == 4001


def _tamper(token: str) -> str:
    """Change the display name inside a signed grant: the signature must break."""
    import base64

    from protos.grant_pb2 import JoinGrant, SignedGrant

    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    envelope = SignedGrant.FromString(raw)
    grant = JoinGrant.FromString(envelope.grant)
    grant.display_name = "mallory"
    envelope.grant = grant.SerializeToString()
    return base64.urlsafe_b64encode(envelope.SerializeToString()).decode().rstrip("=")


async def test_publish_without_permission_is_refused(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    token = minter.token(room, "p_viewer", relay.node_id, can_publish=False)
    replies, close_code = await exchange(
        relay, {"type": "join", "grant": token, "publish": ["video"]}
    )
    assert replies[0]["code"] == "not_allowed"
    assert close_code == 4003


async def test_malformed_messages_get_errors_and_the_session_survives(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    token = minter.token(room, "p_fuzz", relay.node_id)
    bad = [
        "{not json",
        "[1, 2, 3]",
        {"type": 42},
        {"type": "no-such-type"},
        {"type": "answer"},
        {"type": "answer", "sdp": "v=0 garbage"},
        {"type": "ice", "candidate": "nope"},
        {"type": "ice", "candidate": {"candidate": "candidate:garbage"}},
        {"type": "join", "grant": token},
        b"\x00\x01binary",
    ]
    replies, close_code = await exchange(
        relay,
        {"type": "join", "grant": token, "publish": []},
        *bad,
        read=1 + len(bad),
    )
    kinds = [r["type"] for r in replies]
    assert kinds[0] == "joined"
    errors = [r for r in replies if r["type"] == "error"]
    assert [e["code"] for e in errors] == [
        "malformed",
        "malformed",
        "malformed",
        "malformed",
        "malformed",
        "bad_sdp",
        "malformed",
        "bad_candidate",
        "already_joined",
        "malformed",
    ]
    assert close_code is None or close_code == 1000  # closed by us, not by the relay


async def test_messages_before_join_are_refused(relay: RelayProcess) -> None:
    replies, close_code = await exchange(relay, {"type": "answer", "sdp": "x"})
    assert replies[0]["code"] == "not_joined"
    join = {"type": "join", "grant": "x", "publish": ["video"], "video_codec": "av1"}
    replies, close_code = await exchange(relay, join)
    assert replies[0]["code"] == "malformed" and "video_codec" in replies[0]["message"]
    replies, close_code = await exchange(relay, "{broken")
    assert replies[0]["code"] == "malformed"
    assert close_code == 4001


async def test_a_misbehaving_participant_does_not_disturb_the_others(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    use_host_addresses(["127.0.0.1"])
    room = await minter.new_room()
    ann = Session(minter.join_response(relay, room, "p_ann", "ann"), "ann", ["video"])
    ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [])
    async with ann, ben:
        await wait_for_frames(ben, "ann", 10, timeout=20)
        token = minter.token(room, "p_mallory", relay.node_id)
        garbage: list[Any] = [
            {"type": "join", "grant": token, "publish": ["audio"]},
            {"type": "answer", "sdp": "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\n"},
            {"type": "ice", "candidate": {"candidate": "candidate:1 1 udp x y z"}},
            "\x00" * 1000,
            {"type": "join"},
            b"\xff" * 64,
        ]
        replies, _ = await exchange(relay, *garbage, read=6)
        assert [r["type"] for r in replies].count("error") >= 4
        before = video_frames(ben, "ann")
        await wait_for_frames(ben, "ann", before + 20, timeout=20)
        assert not ann.errors and not ben.errors
        assert relay.metric("conclave_relay_decoders_created_total") == 0


async def test_a_full_node_refuses_joins(etcd_endpoint: str, minter: GrantMinter) -> None:
    relay = RelayProcess(
        f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint, extra_args=["--capacity", "1"]
    )
    await relay.start()
    try:
        room = await minter.new_room()
        async with aiohttp.ClientSession() as http, http.ws_connect(relay.signal_url) as first:
            token = minter.token(room, "p_first", relay.node_id)
            await first.send_json({"type": "join", "grant": token, "publish": []})
            assert (await first.receive_json(timeout=10))["type"] == "joined"
            second = minter.token(room, "p_second", relay.node_id)
            replies, close_code = await exchange(
                relay, {"type": "join", "grant": second, "publish": []}
            )
            assert replies[0]["code"] == "node_full"
            assert close_code == 4004
    finally:
        await relay.stop()


async def test_a_grant_for_an_earlier_run_of_the_node_is_refused(
    etcd_endpoint: str, minter: GrantMinter
) -> None:
    """A relay restarted under the same node id forgets the nonces it saw; the
    grant names the node's lease, so neither old grants nor their replays pass."""
    node_id = f"relay-{uuid.uuid4().hex[:8]}"
    room = await minter.new_room()
    first_run = RelayProcess(node_id, etcd_endpoint)
    await first_run.start()
    old_token = minter.token(room, "p_early", node_id)
    assert (await join(first_run, old_token, []))["type"] == "joined"
    await first_run.stop()
    second_run = RelayProcess(node_id, etcd_endpoint)
    await second_run.start()
    try:
        replies, close_code = await exchange(
            second_run, {"type": "join", "grant": old_token, "publish": []}
        )
        assert replies[0]["code"] == "grant_stale_node"
        assert close_code == 4001
        fresh = minter.token(room, "p_late", node_id)
        assert (await join(second_run, fresh, []))["type"] == "joined"
    finally:
        await second_run.stop()


async def test_e2ee_messages_are_carried_unread_and_checked_for_shape(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()

    async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                message = json.loads((await ws.receive()).data)
                if message["type"] == kind:
                    return dict(message)

    async with aiohttp.ClientSession() as http:
        ann = await http.ws_connect(relay.signal_url)
        ben = await http.ws_connect(relay.signal_url)
        for ws, pid in ((ann, "p_ann"), (ben, "p_ben")):
            token = minter.token(room, pid, relay.node_id)
            await ws.send_json({"type": "join", "grant": token, "publish": []})
            assert (await next_of(ws, "joined"))["participant_id"] == pid
        # ben joined second but posts first: the list follows the bindings, so its
        # first member (the key leader) does not change when ann's arrives.
        await ben.send_json({"type": "e2ee_binding", "binding": "REVG"})
        for ws in (ann, ben):
            members = (await next_of(ws, "e2ee_members"))["members"]
            assert members == [{"participant_id": "p_ben", "binding": "REVG"}]
        await ann.send_json({"type": "e2ee_binding", "binding": "QUJD"})
        members = (await next_of(ann, "e2ee_members"))["members"]
        assert [m["participant_id"] for m in members] == ["p_ben", "p_ann"]
        await ann.send_json({"type": "e2ee_key", "to": "p_ben", "message": "S0VZ"})
        assert await next_of(ben, "e2ee_key") == {
            "type": "e2ee_key", "from": "p_ann", "message": "S0VZ"
        }  # fmt: skip
        refused = [
            ({"type": "e2ee_key", "to": "p_nobody", "message": "S0VZ"}, "unknown_participant"),
            ({"type": "e2ee_key", "to": "p_ann", "message": "S0VZ"}, "unknown_participant"),
            ({"type": "e2ee_key", "to": "p_ben", "message": "not base64!"}, "malformed"),
            ({"type": "e2ee_key", "to": "p_ben"}, "malformed"),
            ({"type": "e2ee_binding", "binding": "A" * 4096}, "malformed"),
            ({"type": "e2ee_binding", "binding": ""}, "malformed"),
            ({"type": "e2ee_binding", "binding": 7}, "malformed"),
        ]
        for message, code in refused:
            await ann.send_json(message)
            assert (await next_of(ann, "error"))["code"] == code, message
        await ben.close()
        members = (await next_of(ann, "e2ee_members"))["members"]
        assert members == [{"participant_id": "p_ann", "binding": "QUJD"}]
        await ann.close()
    assert relay.metric("conclave_e2ee_key_messages_total") == 1
