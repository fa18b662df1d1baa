"""Meetings on several relays (docs/cascading.md), on real processes: three relays
in three regions, a control plane, etcd, and aiortc clients that decode.

Each published track crosses each link once whatever the number of subscribers
behind it (the relays' link counters), everyone decodes everyone, losing the
publisher's relay moves only its participants, and a process that is not a relay
of the cell cannot open a link.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from client.sdk import RoomsClient, Session, join
from conclave import spans
from conclave.ice import use_host_addresses
from conclave.processes import EtcdServer, free_port
from conclave.store import NODES_PREFIX, EtcdStore
from protos import link_pb2_grpc
from protos.link_pb2 import LinkFrame
from relay.link_crypto import NodeIdentity, make_hello
from tests.integration.capture import LoopbackCapture
from tests.integration.continuity import MediaWatch
from tests.integration.relay_harness import RelayProcess, video_frames

pytestmark = pytest.mark.asyncio(loop_scope="module")

REGIONS = ("eu", "us", "ap")
CONCLAVE = str(Path(sys.executable).parent / "conclave")
SENT = 'conclave_link_track_starts_total{direction="sent"}'
RECEIVED = 'conclave_link_track_starts_total{direction="received"}'


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relays(etcd: EtcdServer) -> AsyncIterator[dict[str, RelayProcess]]:
    use_host_addresses(["127.0.0.1"])
    started = {
        region: RelayProcess(
            f"link-{region}",
            etcd.endpoint,
            extra_args=["--region", region, "--link-port", str(free_port())],
        )
        for region in REGIONS
    }
    await asyncio.gather(*(r.start() for r in started.values()))
    try:
        yield started
    finally:
        await asyncio.gather(*(r.stop() for r in started.values()))


def sample(relay: RelayProcess, series: str) -> float:
    """One exact series (name and labels) of a relay's /metrics page."""
    import urllib.request

    url = f"http://127.0.0.1:{relay.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def settle(relay: RelayProcess, series: str, value: float, timeout: float = 10) -> float:
    """Wait for a counter to reach `value`, then a little longer: it must stay."""
    async with asyncio.timeout(timeout):
        while sample(relay, series) < value:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    return sample(relay, series)


async def test_three_relays_each_track_crosses_each_link_once(
    relays: dict[str, RelayProcess], control_plane: str
) -> None:
    sessions: dict[str, Session] = {}
    before = {region: (sample(r, SENT), sample(r, RECEIVED)) for region, r in relays.items()}
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("three relays")
            sessions["pub"] = await join(
                rooms, room.room_id, "pub", ["audio", "video"], passcode=room.passcode,
                region="eu", join_timeout=30,
            )  # fmt: skip
            for region in REGIONS:
                for n in (1, 2):
                    name = f"sub-{region}-{n}"
                    sessions[name] = await join(
                        rooms, room.room_id, name, [], passcode=room.passcode,
                        region=region, join_timeout=30,
                    )  # fmt: skip
            by_node = {name: s.node_id for name, s in sessions.items()}
            assert by_node["pub"] == relays["eu"].node_id
            for region in REGIONS:
                assert by_node[f"sub-{region}-1"] == relays[region].node_id, by_node
            nodes = await _meeting_nodes(relays["eu"], room.room_id)
            assert nodes == {r.node_id for r in relays.values()}

            try:
                async with asyncio.timeout(60):
                    while any(
                        video_frames(s, "pub") < 20 for n, s in sessions.items() if n != "pub"
                    ):
                        await asyncio.sleep(0.2)
            except TimeoutError:
                for name, session in sessions.items():
                    print(name, session.node_id, session.roster, session.stats())
                raise
            # Everyone sees everyone, whatever relay they are on.
            for name, session in sessions.items():
                assert set(session.roster) >= {s.participant_id for s in sessions.values()} - {
                    session.participant_id
                }, name
            # Active speakers and mute state span the relays.
            pub_id = sessions["pub"].participant_id
            async with asyncio.timeout(15):
                while any(
                    s.active_speakers[:1] != ["pub"] for n, s in sessions.items() if n != "pub"
                ):
                    await asyncio.sleep(0.1)
            await sessions["pub"].set_muted("audio", True)
            async with asyncio.timeout(10):
                while not all(
                    s.is_muted(pub_id, "audio") for n, s in sessions.items() if n != "pub"
                ):
                    await asyncio.sleep(0.1)
            await sessions["pub"].set_muted("audio", False)
            # Two tracks (audio, video) leave the publisher's relay once per link.
            eu = relays["eu"]
            sent = await settle(eu, SENT, before["eu"][0] + 4) - before["eu"][0]
            assert sent == 4
            for region in ("us", "ap"):
                received = await settle(relays[region], RECEIVED, before[region][1] + 2)
                assert received - before[region][1] == 2
            # Forwarded over links: about twice what the publisher sent (two links),
            # not once per remote subscriber (four).
            published = eu.metric("conclave_packets_received_total")
            over_links = sample(eu, 'conclave_link_packets_total{direction="sent"}')
            print(f"publisher packets {published:.0f}, link datagrams sent {over_links:.0f}")
            assert over_links < 2.3 * published + 200
            if (os.environ.get("CONCLAVE_FORWARDER") or "native") == "native":
                # The two subscribers on the publisher's relay got the linked tracks
                # from the engine, not from Python (docs/native.md): the links take
                # each packet after it.
                in_c = sample(eu, "conclave_native_forwarded_total")
                print(f"forwarded by the engine on the publisher's relay {in_c:.0f}")
                assert in_c > 1.5 * published
                # On the other two, what came over the link leaves from the
                # engine too (Engine.forward), for their two subscribers each.
                for region in ("us", "ap"):
                    came = sample(
                        relays[region], 'conclave_link_packets_total{direction="received"}'
                    )
                    in_c = sample(relays[region], "conclave_native_forwarded_total")
                    print(f"{region}: {came:.0f} over the link, {in_c:.0f} forwarded by the engine")
                    assert in_c > 1.5 * came
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()), return_exceptions=True)


async def test_losing_the_publishers_relay_moves_only_its_participants(
    relays: dict[str, RelayProcess], control_plane: str, etcd: EtcdServer
) -> None:
    sessions: dict[str, Session] = {}
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("relay lost")
            sessions["pub"] = await join(
                rooms, room.room_id, "pub", ["video"], passcode=room.passcode,
                region="us", join_timeout=30,
            )  # fmt: skip
            for region in ("eu", "ap"):
                sessions[f"sub-{region}"] = await join(
                    rooms, room.room_id, f"sub-{region}", [], passcode=room.passcode,
                    region=region, join_timeout=30,
                )  # fmt: skip
            doomed = relays["us"]
            assert sessions["pub"].node_id == doomed.node_id
            async with MediaWatch(sessions, publishers=["pub"]) as watch:
                await watch.flowing(time.monotonic(), 10, timeout=60)
                doomed.kill()
                killed_at = time.monotonic()
                async with asyncio.timeout(30):
                    while sessions["pub"].node_id == doomed.node_id or sessions["pub"].reconnecting:
                        await asyncio.sleep(0.05)
                await watch.flowing(time.monotonic(), 10, timeout=30)
            resumed = watch.resumed_after(killed_at)
            print("media again after (s):", {v: round(t or -1, 2) for (v, _), t in resumed.items()})
            late = {pair: t for pair, t in resumed.items() if t is None or t > 5.0}
            assert not late, f"no media within 5 s of the kill: {late}"
            assert sessions["pub"].node_id in {relays["eu"].node_id, relays["ap"].node_id}
            # The subscribers stayed where they were: only the lost relay's people moved.
            for region in ("eu", "ap"):
                session = sessions[f"sub-{region}"]
                assert session.node_id == relays[region].node_id and session.reconnects == 0
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()), return_exceptions=True)
        await relays["us"].start()  # for the tests after this one


async def test_links_show_nothing_in_clear_on_the_wire(
    relays: dict[str, RelayProcess], control_plane: str
) -> None:
    """Captured on the wire between two relays of a meeting: link datagrams that
    never show a media packet's header (its SSRC), and a control stream that never
    shows a name or the meeting id, while the publisher's own SRTP leg, captured the
    same way, does show its SSRC (so the capture sees media)."""
    eu, ap = relays["eu"], relays["ap"]
    link_ports = {int(r.extra_args[r.extra_args.index("--link-port") + 1]) for r in (eu, ap)}
    rpc_ports = {eu.rpc_port, ap.rpc_port}
    names = ("Wire-Pub-7f3a", "Wire-Sub-91c2")
    sessions: dict[str, Session] = {}
    try:
        with LoopbackCapture() as capture:
            async with RoomsClient(control_plane) as rooms:
                room = await rooms.create_room("wire")
                for name, region, publish in ((names[0], "eu", ["audio", "video"]),
                                              (names[1], "ap", [])):  # fmt: skip
                    sessions[name] = await join(
                        rooms, room.room_id, name, publish, passcode=room.passcode,
                        region=region, join_timeout=30,
                    )  # fmt: skip
                async with asyncio.timeout(30):
                    while video_frames(sessions[names[1]], names[0]) < 20:
                        await asyncio.sleep(0.2)
                pc = sessions[names[0]]._pc
                assert pc is not None
                ssrcs = [sender._ssrc for sender in pc.getSenders() if sender.track is not None]
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()), return_exceptions=True)
    assert sessions[names[0]].node_id == eu.node_id and sessions[names[1]].node_id == ap.node_id
    marks = [struct.pack("!I", ssrc) for ssrc in ssrcs]
    secrets_in_clear = [n.encode() for n in names] + [room.room_id.encode()]
    media = [p for proto, sp, dp, p in capture.packets if proto == "udp"]
    # The control: the publisher's SRTP (headers in clear) carries its SSRCs.
    assert any(len(p) > 12 and p[8:12] in marks for p in media)
    over_links = [p for proto, sp, dp, p in capture.packets
                  if proto == "udp" and (sp in link_ports or dp in link_ports)]  # fmt: skip
    assert len(over_links) > 100, "media crossed the link"
    assert not [p for p in over_links if any(m in p for m in marks + secrets_in_clear)]
    control = b"".join(p for proto, sp, dp, p in capture.packets
                       if proto == "tcp" and (sp in rpc_ports or dp in rpc_ports))  # fmt: skip
    assert len(control) > 1000, "the link's control stream was captured"
    for secret in [*secrets_in_clear, b"participant_id", b'"member"']:
        assert secret not in control, secret


async def test_draining_one_relay_moves_only_its_participants(
    relays: dict[str, RelayProcess], control_plane: str, etcd: EtcdServer
) -> None:
    """`conclave relay drain` on the publisher's relay of a two-relay meeting: the
    publisher moves to the meeting's other relay, where its subscriber stays, and the
    video pauses only for the move."""
    sessions: dict[str, Session] = {}
    doomed = relays["eu"]
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("drain across relays")
            for name, region, publish in (("pub", "eu", ["video"]), ("sub", "ap", [])):
                sessions[name] = await join(
                    rooms, room.room_id, name, publish, passcode=room.passcode,
                    region=region, join_timeout=30,
                )  # fmt: skip
            assert sessions["pub"].node_id == doomed.node_id
            async with MediaWatch(sessions, publishers=["pub"]) as watch:
                await watch.flowing(time.monotonic(), 10, timeout=60)
                started = time.monotonic()
                drain = await asyncio.create_subprocess_exec(
                    CONCLAVE, "relay", "drain", doomed.node_id, "--etcd", etcd.endpoint,
                    "--deadline", "30", "--wait", stdout=subprocess.PIPE,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(drain.communicate(), 60)
                assert drain.returncode == 0, out
                async with asyncio.timeout(30):
                    while sessions["pub"].node_id == doomed.node_id or sessions["pub"].reconnecting:
                        await asyncio.sleep(0.05)
                await watch.flowing(time.monotonic(), 10, timeout=30)
                gaps = watch.longest_gaps(started, time.monotonic())
            print(
                "longest gaps while draining (s):", {v: round(g, 2) for (v, _), g in gaps.items()}
            )
            assert all(gap < 2.5 for gap in gaps.values()), gaps
            nodes = await _meeting_nodes(relays["ap"], room.room_id)
            assert doomed.node_id not in nodes
            # The publisher went to a relay of the meeting (its home, which CreateRoom
            # chose, or the subscriber's); the subscriber did not move.
            assert sessions["pub"].node_id in nodes
            assert sessions["sub"].node_id == relays["ap"].node_id
            assert sessions["sub"].reconnects == 0
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()), return_exceptions=True)
        await doomed.stop()
        await doomed.start()  # serving again, for the tests after this one


async def test_a_process_that_is_not_a_relay_of_the_cell_cannot_open_a_link(
    relays: dict[str, RelayProcess], etcd: EtcdServer
) -> None:
    target = relays["eu"]
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    try:
        record = json.loads(await store.get(NODES_PREFIX + target.node_id) or b"{}")
        peer = relays["ap"]
        peer_record = json.loads(await store.get(NODES_PREFIX + peer.node_id) or b"{}")
    finally:
        await store.close()
    assert record["link_key"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.rpc_port}") as channel:
        stub = link_pb2_grpc.RelayLinkStub(channel)  # type: ignore[no-untyped-call]

        async def attempt(node_id: str, lease: int, identity: NodeIdentity) -> grpc.StatusCode:
            call = stub.Link()
            payload, signature = make_hello(
                identity, node_id, lease, target.node_id, X25519PrivateKey.generate()
            )
            await call.write(LinkFrame(payload=payload, signature=signature))
            try:
                await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            call.cancel()
            return grpc.StatusCode.OK

        refused_before = sample(target, 'conclave_link_opens_total{result="unauthenticated"}')
        # Not registered at all.
        assert await attempt("intruder", 1, NodeIdentity()) == grpc.StatusCode.UNAUTHENTICATED
        # Claiming a real relay's name and lease, without its key.
        code = await attempt(peer.node_id, int(peer_record["lease"]), NodeIdentity())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # Not a hello at all.
        call = stub.Link()
        await call.write(LinkFrame(payload=b"\x00garbage" * 50, signature=b"x" * 64))
        with pytest.raises(grpc.aio.AioRpcError) as refused_call:
            await asyncio.wait_for(call.read(), 10)
        assert refused_call.value.code() == grpc.StatusCode.UNAUTHENTICATED
        refused = sample(target, 'conclave_link_opens_total{result="unauthenticated"}')
        assert refused - refused_before == 3


async def test_garbage_on_the_link_port_is_counted_and_harms_nothing(
    relays: dict[str, RelayProcess], control_plane: str
) -> None:
    """Datagrams that are not a link's (random bytes, a forged link id, replays of
    nothing) are dropped and counted; a meeting across relays keeps working."""
    target = relays["ap"]
    link_port = int(target.extra_args[target.extra_args.index("--link-port") + 1])
    before = target.metric("conclave_link_dropped_total")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", link_port)
    )
    try:
        for size in (0, 1, 11, 12, 28, 29, 200, 1200):
            for _ in range(20):
                transport.sendto(os.urandom(size))
        await asyncio.sleep(0.5)
    finally:
        transport.close()
    assert target.metric("conclave_link_dropped_total") - before >= 140
    sessions: dict[str, Session] = {}
    try:
        async with RoomsClient(control_plane) as rooms:
            room = await rooms.create_room("after garbage")
            for name, region in (("pub", "ap"), ("sub", "eu")):
                sessions[name] = await join(
                    rooms, room.room_id, name, ["video"] if name == "pub" else [],
                    passcode=room.passcode, region=region, join_timeout=30,
                )  # fmt: skip
            async with asyncio.timeout(30):
                while video_frames(sessions["sub"], "pub") < 10:
                    await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(*(s.leave() for s in sessions.values()), return_exceptions=True)


async def _meeting_nodes(relay: RelayProcess, room_id: str) -> set[str]:
    store = EtcdStore([relay.etcd_endpoint])
    await store.connect()
    try:
        return await spans.meeting_nodes(store, room_id)
    finally:
        await store.close()
