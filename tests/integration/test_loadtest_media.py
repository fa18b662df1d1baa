"""`conclave loadtest media` against `conclave dev`: a tiny, bounded run whose
summary must hold together (what the relays forwarded is what the subscribers
counted, loss and jitter computed, each local relay's CPU found by its port)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from client.loadtest.receive import StreamStats, payload_clocks
from conclave.processes import free_port, free_port_run
from tests.dev_cluster import start_dev

CONCLAVE = [sys.executable, "-m", "conclave.cli"]


def test_stream_stats_count_gaps_and_wrap() -> None:
    """Loss is expected minus received across a sequence wrap; jitter stays 0 for
    packets that arrive exactly on their timestamps."""
    stats = StreamStats("audio", 48_000, 65_534, 0, 0.0)
    for seq, ts, at in [(65_535, 960, 0.02), (1, 2880, 0.06), (2, 3840, 0.08)]:  # 0 is lost
        stats.add(seq, ts, at)
    assert stats.expected == 5 and stats.received == 4
    assert stats.jitter < 1e-6
    stats.add(3, 10 * 960, 0.5)  # 0.32 s late against its timestamp
    assert stats.jitter > 0


def test_payload_clocks_leave_out_rtx() -> None:
    sdp = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\n"
        "a=rtpmap:97 rtx/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    )
    assert payload_clocks(sdp) == {96: ("video", 90_000), 111: ("audio", 48_000)}


@pytest.mark.integration
async def test_loadtest_media_against_conclave_dev() -> None:
    grpc_port, http_port = free_port(), free_port_run(1)
    dev = await start_dev(
        "--relays", "1", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        stderr=None,
    )  # fmt: skip
    try:
        load = await asyncio.create_subprocess_exec(
            *CONCLAVE, "loadtest", "media", "--rooms", "2", "--publishers", "1",
            "--subscribers", "3", "--duration", "4", "--warmup", "1", "--workers", "1",
            "--control-plane", f"127.0.0.1:{grpc_port}", "--json",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dev.env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(load.communicate(), 120)
        assert load.returncode == 0, err.decode()[-3000:]
        summary = json.loads(out)
    finally:
        await dev.stop()

    assert summary["joined"] == 8 and summary["join_failures"] == 0
    assert summary["not_receiving"] == 0
    # 2 rooms x 3 subscribers, one video stream each
    assert summary["streams"] == 6
    assert summary["forwarded_pps"] > 0
    received, forwarded = summary["participants_received_pps"], summary["forwarded_pps"]
    # the relay's counter and the subscribers' counts, read a few ms apart
    assert abs(received - forwarded) <= 0.05 * forwarded
    assert summary["loss_pct"] is not None and 0 <= summary["loss_pct"] < 1
    assert summary["jitter_ms"]["video"]["max"] >= summary["jitter_ms"]["video"]["mean"] >= 0
    (relay,) = summary["relays"]
    assert relay["pid"] is not None  # found by its port on this machine
    assert relay["cpu_pct"] is not None and relay["cpu_us_per_forwarded"] > 0
