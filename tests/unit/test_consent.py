"""conclave/consent.py answers a connected pair's consent checks exactly as aioice
would, and leaves every other datagram to aioice."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioice.ice
import pytest
from aioice import stun
from aioice.ice import Connection, StunProtocol

from conclave import consent, ice
from conclave.consent import ConsentProtocol, binding_success, consent_check


class Recorder:
    """Stands in for a protocol's transport: keeps what is sent, passes the rest."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@pytest.fixture(autouse=True)
def our_candidates() -> Iterator[None]:
    """Our candidate gathering (ConsentProtocol on every socket), then aioice's own."""
    host_addresses = aioice.ice.get_host_addresses
    get_component_candidates = aioice.ice.Connection.get_component_candidates
    query_consent = aioice.ice.Connection.query_consent
    ice.use_host_addresses(["127.0.0.1"])
    ice.use_port_range(None)
    yield
    aioice.ice.get_host_addresses = host_addresses
    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    aioice.ice.Connection.query_consent = query_consent  # type: ignore[method-assign]


async def connect_two() -> tuple[Connection, Connection]:
    """Two connected aioice agents on loopback: `a` controlling, `b` controlled."""
    a = Connection(ice_controlling=True, components=1)
    b = Connection(ice_controlling=False, components=1)
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for x, y in ((a, b), (b, a)):
        for candidate in y.local_candidates:
            await x.add_remote_candidate(candidate)
        await x.add_remote_candidate(None)
        x.remote_username, x.remote_password = y.local_username, y.local_password
    await asyncio.gather(a.connect(), b.connect())
    return a, b


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Connection, Connection]]:
    """`b` is the agent under test."""
    a, b = await connect_two()
    yield a, b
    await asyncio.gather(a.close(), b.close())


def aioice_check(a: Connection, b: Connection, *, nominate: bool = False) -> bytes:
    """What `a` sends `b` to check consent, as aioice builds it."""
    request = a.build_request(a._nominated[1], nominate=nominate)
    request.add_message_integrity(b.local_password.encode("utf8"))
    return bytes(request)


def under_test(b: Connection) -> tuple[ConsentProtocol, tuple[str, int], Recorder]:
    nominated = b._nominated[1]
    protocol = nominated.protocol
    assert isinstance(protocol, ConsentProtocol)
    recorder = Recorder(protocol.transport)
    protocol.transport = recorder  # type: ignore[assignment]
    return protocol, nominated.remote_addr, recorder


async def test_a_consent_check_gets_aioices_answer_byte_for_byte(
    pair: tuple[Connection, Connection],
) -> None:
    a, b = pair
    protocol, addr, recorder = under_test(b)
    for _ in range(3):
        data = aioice_check(a, b)
        assert protocol._answer_consent(data, addr)
        StunProtocol.datagram_received(protocol, data, addr)  # aioice's own answer
        (ours, to_ours), (theirs, to_theirs) = recorder.sent
        assert ours == theirs and to_ours == to_theirs == addr
        recorder.sent.clear()
    protocol.datagram_received(aioice_check(a, b), (*addr, 0, 0))  # IPv6-style tuple
    assert len(recorder.sent) == 1


def test_binding_success_for_ipv6_is_aioices() -> None:
    transaction_id, key = os.urandom(12), b"some-password-of-22-ch"
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=transaction_id,
    )
    for addr in (("2001:db8::1", 50000), ("fe80::1%lo", 9), ("127.0.0.1", 1), ("10.1.2.3", 65535)):
        response.attributes = {"XOR-MAPPED-ADDRESS": addr}
        response.add_message_integrity(key)
        assert binding_success(transaction_id, addr, key) == bytes(response)


def _with_length(data: bytes) -> bytes:
    return data[:2] + (len(data) - 20).to_bytes(2, "big") + data[4:]


def _with_attribute(data: bytes, kind: int, value: bytes, key: bytes) -> bytes:
    """`data` with one more attribute before MESSAGE-INTEGRITY, signed again."""
    message = stun.parse_message(data)
    del message.attributes["MESSAGE-INTEGRITY"], message.attributes["FINGERPRINT"]
    extra = struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)
    unsigned = _with_length(bytes(message) + extra)
    mac = stun.message_integrity(unsigned, key)
    signed = _with_length(unsigned + struct.pack("!HH", 0x0008, 20) + mac)
    fingerprint = stun.message_fingerprint(signed)
    return _with_length(signed + struct.pack("!HHI", 0x8028, 4, fingerprint))


async def test_everything_else_is_left_to_aioice(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    protocol, addr, _ = under_test(b)
    key = b.local_password.encode("utf8")
    good = aioice_check(a, b)
    assert protocol._answer_consent(good, addr)
    # A re-signed copy with one more optional attribute is still a consent check.
    assert protocol._answer_consent(_with_attribute(good, 0xC057, b"\x00\x01\x00\x00", key), addr)
    wrong_password = a.build_request(a._nominated[1], nominate=False)
    wrong_password.add_message_integrity(b"not-the-password")
    conflict = a.build_request(a._nominated[1], nominate=False)
    del conflict.attributes["ICE-CONTROLLING"]
    conflict.attributes["ICE-CONTROLLED"] = 1
    conflict.add_message_integrity(key)
    stranger = b.remote_username
    others = {
        "nomination": aioice_check(a, b, nominate=True),
        "wrong password": bytes(wrong_password),
        "role conflict": bytes(conflict),
        "unknown required attribute": _with_attribute(good, 0x0030, b"\x00" * 4, key),
        "bad fingerprint": good[:-1] + bytes([good[-1] ^ 1]),
        "truncated": good[:-4],
        "a response": bytes([0x01, good[1]]) + good[2:],
        "not STUN": b"\x80" + good[1:],
    }
    for name, data in others.items():
        assert not protocol._answer_consent(data, addr), name
    assert not protocol._answer_consent(good, ("127.0.0.1", 9)), "from another address"
    b._nominated.clear()
    assert not protocol._answer_consent(good, addr), "no nominated pair"
    assert stranger  # the pair really was connected


async def test_garbage_and_mutations_are_never_answered(
    pair: tuple[Connection, Connection],
) -> None:
    a, b = pair
    protocol, addr, recorder = under_test(b)
    rng = random.Random(7)
    good = aioice_check(a, b)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        cut = rng.choice((len(data), rng.randrange(len(data))))
        if bytes(data[:cut]) == good:
            continue  # the flips undid each other
        assert not protocol._answer_consent(bytes(data[:cut]), addr)
        assert not protocol._answer_consent(rng.randbytes(rng.randrange(64)), addr)
    assert not recorder.sent


async def test_consent_keeps_a_connection_alive_on_our_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end, consent freshness (RFC 7675) on both agents, every 50 ms instead
    of every 5 s: each side's checks (conclave/consent.py's `query_consent`) are
    answered by the other's ConsentProtocol and recognised by its own, and the
    connection stays up (six unanswered checks in a row would close it)."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
    answered: list[bool] = []
    original = ConsentProtocol._answer_consent

    def counting(self: ConsentProtocol, data: bytes, addr: tuple[Any, ...]) -> bool:
        result = original(self, data, addr)
        answered.append(result)
        return result

    monkeypatch.setattr(ConsentProtocol, "_answer_consent", counting)
    outcomes: list[bool] = []  # of each agent's own consent checks, as each answer comes
    recognise = ConsentProtocol._consent_answered

    def recording(self: ConsentProtocol, data: bytes) -> bool:
        outcomes.append(recognise(self, data))
        return outcomes[-1]

    monkeypatch.setattr(ConsentProtocol, "_consent_answered", recording)

    async def aioice_request(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a consent check went through aioice's transactions")

    a, b = await connect_two()
    monkeypatch.setattr(ConsentProtocol, "request", aioice_request)
    try:
        answered.clear()  # the handshake's checks went to aioice
        await asyncio.sleep(1.5)
        assert answered.count(True) >= 20, answered
        assert outcomes.count(True) >= 20 and set(outcomes) == {True}, outcomes
        assert a._nominated and b._nominated and not a._closing and not b._closing
        await a.send(b"still connected")
        assert await asyncio.wait_for(b.recv(), 2) == b"still connected"
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_our_consent_check_is_aioices_byte_for_byte(
    pair: tuple[Connection, Connection],
) -> None:
    a, b = pair
    for agent in (a, b):
        nominated = agent._nominated[1]
        for _ in range(3):
            transaction_id = os.urandom(12)
            request = agent.build_request(nominated, nominate=False)
            request.transaction_id = transaction_id
            request.add_message_integrity(str(agent.remote_password).encode())
            assert consent_check(agent, nominated, transaction_id) == bytes(request)


def aioice_takes(data: bytes, transaction_id: bytes, key: bytes) -> bool:
    """Whether aioice's transaction would take `data` as the answer to its request."""
    try:
        message = stun.parse_message(data)
    except (ValueError, struct.error):
        return False
    return (
        message.message_method == stun.Method.BINDING
        and message.message_class == stun.Class.RESPONSE
        and message.transaction_id == transaction_id
        and message.check_message_integrity(key)
    )


async def test_only_a_signed_answer_to_the_last_check_is_taken(
    pair: tuple[Connection, Connection],
) -> None:
    a, b = pair
    protocol, addr, recorder = under_test(a)
    protocol.send_consent_check(a, a._nominated[1])
    ((check, to),) = recorder.sent
    assert to == addr and protocol.consent_sent == check[8:20] and not protocol.consent_answered
    key = b.local_password.encode("utf8")
    local = ("127.0.0.1", 1)
    answer = binding_success(check[8:20], local, key)
    rng = random.Random(3)
    taken = 0
    for _ in range(3000):  # garbage and mutations: taken only where aioice would take it
        flipped = bytearray(answer)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        mutated = bytes(
            flipped[: rng.choice((len(flipped), len(flipped), rng.randrange(len(flipped))))]
        )
        protocol.consent_answered = False
        protocol.datagram_received(mutated, addr)
        # (aioice also takes a few malformed ones, an overlong attribute after the
        # signature, say; no peer sends those, and refusing them is safer)
        assert not protocol.consent_answered or aioice_takes(mutated, check[8:20], key), mutated
        taken += protocol.consent_answered
    assert taken < 300  # mostly refused: the mutations mostly break the signature
    protocol.consent_answered = False
    others = {
        "signed with another password": binding_success(check[8:20], local, b"not-the-password"),
        "another transaction": binding_success(os.urandom(12), local, key),
        "a request": b"\x00\x01" + answer[2:],
    }
    for name, other in others.items():
        protocol.datagram_received(other, addr)
        assert not protocol.consent_answered, name
    protocol.datagram_received(answer, addr)
    assert protocol.consent_answered
    protocol.send_consent_check(a, a._nominated[1])  # the next check wants its own answer
    assert not protocol.consent_answered
    protocol.datagram_received(answer, addr)
    assert not protocol.consent_answered


async def test_consent_expires_when_checks_go_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 7675: the agent whose checks get no answer closes the connection after
    CONSENT_FAILURES intervals in a row (here 6 x 50 ms)."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
    a, b = await connect_two()
    try:
        silent = b._nominated[1].protocol
        assert isinstance(silent, ConsentProtocol)
        monkeypatch.setattr(silent, "_answer_consent", lambda data, addr: True)  # swallowed
        await asyncio.wait_for(a._query_consent_task, 3)  # type: ignore[arg-type]
        assert a._closing and a._query_consent_task is None
        assert not b._closing
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_other_sockets_keep_aioices_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair whose socket is not a ConsentProtocol (a TURN relay's, or aioice's
    own gathering) gets aioice's `query_consent`, transactions and all."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
    monkeypatch.setattr(
        aioice.ice.Connection, "get_component_candidates", ice._aioice_get_component_candidates
    )
    assert aioice.ice.Connection.query_consent is consent.query_consent
    requests: list[bool] = []
    request = StunProtocol.request

    async def recording(self: StunProtocol, *args: Any, **kwargs: Any) -> Any:
        response = await request(self, *args, **kwargs)
        requests.append(True)
        return response

    monkeypatch.setattr(StunProtocol, "request", recording)
    a, b = await connect_two()
    try:
        assert not isinstance(a._nominated[1].protocol, ConsentProtocol)
        requests.clear()
        await asyncio.sleep(0.5)
        assert len(requests) >= 5 and not a._closing and not b._closing
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_stun_attribute_too_short_for_its_type_is_dropped(
    pair: tuple[Connection, Connection],
) -> None:
    """aioice's parser raises struct.error (not its ValueError) on a PRIORITY of
    two bytes: the datagram is dropped, not raised into the event loop."""
    _, b = pair
    protocol, addr, recorder = under_test(b)
    head = struct.pack("!HHI12s", 0x0001, 8, 0x2112A442, os.urandom(12))
    short_priority = head + struct.pack("!HH", 0x0024, 2) + b"\x00\x01\x00\x00"
    with pytest.raises(struct.error):
        stun.parse_message(short_priority)
    protocol.datagram_received(short_priority, addr)
    assert not recorder.sent and not b._closing


async def test_consent_checks_of_many_connections_share_their_wake_ups() -> None:
    """Forty sleepers with randomised delays wake at no more than six instants of
    the grid (one timer each), none early and none later than a tick late; a
    cancelled one (its connection closed) leaves the others be."""
    loop = asyncio.get_running_loop()
    ticks, tick = consent._ticks(), 0.02
    assert consent._ticks() is ticks
    timers: list[Any] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any) -> Any:
        timers.append(when)
        return call_at(when, callback, *args)

    loop.call_at = counting  # type: ignore[method-assign,assignment]
    try:
        woke: list[tuple[float, float]] = []

        async def sleeper(delay: float) -> None:
            start = loop.time()
            await ticks.sleep(delay, tick)
            woke.append((loop.time() - start, delay))

        rng = random.Random(5)
        tasks = [asyncio.create_task(sleeper(0.1 * (0.8 + 0.4 * rng.random()))) for _ in range(40)]
        await asyncio.sleep(0)
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        del loop.call_at
    assert len(woke) == 39 and len(timers) <= 6
    assert all(delay - 0.002 <= slept <= delay + tick + 0.05 for slept, delay in woke), woke
    assert not ticks._due
