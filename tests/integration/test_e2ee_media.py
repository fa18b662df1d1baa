"""End-to-end encryption on the media path (docs/e2ee.md), through a real relay
process with aiortc clients: keys agreed over signalling, every frame SFrame-
encrypted before packetization, and the relay forwarding only ciphertext."""

from __future__ import annotations

import asyncio
import fractions
import itertools
from collections.abc import Callable
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamTrack

from client.e2ee.context import UnprotectResult
from client.sdk import Session
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames

MARKER = b"CONCLAVE-PLAINTEXT-MARKER"
OPUS_TIME_BASE = fractions.Fraction(1, 48000)


async def until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(what()) from None


async def test_three_clients_agree_on_keys_and_decode_each_other(
    relay: RelayProcess, minter: GrantMinter
) -> None:
    room = await minter.new_room()
    names = ("ann", "ben", "cyd")
    sessions = [
        Session(minter.join_response(relay, room, f"p_{n}", n), n, ["audio", "video"])
        for n in names
    ]
    for session in sessions:
        await session.start()
    try:

        def agreed() -> bool:
            codes = {s.security_code for s in sessions}
            return (
                None not in codes
                and len(codes) == 1
                and all(len(s.e2ee_members) == 3 for s in sessions)
            )

        def decoded() -> bool:
            return all(
                video_frames(s, other) >= 30
                for s in sessions
                for other in names
                if other != s.display_name
            )

        def state() -> str:
            return str(
                [(s.display_name, s.security_code, s.e2ee_members, s.stats()) for s in sessions]
            )

        await until(agreed, 20, state)
        await until(decoded, 30, state)
        assert agreed(), state()  # still one epoch for everyone
        code = sessions[0].security_code
        assert code is not None and len(code.replace(" ", "")) == 25
        for session in sessions:
            assert all(f["decrypt_failures"] == 0 for f in session.stats().values()), state()
            assert session.e2ee_refused() == {}
    finally:
        for session in sessions:
            await session.leave()
    assert relay.metric("conclave_e2ee_key_messages_total") >= 2
    assert relay.metric("conclave_relay_decoders_created_total") == 0


class MarkedAudio(MediaStreamTrack):
    """Pre-encoded 'Opus' frames that each carry MARKER, paced like a microphone
    (the bytes are not valid Opus; only where they can be seen matters here)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._count = itertools.count()

    async def recv(self) -> Any:
        n = next(self._count)
        await asyncio.sleep(0.02)
        packet = av.Packet(bytes([0xF8]) + MARKER + n.to_bytes(4, "big"))
        packet.pts = n * 960
        packet.time_base = OPUS_TIME_BASE
        return packet


def tap_forwarded(session: Session) -> list[bytes]:
    """Every RTP packet the relay sends `session`, as it left the relay's
    forwarding path (after SRTP, before depacketization and decryption)."""
    seen: list[bytes] = []
    pc = session._pc
    assert pc is not None
    transport = pc.getTransceivers()[0].receiver.transport
    handle = transport._handle_rtp_data

    async def tapped(data: bytes, arrival_time_ms: int) -> None:
        seen.append(data)
        await handle(data, arrival_time_ms)

    transport._handle_rtp_data = tapped  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("e2ee", [True, False], ids=["e2ee", "no-e2ee-control"])
async def test_relay_forwards_no_plaintext(
    relay: RelayProcess, minter: GrantMinter, e2ee: bool
) -> None:
    room = await minter.new_room()
    ann = Session(
        minter.join_response(relay, room, "p_ann", "ann"),
        "ann",
        ["audio"],
        tracks={"audio": MarkedAudio()},
        e2ee=e2ee,
    )
    ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [], e2ee=e2ee)
    async with ann, ben:
        await until(lambda: bool(ben._pc and ben._pc.getTransceivers()), 10, lambda: "no offer")
        forwarded = tap_forwarded(ben)
        opened: list[bytes] = []
        if e2ee:
            keys = ben._keys
            assert keys is not None
            unprotect = keys.unprotect

            def recording(ciphertext: bytes, metadata: bytes) -> UnprotectResult:
                result = unprotect(ciphertext, metadata)
                if result.plaintext is not None:
                    opened.append(result.plaintext)
                return result

            keys.unprotect = recording  # type: ignore[method-assign]
        await until(lambda: len(forwarded) >= 100, 20, lambda: f"{len(forwarded)} forwarded")
        if e2ee:
            await until(lambda: len(opened) >= 50, 10, lambda: f"{len(opened)} decrypted")
    carrying = [p for p in forwarded if MARKER in p]
    if not e2ee:
        assert len(carrying) >= 100  # the tap does see plaintext when there is any
        return
    assert carrying == [], f"{len(carrying)} of {len(forwarded)} forwarded packets in clear"
    assert all(MARKER in p for p in opened)  # and the subscriber recovers every frame
