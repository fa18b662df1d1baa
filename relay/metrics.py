"""Prometheus metrics of a relay node. Labels never carry names, ids or addresses."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PACKETS_DROPPED = Counter(
    "conclave_packets_dropped_total", "Packets the relay dropped, by reason", ["reason"]
)
PACKETS_FORWARDED = Counter("conclave_packets_forwarded_total", "RTP packets sent to subscribers")
PACKETS_RECEIVED = Counter(
    "conclave_packets_received_total", "RTP packets received from publishers"
)
RETRANSMISSIONS = Counter(
    "conclave_retransmissions_total", "Packets resent to subscribers from the cache (NACK)"
)
NACKS_SENT = Counter("conclave_nacks_sent_total", "NACKs the relay sent to publishers")
KEYFRAME_REQUESTS = Counter("conclave_keyframe_requests_total", "PLIs the relay sent to publishers")
SIGNALING_ERRORS = Counter(
    "conclave_signaling_errors_total", "Client messages refused, by error code", ["code"]
)
PARTICIPANTS = Gauge("conclave_participants", "Participants connected to this relay")
ROOMS = Gauge("conclave_rooms", "Meetings with at least one participant on this relay")
ACTIVE_SPEAKER_UPDATES = Counter(
    "conclave_active_speaker_updates_total",
    "active_speakers messages broadcast (the speaker list of a meeting changed)",
)
MUTE_CHANGES = Counter("conclave_mute_changes_total", "Track mute state changes by publishers")
DECODERS_CREATED = Counter(
    "conclave_relay_decoders_created_total",
    "Media decoders created in the relay process (must stay 0: relays never decode)",
)
LAYER_SWITCHES = Counter(
    "conclave_layer_switches_total",
    "Subscribers moved to another simulcast layer (always at a key frame of that layer)",
)
DYNACAST_CHANGES = Counter(
    "conclave_dynacast_changes_total",
    "layers messages sent to publishers (simulcast layers paused or resumed)",
)
E2EE_KEY_MESSAGES = Counter(
    "conclave_e2ee_key_messages_total",
    "E2EE key messages passed between participants (opaque to the relay)",
)
CODEC_MISMATCHES = Counter(
    "conclave_codec_mismatches_total",
    "Subscriptions not forwarded because the subscriber did not negotiate the track's codec",
)
# How late the event loop wakes a timer (conclave/loop_lag.py): a busy or blocked
# loop delays every packet of this node.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
EVENT_LOOP_LAG = Histogram(
    "conclave_event_loop_lag_seconds",
    "How much later than asked the relay's event loop ran a timer",
    buckets=LOOP_LAG_BUCKETS,
)
