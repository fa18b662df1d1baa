"""Prometheus metrics of a relay node. Labels never carry names, ids or addresses."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from conclave.ice import shared_port_unrouted
from conclave.server_metrics import ServerMetrics
from relay import _native

# RelayService calls served and etcd requests made (docs/metrics.md).
SERVER = ServerMetrics()

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
SIGNALING_SLOW_CLIENTS = Counter(
    "conclave_signaling_slow_clients_total",
    "Signalling sessions closed (4010 too_slow) because the client did not read its messages",
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

# The closed sets of label values (tests/integration/test_meeting.py checks every
# scraped label against them).
DROP_REASONS = (
    "malformed_rtp",
    "unknown_payload_type",
    "unknown_layer",
    "not_published",
    "muted_by_host",
    "padding",
    "not_connected",
    "send_failed",
    "internal_error",
    "test_loss",
)
NODE_STATES = ("serving", "draining")

NODE_STATE = Gauge(
    "conclave_node_state",
    "1 for the node's state now (serving, draining), 0 for the others",
    ["state"],
)
HEARTBEAT_TIMESTAMP = Gauge(
    "conclave_relay_heartbeat_timestamp_seconds",
    "Unix time of the node's last successful lease keepalive in etcd",
)
CAPACITY = Gauge(
    "conclave_relay_capacity_participants", "The relay's participant limit (--capacity)"
)
TRACKS_PUBLISHED = Gauge("conclave_tracks_published", "Tracks (sources) published to this relay")
TRACKS_SUBSCRIBED = Gauge(
    "conclave_tracks_subscribed", "Subscriptions: (subscriber, track) pairs being forwarded"
)
BYTES_RECEIVED = Counter(
    "conclave_bytes_received_total", "RTP bytes (header and payload) received from publishers"
)
BYTES_FORWARDED = Counter("conclave_bytes_forwarded_total", "RTP bytes sent to subscribers")
NACKS_RECEIVED = Counter("conclave_nacks_received_total", "NACK feedback messages from subscribers")
PLIS_RECEIVED = Counter(
    "conclave_plis_received_total", "PLI/FIR key frame requests from subscribers"
)
SUBSCRIBER_RTT = Histogram(
    "conclave_subscriber_rtt_seconds",
    "Round-trip time to subscribers, from their receiver reports",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
)
SUBSCRIBER_LOSS = Histogram(
    "conclave_subscriber_loss_ratio",
    "Fraction lost that subscribers report in their receiver reports",
    buckets=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
JOIN_DURATION = Histogram(
    "conclave_join_duration_seconds",
    "From the grant's issue to the first media packet sent to or received from the participant",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)
JOIN_RESULTS = ("joined", "waiting", "refused")
JOINS = Counter("conclave_joins_total", "Joins at the relay by result", ["result"])
GRANT_REFUSALS = (
    "grant_malformed",
    "grant_unknown_key",
    "grant_bad_signature",
    "grant_expired",
    "grant_wrong_node",
    "grant_stale_node",
    "grant_replayed",
    "not_allowed",
    "locked",
    "removed",
    "room_full",
    "room_not_found",
    "node_full",
    "node_draining",
)
GRANTS_REFUSED = Counter(
    "conclave_grants_refused_total", "join messages refused, by reason", ["reason"]
)
for _state in NODE_STATES:
    NODE_STATE.labels(state=_state)
NODE_STATE.labels(state="serving").set(1)
for _result in JOIN_RESULTS:
    JOINS.labels(result=_result)

# Links: the relays of a cascaded meeting are joined by links (a gRPC stream for
# control, encrypted UDP datagrams for media); each published track crosses each
# link at most once. Direction is this relay's: `sent` from it, `received` by it.
LINK_OPEN_RESULTS = ("opened", "unauthenticated", "not_member", "failed")
LINK_DIRECTIONS = ("sent", "received")
LINK_DROP_REASONS = ("unknown_link", "not_authentic", "malformed")
# Link probes: from loopback (0.1 ms) to another region (500 ms).
LINK_RTT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
LINK_LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

LINKS = Gauge("conclave_links", "Meeting links to other relays open on this relay")
LINK_OPENS = Counter(
    "conclave_link_opens_total",
    "Link opening attempts by result: opened (either side), unauthenticated, "
    "not_member, failed (dial)",
    ["result"],
)
LINK_PACKETS = Counter(
    "conclave_link_packets_total", "Media datagrams over links, by direction", ["direction"]
)
LINK_BYTES = Counter(
    "conclave_link_bytes_total",
    "Bytes of media datagrams over links (on the wire, encrypted), by direction",
    ["direction"],
)
LINK_TRACKS = Gauge(
    "conclave_link_tracks",
    "Track streams crossing links now, once per (track, link), by direction",
    ["direction"],
)
LINK_TRACK_STARTS = Counter(
    "conclave_link_track_starts_total",
    "Times a track started crossing a link, by direction",
    ["direction"],
)
LINK_RTT = Histogram(
    "conclave_link_rtt_seconds", "Round-trip time of link probes", buckets=LINK_RTT_BUCKETS
)
LINK_LOSS = Histogram(
    "conclave_link_loss_ratio",
    "Share of media datagrams lost on a link per 1-second interval, receiver side",
    buckets=LINK_LOSS_BUCKETS,
)
LINK_DROPPED = Counter(
    "conclave_link_dropped_total", "Link datagrams refused, by reason", ["reason"]
)
for _result in LINK_OPEN_RESULTS:
    LINK_OPENS.labels(result=_result)
for _direction in LINK_DIRECTIONS:
    LINK_PACKETS.labels(direction=_direction)
    LINK_BYTES.labels(direction=_direction)
    LINK_TRACKS.labels(direction=_direction)
    LINK_TRACK_STARTS.labels(direction=_direction)
for _reason in LINK_DROP_REASONS:
    LINK_DROPPED.labels(reason=_reason)


# The native media path's engine (docs/native.md), read from its counters when
# scraped. Present only on a relay started with --forwarder native.
NATIVE_DIRECTIONS = ("received", "sent")
NATIVE_DROP_REASONS = ("srtp", "send_full", "send_error", "too_large", "protect")


# The engine's unlabelled counters: (metric, help, Engine attribute).
NATIVE_COUNTERS = (
    ("conclave_native_datagrams_segmented",
     "Sent datagrams that left in runs of one size as one UDP GSO send (UDP_SEGMENT)",
     "datagrams_segmented"),
    ("conclave_native_segment_refused",
     "Sockets on which the kernel refused UDP GSO; they send datagram by datagram since",
     "segment_refused"),
    ("conclave_native_upcalls",
     "Datagrams and packets the native engine handed up to Python",
     "upcalls"),
    ("conclave_native_forwarded",
     "RTP packets the native engine rewrote, protected and sent to subscribers' legs",
     "rtp_forwarded"),
    ("conclave_native_legs_replaced",
     "Participant legs closed because a newer one was keyed on their address "
     "(a shared port; the kernel or a NAT gave a departed participant's port to another)",
     "legs_replaced"),
)  # fmt: skip


class NativeCollector(Collector):
    """The engine's counters as metric families, read at each scrape."""

    def __init__(self, engine: _native.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        datagrams = CounterMetricFamily(
            "conclave_native_datagrams",
            "UDP datagrams the native engine received and sent on participant legs",
            labels=["direction"],
        )
        datagrams.add_metric(["received"], self.engine.datagrams_received)
        datagrams.add_metric(["sent"], self.engine.datagrams_sent)
        yield datagrams
        for name, help_text, attribute in NATIVE_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=getattr(self.engine, attribute))
        dropped = CounterMetricFamily(
            "conclave_native_dropped",
            "Datagrams the native engine dropped, by reason",
            labels=["reason"],
        )
        counts = self.engine.dropped
        for reason in NATIVE_DROP_REASONS:
            dropped.add_metric([reason], counts.get(reason, 0))
        yield dropped


class SharedPortCollector(Collector):
    """What the shared UDP port (`--udp-port`) could not give to any connection."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        unrouted = CounterMetricFamily(
            "conclave_shared_port_unrouted",
            "Datagrams on the shared UDP port from an address no participant's connection "
            "owns, dropped (scans, strays, participants already gone)",
        )
        unrouted.add_metric([], shared_port_unrouted())
        yield unrouted


def watch_shared_port() -> None:
    """Export the shared port's counter (once per process, with --udp-port)."""
    REGISTRY.register(SharedPortCollector())


_native_engine: _native.Engine | None = None
_native_seen = (0, 0, 0, 0, 0)


def watch_native(engine: _native.Engine) -> None:
    """Export the engine's counters (once per process)."""
    global _native_engine
    _native_engine = engine
    REGISTRY.register(NativeCollector(engine))


def sync_native() -> None:
    """Add what the engine received, forwarded and NACKed without Python since the
    last call to the relay's own counters (called before each scrape), so that
    they count every packet on either path."""
    global _native_seen
    engine = _native_engine
    if engine is None:
        return
    now = (engine.rtp_received, engine.rtp_received_bytes, engine.rtp_forwarded,
           engine.rtp_forwarded_bytes, engine.nacks_sent)  # fmt: skip
    counters = (PACKETS_RECEIVED, BYTES_RECEIVED, PACKETS_FORWARDED, BYTES_FORWARDED, NACKS_SENT)
    for counter, before, after in zip(counters, _native_seen, now, strict=True):
        if after > before:
            counter.inc(after - before)
    _native_seen = now
