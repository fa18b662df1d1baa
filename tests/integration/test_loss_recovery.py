"""Video survives packet loss: the relay NACKs its publishers and answers its
subscribers' NACKs with RTX from its cache."""

from __future__ import annotations

import asyncio
import uuid

from client.sdk import Session
from conclave.ice import use_host_addresses
from conclave.store import EtcdStore
from tests.integration.relay_harness import GrantMinter, RelayProcess, video_frames


async def test_video_keeps_decoding_with_five_percent_ingress_loss(
    etcd_endpoint: str, store: EtcdStore
) -> None:
    use_host_addresses(["127.0.0.1"])
    minter = GrantMinter(store)
    await minter.publish()
    relay = RelayProcess(
        f"relay-{uuid.uuid4().hex[:8]}", etcd_endpoint, extra_args=["--test-drop-video", "5"]
    )
    await relay.start()
    try:
        room = await minter.new_room()
        ann = Session(minter.join_response(relay, room, "p_ann", "ann"), "ann", ["video"])
        ben = Session(minter.join_response(relay, room, "p_ben", "ben"), "ben", [])
        async with ann, ben:
            async with asyncio.timeout(20):
                while video_frames(ben, "ann") == 0:
                    await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            last_count, last_change, longest_freeze = video_frames(ben, "ann"), loop.time(), 0.0
            deadline = loop.time() + 8
            while loop.time() < deadline:
                await asyncio.sleep(0.05)
                count = video_frames(ben, "ann")
                if count > last_count:
                    longest_freeze = max(longest_freeze, loop.time() - last_change)
                    last_count, last_change = count, loop.time()
            longest_freeze = max(longest_freeze, loop.time() - last_change)
            assert last_count >= 100, "video stopped decoding under loss"
            # What the relay did about the loss, for a freeze that CI catches once.
            counters = {
                name: relay.metric(f"conclave_{name}_total")
                for name in ("packets_dropped", "nacks_sent", "retransmissions",
                             "keyframe_requests")
            }  # fmt: skip
            assert longest_freeze < 1.0, f"video froze for {longest_freeze:.2f} s; {counters}"
        assert relay.metric("conclave_packets_dropped_total") > 0  # the injector did drop
        assert relay.metric("conclave_nacks_sent_total") > 0  # relay asked the publisher
        assert relay.metric("conclave_retransmissions_total") > 0  # and served subscribers
    finally:
        await relay.stop()
