"""A webinar larger than one relay: 1 host and 300 lightweight subscribers (aiortc
peers that count packets without decoding, `conclave loadtest media`) on a
`conclave dev` cluster of 3 relays with a capacity of 120 each. Placement spills
the meeting over all three, nobody is refused, and every subscriber receives the
host's audio, which crosses each link once."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.request

import pytest

from conclave.processes import free_port, free_port_run
from tests.dev_cluster import start_dev

CONCLAVE = [sys.executable, "-m", "conclave.cli"]
CAPACITY = 120
SUBSCRIBERS = 300


def relay_series(http_port: int, series: str, context: ssl.SSLContext) -> float:
    url = f"https://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.integration
async def test_a_webinar_spills_over_three_relays_and_nobody_is_refused() -> None:
    grpc_port, http_port = free_port(), free_port_run(3)
    dev = await start_dev(
        "--relays", "3", "--relay-capacity", str(CAPACITY),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        stderr=None,
    )  # fmt: skip
    try:
        load = await asyncio.create_subprocess_exec(
            *CONCLAVE, "loadtest", "media", "--rooms", "1", "--publishers", "1",
            "--subscribers", str(SUBSCRIBERS), "--audio-only", "--duration", "3",
            "--warmup", "1", "--control-plane", f"127.0.0.1:{grpc_port}", "--json",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dev.env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(load.communicate(), 240)
        assert load.returncode == 0, err.decode()[-3000:]
        summary = json.loads(out)
        relay_ports = [http_port + 1 + i for i in range(3)]
        context = dev.ssl_context()
        sent = [relay_series(p, 'conclave_link_track_starts_total{direction="sent"}', context)
                for p in relay_ports]  # fmt: skip
        received = [
            relay_series(p, 'conclave_link_track_starts_total{direction="received"}', context)
            for p in relay_ports
        ]
    finally:
        await dev.stop()

    print(json.dumps({k: v for k, v in summary.items() if k != "relays"}))
    for relay in summary["relays"]:
        print(relay["node_id"], relay["forwarded_pps"], relay["received_pps"], relay["cpu_pct"])
    assert summary["joined"] == SUBSCRIBERS + 1 and summary["join_failures"] == 0
    assert summary["not_receiving"] == 0
    assert summary["loss_pct"] is not None and summary["loss_pct"] < 1
    rows = summary["relays"]
    assert len(rows) == 3, "the meeting spans all three relays"
    # Each relay forwards the host's audio (~50 packets/s) to at most CAPACITY people.
    per_subscriber = summary["participants_expected_pps"] / SUBSCRIBERS
    for row in rows:
        assert row["forwarded_pps"] <= (CAPACITY + 2) * per_subscriber, row
    # The one audio track left the host's relay once per link, and each other relay
    # received it once, with 100+ subscribers behind it.
    assert sorted(sent) == [0, 0, 2], sent
    assert sorted(received) == [0, 1, 1], received
