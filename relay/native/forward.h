/* What the engine (engine.c) uses of the forwarder (forward.c): the core of
 * Track.forward with a callback for each output packet, and writing an output
 * packet into a buffer of the engine's own. */
#ifndef RELAY_NATIVE_FORWARD_H
#define RELAY_NATIVE_FORWARD_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* What one output packet is made of; see _rewrite in forwarder.py. */
typedef struct {
    uint8_t marker_and_type;
    uint16_t sequence;
    uint32_t timestamp;  /* final, already in the subscriber's space */
    uint32_t ssrc;
    uint8_t padding_bit;
    const uint8_t *block;  /* the source's one-byte elements */
    size_t block_length;
    const int8_t *map;  /* NULL: copy all but skip_id */
    int64_t skip_id;
    size_t elements_length;  /* emit_elements' length for block/map/skip_id */
    const uint8_t *prefix;  /* RTX: the original sequence number */
    size_t prefix_length;
    const uint8_t *payload;
    size_t payload_length;
} OutPacket;

/* Called once per receiving subscriber of a forwarded packet: 0 sent, 1 not
 * sent (nothing counted for it), -1 a Python error (forwarding stops). */
typedef int (*native_emit_fn)(void *context, PyObject *subscriber, const OutPacket *packet);

/* relay._native.Track? */
int native_is_track(PyObject *object);

/* Whether the engine may forward a packet of `layer` without Python: the
 * track is marked fast (Track.fast) and every subscriber of that layer,
 * receiving or waiting for a key frame, has a Leg. */
int native_track_fast(PyObject *track, int layer);
/* Track.tap: borrowed, NULL when none. */
PyObject *native_track_tap(PyObject *track);

/* Track.forward's work for `data` of `layer`, each output through `emit`;
 * 0, or -1 with a Python error set. */
int native_track_forward(PyObject *track, const uint8_t *data, size_t length, int layer,
                         double now, native_emit_fn emit, void *context);

/* Track.forward's emit (native_emit_fn): appends (subscriber, bytes) to the
 * list `context`. */
int native_emit_to_list(void *context, PyObject *subscriber, const OutPacket *packet);

/* The output packet's bytes written into `buf`: their length, or 0 when they
 * do not fit `capacity` or the 16-bit extension length. */
size_t native_write_packet(PyObject *subscriber, const OutPacket *packet, uint8_t *buf,
                           size_t capacity);

/* One RTCP compound for one subscriber (native_track_sender_reports): 0 when
 * taken, -1 with a Python error set. */
typedef int (*native_report_fn)(void *context, PyObject *subscriber, const uint8_t *report,
                                size_t length);

/* Track.sender_reports' work: every receiver of `layer` that has been sent
 * anything gets an SR (the publisher's NTP/RTP pair in its timestamp space)
 * followed by an SDES CNAME `cname`, through `emit`; 0, or -1 with a Python
 * error set. */
int native_track_sender_reports(PyObject *track, int layer, uint64_t ntp, uint32_t rtp_timestamp,
                                const uint8_t *cname, size_t cname_length,
                                native_report_fn emit, void *context);

/* Track.sender_reports' emit: (subscriber, bytes) appended to the list `context`. */
int native_report_to_list(void *context, PyObject *subscriber, const uint8_t *report,
                          size_t length);

/* sender_reports' arguments (layer, ntp, rtp_timestamp, cname); `cname` to be
 * released by the caller on success. 0, or -1 with a Python error set. */
int native_report_arguments(PyObject *args, int *layer, unsigned long long *ntp,
                            unsigned long long *rtp_timestamp, Py_buffer *cname);

/* The Leg a subscriber's packets go out on (Subscriber.leg), borrowed; NULL
 * when it has none (its packets go up to Python). */
PyObject *native_subscriber_leg(PyObject *subscriber);

/* Whether to call sink.media_flowing() now: true once, if Subscriber.announce
 * was set; and the sink itself (borrowed). */
int native_subscriber_take_announce(PyObject *subscriber);
PyObject *native_subscriber_sink(PyObject *subscriber);

#endif
