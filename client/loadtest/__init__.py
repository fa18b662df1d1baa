"""`conclave loadtest`: many lightweight participants against a running cluster.

Each participant completes ICE and DTLS like a browser (aiortc), but never decodes:
after applying an answer it replaces the bundled DTLS transport's RTP handler with
a counter that reads the RTP header (SSRC, sequence number, timestamp) of every
packet SRTP delivered, so it can track loss (sequence gaps per SSRC) and RFC 3550
interarrival jitter at a few microseconds a packet. Publishers send a clip encoded
once per worker process (VP8 and/or Opus, looped, paced in real time) through
aiortc's sender: no encoder runs per publisher. Participants live in worker
processes (`--workers`), so one machine can drive hundreds of them.

- `clips`: the media clips, encoded once per process, and the track looping one;
- `receive`: what arrives, counted per SSRC (`Counter`, `StreamStats`);
- `participants`: load participants, Conclave's speaking docs/signaling.md;
- `worker`: the worker process protocol and the orchestrator's side of it;
- `measure`: CPU, /metrics, snapshots and window figures;
- `media`: `conclave loadtest media`, the orchestration and its command line.

bench/ reuses these pieces (client never imports bench).
"""

from __future__ import annotations

from client.loadtest.media import main

__all__ = ["main"]
