/*
 * The per-packet forwarder of relay/forwarder.py in C (part of relay._native).
 *
 * Step 1 of docs/native.md. TrackForwarder is the reference: this module does
 * what it does per packet and its output is byte-identical (checked by
 * tests/unit/test_native_forward.py). Names follow forwarder.py so that the two
 * can be read side by side: Track ~ TrackForwarder, Subscriber ~
 * SubscriberOutput, Layer ~ LayerStream.
 *
 * Everything per packet is plain C on the packet's bytes; Python objects are
 * created only for the output (a list of (Subscriber, bytes) tuples). The only
 * call back into Python is request_keyframe, and only from the control methods
 * (add_subscriber, set_target, set_codec), never from forward or retransmit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "module.h"

enum {
    FIXED_HEADER = 12,
    ONE_BYTE_PROFILE = 0xBEDE,
    CACHE_SIZE = 1024,  /* packets kept per video layer for retransmission */
    MAX_LAYERS = 3,     /* simulcast encodings per video track */
    SEGMENTS_KEPT = 4,  /* layer switches remembered per subscriber, for NACKs */
    SKIP_WINDOW = 1 << 14,
    MAX_BLOCK_WORDS = 0xFFFF,  /* the extension header's length field */
    SR_LENGTH = 28,  /* an RTCP SR without report blocks */
};

static const char MID_URI[] = "urn:ietf:params:rtp-hdrext:sdes:mid";
static const int64_t MID_EXTENSION_ID = 1;  /* aiortc's id for MID, until told */

typedef enum { CODEC_OPUS, CODEC_VP8, CODEC_H264 } Codec;

static const char *codec_name(Codec codec)
{
    switch (codec) {
    case CODEC_VP8: return "video/vp8";
    case CODEC_H264: return "video/h264";
    default: return "audio/opus";
    }
}

static inline uint16_t read16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline uint32_t read32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void write16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void write32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ------------------------------------------------------------------------ */
/* RTP header (RFC 3550 §5.1, RFC 8285), accepted and rejected as             */
/* relay/rtp.py's RtpHeader.parse does.                                        */

typedef struct {
    unsigned marker;
    unsigned payload_type;
    uint16_t sequence;
    uint32_t timestamp;
    uint32_t ssrc;
    size_t payload_offset;  /* the payload runs to the end, padding included */
    /* The one-byte-profile extension block; empty when there is none or it has
     * another profile (those are not parsed, so nothing of them is forwarded). */
    size_t elements_start;
    size_t elements_end;
    uint8_t padding_bit;  /* 0x20 or 0 */
} RtpView;

/* RFC 8285 §4.2 elements: zero bytes are padding, id 15 ends the walk. False
 * when an element runs past the block (parse_one_byte_extensions raises). */
static bool one_byte_elements_fit(const uint8_t *block, size_t length)
{
    size_t i = 0;
    while (i < length) {
        uint8_t byte = block[i];
        if (byte == 0) {
            i++;
            continue;
        }
        if (byte >> 4 == 15)
            break;
        size_t size = (size_t)(byte & 0x0F) + 1;
        if (i + 1 + size > length)
            return false;
        i += 1 + size;
    }
    return true;
}

static bool parse_rtp(const uint8_t *data, size_t length, RtpView *rtp)
{
    if (length < FIXED_HEADER)
        return false;
    uint8_t first = data[0];
    if (first >> 6 != 2)
        return false;
    rtp->marker = data[1] >> 7;
    rtp->payload_type = data[1] & 0x7F;
    rtp->sequence = read16(data + 2);
    rtp->timestamp = read32(data + 4);
    rtp->ssrc = read32(data + 8);
    rtp->elements_start = rtp->elements_end = 0;
    size_t offset = FIXED_HEADER + 4 * (size_t)(first & 0x0F);  /* after the CSRCs */
    if (first & 0x10) {
        if (offset + 4 > length)
            return false;
        uint16_t profile = read16(data + offset);
        size_t start = offset + 4;
        size_t end = start + 4 * (size_t)read16(data + offset + 2);
        if (end > length)
            return false;
        if (profile == ONE_BYTE_PROFILE) {
            if (!one_byte_elements_fit(data + start, end - start))
                return false;
            rtp->elements_start = start;
            rtp->elements_end = end;
        }
        offset = end;
    }
    size_t end = length;
    rtp->padding_bit = first & 0x20;
    if (rtp->padding_bit) {  /* the last byte counts the padding bytes */
        /* zero is malformed, and more than the packet leaves no room for the header */
        if (data[length - 1] == 0 || data[length - 1] > length)
            return false;
        end -= data[length - 1];
    }
    if (offset > end)
        return false;
    rtp->payload_offset = offset;
    return true;
}

/*
 * The elements of a checked one-byte block as one subscriber receives them:
 * with no map, all but `skip_id` (the publisher's MID) unchanged; with a map
 * (indexed by source id, -1: drop), renumbered. Writes to `out` unless it is
 * NULL; returns the length either way, so a caller can size its buffer first.
 */
static size_t emit_elements(const uint8_t *block, size_t length, const int8_t *map,
                            int64_t skip_id, uint8_t *out)
{
    size_t i = 0, written = 0;
    while (i < length) {
        uint8_t byte = block[i];
        if (byte == 0) {
            i++;
            continue;
        }
        int id = byte >> 4;
        if (id == 15)
            break;
        size_t size = (size_t)(byte & 0x0F) + 1;
        int new_id = map ? map[id] : (id == skip_id ? -1 : id);
        if (new_id >= 0) {
            if (out) {
                out[written] = (uint8_t)(new_id << 4 | (byte & 0x0F));
                memcpy(out + written + 1, block + i + 1, size);
            }
            written += 1 + size;
        }
        i += 1 + size;
    }
    return written;
}

/* ------------------------------------------------------------------------ */
/* Key frames: where a subscriber may start, and the picture size.            */

/* VP8 payload descriptor length (RFC 7741 §4.2); 0 when no frame byte follows. */
static size_t vp8_descriptor_length(const uint8_t *p, size_t n)
{
    if (n < 1)
        return 0;
    size_t offset = 1;
    if (p[0] & 0x80) {  /* X: extended control bits */
        if (n < 2)
            return 0;
        uint8_t ext = p[1];
        offset = 2;
        if (ext & 0x80) {  /* I: picture id, 7 or 15 bits */
            if (n <= offset)
                return 0;
            offset += (p[offset] & 0x80) ? 2 : 1;
        }
        if (ext & 0x40)  /* L: TL0PICIDX */
            offset += 1;
        if (ext & 0x30)  /* T or K */
            offset += 1;
    }
    return n > offset ? offset : 0;
}

static bool vp8_keyframe_start(const uint8_t *p, size_t n)
{
    if (n < 1 || (p[0] & 0x17) != 0x10)  /* S set, partition index 0 */
        return false;
    size_t offset = vp8_descriptor_length(p, n);
    return offset > 0 && !(p[offset] & 0x01);  /* frame tag P bit 0: key frame */
}

static bool vp8_keyframe_size(const uint8_t *p, size_t n, int64_t *width, int64_t *height)
{
    if (!vp8_keyframe_start(p, n))
        return false;
    size_t offset = vp8_descriptor_length(p, n);
    if (n - offset < 10)
        return false;
    const uint8_t *frame = p + offset;
    if (frame[3] != 0x9d || frame[4] != 0x01 || frame[5] != 0x2a)
        return false;
    int64_t w = (frame[6] | frame[7] << 8) & 0x3FFF;
    int64_t h = (frame[8] | frame[9] << 8) & 0x3FFF;
    if (!w || !h)
        return false;
    *width = w;
    *height = h;
    return true;
}

enum { H264_SPS = 7, H264_STAP_A = 24 };

/* The SPS NAL unit this H.264 packet carries, alone or in a STAP-A (RFC 6184). */
static bool h264_sps(const uint8_t *p, size_t n, const uint8_t **sps, size_t *sps_length)
{
    if (n < 2)
        return false;
    unsigned nal_type = p[0] & 0x1F;
    if (nal_type == H264_SPS) {
        *sps = p;
        *sps_length = n;
        return true;
    }
    if (nal_type != H264_STAP_A)
        return false;
    size_t offset = 1;
    while (offset + 2 < n) {
        size_t size = read16(p + offset);
        size_t start = offset + 2;
        if (size == 0 || start + size > n)
            return false;
        if ((p[start] & 0x1F) == H264_SPS) {
            *sps = p + start;
            *sps_length = size;
            return true;
        }
        offset = start + size;
    }
    return false;
}

static bool h264_keyframe_start(const uint8_t *p, size_t n)
{
    const uint8_t *sps;
    size_t length;
    return h264_sps(p, n, &sps, &length);
}

/* Exp-Golomb reader over an RBSP; `failed` once it reads past the end or a
 * code is too long, after which every read returns 0 and the result is void. */
typedef struct {
    const uint8_t *data;
    size_t length;
    size_t position;
    bool failed;
} Bits;

static unsigned read_bit(Bits *b)
{
    if (b->failed || (b->position >> 3) >= b->length) {
        b->failed = true;
        return 0;
    }
    unsigned value = (b->data[b->position >> 3] >> (7 - (b->position & 7))) & 1;
    b->position++;
    return value;
}

static uint64_t read_bits(Bits *b, int count)
{
    uint64_t value = 0;
    for (int i = 0; i < count; i++)
        value = value << 1 | read_bit(b);
    return value;
}

static int64_t read_ue(Bits *b)
{
    int zeros = 0;
    while (!read_bit(b)) {
        if (b->failed)
            return 0;
        if (++zeros > 31) {
            b->failed = true;
            return 0;
        }
    }
    return (int64_t)((UINT64_C(1) << zeros) - 1 + read_bits(b, zeros));
}

static int64_t read_se(Bits *b)
{
    int64_t value = read_ue(b);
    return (value & 1) ? (value + 1) / 2 : -(value / 2);
}

static bool high_profile(uint64_t profile_idc)
{
    static const uint8_t profiles[] = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135};
    for (size_t i = 0; i < sizeof profiles; i++)
        if (profiles[i] == profile_idc)
            return true;
    return false;
}

/* Width and height from an SPS RBSP (H.264 §7.3.2.1.1). */
static bool sps_size(Bits *bits, int64_t *width_out, int64_t *height_out)
{
    uint64_t profile_idc = read_bits(bits, 8);
    read_bits(bits, 16);  /* constraint flags, level_idc */
    read_ue(bits);        /* seq_parameter_set_id */
    int64_t chroma_format_idc = 1;
    if (high_profile(profile_idc)) {
        chroma_format_idc = read_ue(bits);
        if (chroma_format_idc == 3)
            read_bit(bits);  /* separate_colour_plane_flag */
        read_ue(bits);       /* bit_depth_luma_minus8 */
        read_ue(bits);       /* bit_depth_chroma_minus8 */
        read_bit(bits);      /* qpprime_y_zero_transform_bypass_flag */
        if (read_bit(bits)) {  /* seq_scaling_matrix_present_flag */
            int lists = chroma_format_idc != 3 ? 8 : 12;
            for (int index = 0; index < lists && !bits->failed; index++) {
                if (!read_bit(bits))
                    continue;
                int64_t last = 8, following = 8;
                int count = index < 6 ? 16 : 64;
                for (int j = 0; j < count && !bits->failed; j++) {
                    if (following)
                        following = (((last + read_se(bits) + 256) % 256) + 256) % 256;
                    last = following ? following : last;
                }
            }
        }
    }
    read_ue(bits);  /* log2_max_frame_num_minus4 */
    int64_t poc_type = read_ue(bits);
    if (poc_type == 0) {
        read_ue(bits);
    } else if (poc_type == 1) {
        read_bit(bits);
        read_se(bits);
        read_se(bits);
        int64_t cycle = read_ue(bits);
        for (int64_t i = 0; i < cycle && !bits->failed; i++)
            read_se(bits);
    }
    read_ue(bits);   /* max_num_ref_frames */
    read_bit(bits);  /* gaps_in_frame_num_value_allowed_flag */
    int64_t width_mbs = read_ue(bits) + 1;
    int64_t height_map_units = read_ue(bits) + 1;
    int64_t frame_mbs_only = read_bit(bits);
    if (!frame_mbs_only)
        read_bit(bits);  /* mb_adaptive_frame_field_flag */
    read_bit(bits);      /* direct_8x8_inference_flag */
    int64_t width = width_mbs * 16;
    int64_t height = height_map_units * 16 * (2 - frame_mbs_only);
    if (read_bit(bits)) {  /* frame_cropping_flag */
        int64_t left = read_ue(bits), right = read_ue(bits);
        int64_t top = read_ue(bits), bottom = read_ue(bits);
        int64_t crop_x = (chroma_format_idc == 1 || chroma_format_idc == 2) ? 2 : 1;
        int64_t crop_y = (chroma_format_idc == 1 ? 2 : 1) * (2 - frame_mbs_only);
        width -= (left + right) * crop_x;
        height -= (top + bottom) * crop_y;
    }
    if (bits->failed || width <= 0 || height <= 0)
        return false;
    *width_out = width;
    *height_out = height;
    return true;
}

/* 1: size found, 0: none, -1: out of memory (with MemoryError set). */
static int h264_keyframe_size(const uint8_t *p, size_t n, int64_t *width, int64_t *height)
{
    const uint8_t *sps;
    size_t length;
    if (!h264_sps(p, n, &sps, &length))
        return 0;
    /* The RBSP after the NAL header, emulation-prevention bytes (00 00 03 ->
     * 00 00) removed left to right, as bytes.replace does. */
    uint8_t small[256];
    uint8_t *rbsp = length <= sizeof small ? small : malloc(length);
    if (!rbsp) {
        PyErr_NoMemory();
        return -1;
    }
    size_t out = 0;
    for (size_t i = 1; i < length;) {
        if (i + 2 < length && sps[i] == 0 && sps[i + 1] == 0 && sps[i + 2] == 3) {
            rbsp[out++] = 0;
            rbsp[out++] = 0;
            i += 3;
        } else {
            rbsp[out++] = sps[i++];
        }
    }
    Bits bits = {rbsp, out, 0, false};
    bool found = sps_size(&bits, width, height);
    if (rbsp != small)
        free(rbsp);
    return found;
}

static bool keyframe_start(Codec codec, const uint8_t *p, size_t n)
{
    return codec == CODEC_H264 ? h264_keyframe_start(p, n) : vp8_keyframe_start(p, n);
}

/* Audio tracks use the VP8 functions too, as TrackForwarder's defaults do. */
static int keyframe_size(Codec codec, const uint8_t *p, size_t n, int64_t *width, int64_t *height)
{
    if (codec == CODEC_H264)
        return h264_keyframe_size(p, n, width, height);
    return vp8_keyframe_size(p, n, width, height);
}

/* ------------------------------------------------------------------------ */
/* Subscriber                                                                  */

typedef struct TrackObject TrackObject;

typedef struct {
    uint16_t first_sequence;  /* first output number sent after the switch */
    int layer;
    uint16_t seq_offset;
    uint32_t ts_offset;
} Segment;

typedef struct {
    PyObject_HEAD
    PyObject *sink;           /* opaque: whatever sends this subscriber's packets */
    PyObject *leg;            /* the native Leg its packets go out on, or NULL */
    bool announce;            /* tell the sink (media_flowing) at the first packet sent */
    PyObject *mid_element;    /* bytes */
    PyObject *codecs;         /* dict: str -> (payload type, RTX payload type or 0) */
    PyObject *extension_ids;  /* dict: URI -> id, or NULL (the publisher's ids) */
    uint32_t ssrc;
    uint8_t payload_type;
    uint32_t rtx_ssrc;  /* 0: no RTX */
    uint8_t rtx_payload_type;
    uint16_t rtx_sequence;
    bool has_map;  /* false: forward the publisher's elements, less its MID */
    int8_t extension_map[16];  /* source id -> own id, -1: drop */
    int layer;   /* being forwarded; -1 before the first packet */
    int target;  /* to switch to at its next key frame */
    Segment segments[SEGMENTS_KEPT];  /* oldest first */
    int segment_count;
    uint16_t seq_offset;
    uint32_t ts_offset;
    uint16_t next_sequence;
    uint32_t timestamp_base;
    uint64_t packets;
    uint64_t octets;
    uint64_t retransmitted;
    TrackObject *owner;  /* borrowed: the track holds a reference to us instead */
} SubscriberObject;

static PyTypeObject SubscriberType;


static PyObject *copy_extension_ids(PyObject *mapping)
{
    PyObject *items = PyMapping_Items(mapping);
    if (!items)
        return NULL;
    PyObject *result = PyDict_New();
    for (Py_ssize_t i = 0; result && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        PyObject *uri, *value;
        uint64_t id;
        if (!PyArg_ParseTuple(item, "UO", &uri, &value) ||
            native_to_bounded(value, 15, "extension id", &id) < 0) {
            Py_CLEAR(result);
            break;
        }
        PyObject *key = PyUnicode_FromObject(uri);  /* an exact str, not a subclass */
        PyObject *number = PyLong_FromUnsignedLongLong(id);
        if (!key || !number || PyDict_SetItem(result, key, number) < 0)
            Py_CLEAR(result);
        Py_XDECREF(key);
        Py_XDECREF(number);
    }
    Py_DECREF(items);
    return result;
}

static PyObject *copy_codecs(PyObject *mapping)
{
    PyObject *items = PyMapping_Items(mapping);
    if (!items)
        return NULL;
    PyObject *result = PyDict_New();
    for (Py_ssize_t i = 0; result && i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        PyObject *mime, *pair, *pt, *rtx_pt;
        uint64_t media, rtx;
        if (!PyArg_ParseTuple(item, "UO", &mime, &pair) ||
            !PyArg_ParseTuple(pair, "OO;codecs values must be (payload type, RTX payload type)",
                              &pt, &rtx_pt) ||
            native_to_bounded(pt, 127, "payload type", &media) < 0 ||
            native_to_bounded(rtx_pt, 127, "RTX payload type", &rtx) < 0) {
            Py_CLEAR(result);
            break;
        }
        PyObject *key = PyUnicode_FromObject(mime);
        PyObject *value = Py_BuildValue("(KK)", (unsigned long long)media,
                                        (unsigned long long)rtx);
        if (!key || !value || PyDict_SetItem(result, key, value) < 0)
            Py_CLEAR(result);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    Py_DECREF(items);
    return result;
}

static int Subscriber_init(SubscriberObject *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"ssrc", "payload_type", "mid_element", "rtx", "extension_ids",
                               "codecs", "next_sequence", "timestamp_base", "rtx_sequence",
                               "sink", NULL};
    PyObject *ssrc, *payload_type, *rtx = Py_None, *extension_ids = Py_None;
    PyObject *codecs = Py_None, *next_sequence = NULL, *timestamp_base = NULL;
    PyObject *rtx_sequence = NULL, *sink = Py_None;
    Py_buffer mid;
    if (self->owner) {
        PyErr_SetString(PyExc_RuntimeError, "a subscriber of a track cannot be reinitialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOy*|OOO$OOOO", keywords, &ssrc,
                                     &payload_type, &mid, &rtx, &extension_ids, &codecs,
                                     &next_sequence, &timestamp_base, &rtx_sequence, &sink))
        return -1;
    PyObject *mid_copy = PyBytes_FromStringAndSize(mid.buf, mid.len);
    PyBuffer_Release(&mid);
    if (!mid_copy)
        return -1;
    uint64_t v_ssrc, v_pt, v_rtx_ssrc = 0, v_rtx_pt = 0, v_next, v_base, v_rtx_seq;
    PyObject *codecs_copy = NULL, *ids_copy = NULL;
    if (!next_sequence || !timestamp_base || !rtx_sequence) {
        PyErr_SetString(PyExc_TypeError,
                        "next_sequence, timestamp_base and rtx_sequence are required "
                        "(random initial values, chosen by the caller)");
        goto fail;
    }
    if (native_to_bounded(ssrc, 0xFFFFFFFF, "ssrc", &v_ssrc) < 0 ||
        native_to_bounded(payload_type, 127, "payload_type", &v_pt) < 0 ||
        native_to_bounded(next_sequence, 0xFFFF, "next_sequence", &v_next) < 0 ||
        native_to_bounded(timestamp_base, 0xFFFFFFFF, "timestamp_base", &v_base) < 0 ||
        native_to_bounded(rtx_sequence, 0xFFFF, "rtx_sequence", &v_rtx_seq) < 0)
        goto fail;
    if (rtx != Py_None) {
        PyObject *rtx_ssrc, *rtx_pt;
        if (!PyArg_ParseTuple(rtx, "OO;rtx must be (ssrc, payload type) or None", &rtx_ssrc,
                              &rtx_pt) ||
            native_to_bounded(rtx_ssrc, 0xFFFFFFFF, "RTX ssrc", &v_rtx_ssrc) < 0 ||
            native_to_bounded(rtx_pt, 127, "RTX payload type", &v_rtx_pt) < 0)
            goto fail;
    }
    codecs_copy = codecs == Py_None ? PyDict_New() : copy_codecs(codecs);
    if (!codecs_copy)
        goto fail;
    if (extension_ids != Py_None && !(ids_copy = copy_extension_ids(extension_ids)))
        goto fail;

    Py_XSETREF(self->mid_element, mid_copy);
    Py_XSETREF(self->codecs, codecs_copy);
    Py_XSETREF(self->extension_ids, ids_copy);
    Py_INCREF(sink);
    Py_XSETREF(self->sink, sink);
    self->ssrc = (uint32_t)v_ssrc;
    self->payload_type = (uint8_t)v_pt;
    self->rtx_ssrc = (uint32_t)v_rtx_ssrc;
    self->rtx_payload_type = (uint8_t)v_rtx_pt;
    self->rtx_sequence = (uint16_t)v_rtx_seq;
    self->next_sequence = (uint16_t)v_next;
    self->timestamp_base = (uint32_t)v_base;
    self->has_map = false;
    self->layer = -1;
    self->target = 0;
    self->segment_count = 0;
    self->seq_offset = 0;
    self->ts_offset = 0;
    self->packets = self->octets = self->retransmitted = 0;
    return 0;
fail:
    Py_DECREF(mid_copy);
    Py_XDECREF(codecs_copy);
    Py_XDECREF(ids_copy);
    return -1;
}

static int Subscriber_traverse(SubscriberObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sink);
    Py_VISIT(self->leg);
    Py_VISIT(self->mid_element);
    Py_VISIT(self->codecs);
    Py_VISIT(self->extension_ids);
    return 0;
}

static int Subscriber_clear(SubscriberObject *self)
{
    Py_CLEAR(self->sink);
    Py_CLEAR(self->leg);
    return 0;
}

static void Subscriber_dealloc(SubscriberObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->leg);
    Py_CLEAR(self->mid_element);
    Py_CLEAR(self->codecs);
    Py_CLEAR(self->extension_ids);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Subscriber_use_codec(SubscriberObject *self, PyObject *mime)
{
    if (!self->codecs || PyDict_GET_SIZE(self->codecs) == 0)
        Py_RETURN_TRUE;  /* a leg that names no codecs takes what it was given */
    PyObject *pair = PyDict_GetItemWithError(self->codecs, mime);
    if (!pair) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    /* Values were checked when copied: a pair of ints in [0, 127]. */
    self->payload_type = (uint8_t)PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
    self->rtx_payload_type = (uint8_t)PyLong_AsLong(PyTuple_GET_ITEM(pair, 1));
    if (!self->rtx_payload_type)
        self->rtx_ssrc = 0;
    Py_RETURN_TRUE;
}

static PyObject *get_u64(uint64_t value) { return PyLong_FromUnsignedLongLong(value); }

#define SUBSCRIBER_GETTER(field)                                                   \
    static PyObject *Subscriber_get_##field(SubscriberObject *self, void *closure) \
    {                                                                              \
        (void)closure;                                                             \
        return PyLong_FromLongLong((long long)self->field);                        \
    }
SUBSCRIBER_GETTER(ssrc)
SUBSCRIBER_GETTER(payload_type)
SUBSCRIBER_GETTER(rtx_ssrc)
SUBSCRIBER_GETTER(rtx_payload_type)
SUBSCRIBER_GETTER(rtx_sequence)
SUBSCRIBER_GETTER(layer)
SUBSCRIBER_GETTER(target)
SUBSCRIBER_GETTER(seq_offset)
SUBSCRIBER_GETTER(ts_offset)
SUBSCRIBER_GETTER(next_sequence)
SUBSCRIBER_GETTER(timestamp_base)
#undef SUBSCRIBER_GETTER

static PyObject *Subscriber_get_packets(SubscriberObject *self, void *c) { (void)c; return get_u64(self->packets); }
static PyObject *Subscriber_get_octets(SubscriberObject *self, void *c) { (void)c; return get_u64(self->octets); }
static PyObject *Subscriber_get_retransmitted(SubscriberObject *self, void *c)
{
    (void)c;
    return get_u64(self->retransmitted);
}

static PyObject *Subscriber_get_started(SubscriberObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->layer >= 0);
}

static PyObject *Subscriber_get_mid_element(SubscriberObject *self, void *c)
{
    (void)c;
    if (!self->mid_element)
        return PyBytes_FromStringAndSize(NULL, 0);
    return Py_NewRef(self->mid_element);
}

static PyObject *Subscriber_get_segments(SubscriberObject *self, void *c)
{
    (void)c;
    PyObject *list = PyList_New(self->segment_count);
    for (int i = 0; list && i < self->segment_count; i++) {
        Segment *s = &self->segments[i];
        PyObject *item = Py_BuildValue("(iikk)", (int)s->first_sequence, s->layer,
                                       (unsigned long)s->seq_offset, (unsigned long)s->ts_offset);
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *Subscriber_get_extension_map(SubscriberObject *self, void *c)
{
    (void)c;
    if (!self->has_map)
        Py_RETURN_NONE;
    PyObject *dict = PyDict_New();
    for (int id = 0; dict && id < 16; id++) {
        if (self->extension_map[id] < 0)
            continue;
        PyObject *key = PyLong_FromLong(id), *value = PyLong_FromLong(self->extension_map[id]);
        if (!key || !value || PyDict_SetItem(dict, key, value) < 0)
            Py_CLEAR(dict);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return dict;
}

static PyObject *Subscriber_get_sink(SubscriberObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->sink ? self->sink : Py_None);
}

static int Subscriber_set_sink(SubscriberObject *self, PyObject *value, void *c)
{
    (void)c;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "sink cannot be deleted");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->sink, value);
    return 0;
}

static PyObject *Subscriber_get_leg(SubscriberObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->leg ? self->leg : Py_None);
}

static int Subscriber_set_leg(SubscriberObject *self, PyObject *value, void *c)
{
    (void)c;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "leg cannot be deleted");
        return -1;
    }
    Py_XSETREF(self->leg, value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}

/* A settable flag's new value (any truth value; deleting it is refused). */
static int set_flag(bool *flag, PyObject *value, const char *name)
{
    int truth = value ? PyObject_IsTrue(value) : -1;
    if (truth < 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_AttributeError, "%s cannot be deleted", name);
        return -1;
    }
    *flag = truth;
    return 0;
}

static PyObject *Subscriber_get_announce(SubscriberObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->announce);
}

static int Subscriber_set_announce(SubscriberObject *self, PyObject *value, void *c)
{
    (void)c;
    return set_flag(&self->announce, value, "announce");
}

static PyGetSetDef Subscriber_getset[] = {
    {"ssrc", (getter)Subscriber_get_ssrc, NULL, NULL, NULL},
    {"payload_type", (getter)Subscriber_get_payload_type, NULL, NULL, NULL},
    {"rtx_ssrc", (getter)Subscriber_get_rtx_ssrc, NULL, NULL, NULL},
    {"rtx_payload_type", (getter)Subscriber_get_rtx_payload_type, NULL, NULL, NULL},
    {"rtx_sequence", (getter)Subscriber_get_rtx_sequence, NULL, NULL, NULL},
    {"layer", (getter)Subscriber_get_layer, NULL, NULL, NULL},
    {"target", (getter)Subscriber_get_target, NULL, NULL, NULL},
    {"seq_offset", (getter)Subscriber_get_seq_offset, NULL, NULL, NULL},
    {"ts_offset", (getter)Subscriber_get_ts_offset, NULL, NULL, NULL},
    {"next_sequence", (getter)Subscriber_get_next_sequence, NULL, NULL, NULL},
    {"timestamp_base", (getter)Subscriber_get_timestamp_base, NULL, NULL, NULL},
    {"packets", (getter)Subscriber_get_packets, NULL, NULL, NULL},
    {"octets", (getter)Subscriber_get_octets, NULL, NULL, NULL},
    {"retransmitted", (getter)Subscriber_get_retransmitted, NULL, NULL, NULL},
    {"started", (getter)Subscriber_get_started, NULL, NULL, NULL},
    {"mid_element", (getter)Subscriber_get_mid_element, NULL, NULL, NULL},
    {"segments", (getter)Subscriber_get_segments, NULL, NULL, NULL},
    {"extension_map", (getter)Subscriber_get_extension_map, NULL, NULL, NULL},
    {"sink", (getter)Subscriber_get_sink, (setter)Subscriber_set_sink, NULL, NULL},
    {"announce", (getter)Subscriber_get_announce, (setter)Subscriber_set_announce,
     "call sink.media_flowing() when the engine sends the first packet", NULL},
    {"leg", (getter)Subscriber_get_leg, (setter)Subscriber_set_leg,
     "the native Leg its packets go out on in C (None: returned to Python)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Subscriber_methods[] = {
    {"use_codec", (PyCFunction)Subscriber_use_codec, METH_O,
     "Send with the payload types negotiated for this MIME type; False if none were."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SubscriberType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Subscriber",
    .tp_doc = "One subscriber's view of one track (SubscriberOutput in forwarder.py).",
    .tp_basicsize = sizeof(SubscriberObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Subscriber_init,
    .tp_dealloc = (destructor)Subscriber_dealloc,
    .tp_traverse = (traverseproc)Subscriber_traverse,
    .tp_clear = (inquiry)Subscriber_clear,
    .tp_methods = Subscriber_methods,
    .tp_getset = Subscriber_getset,
};

/* ------------------------------------------------------------------------ */
/* Layer streams                                                               */

/* An ordered list of subscribers (list semantics: append, remove the first). */
typedef struct {
    SubscriberObject **items;
    size_t count;
    size_t capacity;
} SubList;

static int sublist_reserve(SubList *list, size_t wanted)
{
    if (wanted <= list->capacity)
        return 0;
    size_t capacity = list->capacity ? list->capacity : 4;
    while (capacity < wanted)
        capacity *= 2;
    SubscriberObject **items = realloc(list->items, capacity * sizeof *items);
    if (!items) {
        PyErr_NoMemory();
        return -1;
    }
    list->items = items;
    list->capacity = capacity;
    return 0;
}

static int sublist_append(SubList *list, SubscriberObject *sub)
{
    if (sublist_reserve(list, list->count + 1) < 0)
        return -1;
    list->items[list->count++] = sub;
    return 0;
}

static bool sublist_remove(SubList *list, SubscriberObject *sub)
{
    for (size_t i = 0; i < list->count; i++) {
        if (list->items[i] == sub) {
            memmove(list->items + i, list->items + i + 1,
                    (list->count - i - 1) * sizeof *list->items);
            list->count--;
            return true;
        }
    }
    return false;
}

static PyObject *sublist_to_python(const SubList *list)
{
    PyObject *result = PyList_New((Py_ssize_t)list->count);
    for (size_t i = 0; result && i < list->count; i++)
        PyList_SET_ITEM(result, (Py_ssize_t)i, Py_NewRef((PyObject *)list->items[i]));
    return result;
}

/* A packet kept to answer NACKs: a copy of it as received, parsed. */
typedef struct {
    bool valid;
    uint16_t sequence;  /* compact number */
    uint32_t timestamp;
    uint8_t marker;  /* 0x80 or 0 */
    uint8_t padding_bit;
    uint8_t *data;
    size_t length;
    size_t capacity;
    size_t elements_start, elements_end;
    size_t payload_offset;
} CacheSlot;

typedef struct {
    CacheSlot *cache;  /* CACHE_SIZE slots for video, NULL for audio */
    SubList receivers;  /* borrowed: the track's subscriber list holds them */
    SubList joining;
    uint64_t packets;
    uint64_t octets;
    double last_arrival;
    uint32_t last_timestamp;
    int64_t width;  /* from the latest key frame; 0 until one arrived */
    int64_t height;
    int64_t highest;  /* newest source sequence number, unwrapped; -1: none yet */
    int64_t *skipped;  /* unwrapped numbers of dropped padding, ascending */
    size_t skipped_count;
    size_t skipped_capacity;
    int64_t skipped_before;  /* dropped padding older than `skipped` remembers */
    uint64_t padding;  /* padding-only packets dropped */
} Layer;

static int64_t layer_unwrap(Layer *layer, uint16_t sequence)
{
    if (layer->highest < 0) {
        layer->highest = (int64_t)sequence + 0x10000;  /* older packets stay positive */
        return layer->highest;
    }
    uint64_t delta = ((uint64_t)(sequence - layer->highest + 0x8000)) & 0xFFFF;
    int64_t extended = layer->highest + (int64_t)delta - 0x8000;
    if (extended > layer->highest)
        layer->highest = extended;
    return extended;
}

/* First index whose value is >= (left) or > (right) `value`. */
static size_t bisect(const int64_t *values, size_t count, int64_t value, bool right)
{
    size_t low = 0, high = count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (values[middle] < value || (right && values[middle] == value))
            low = middle + 1;
        else
            high = middle;
    }
    return low;
}

static uint16_t layer_compact(const Layer *layer, int64_t extended)
{
    int64_t dropped = layer->skipped_before +
                      (int64_t)bisect(layer->skipped, layer->skipped_count, extended, true);
    return (uint16_t)(uint64_t)(extended - dropped);
}

static int layer_skip(Layer *layer, int64_t extended)
{
    size_t count = layer->skipped_count;
    size_t at = count;
    if (count && extended <= layer->skipped[count - 1]) {
        at = bisect(layer->skipped, count, extended, false);
        if (layer->skipped[at] == extended)
            return 0;  /* already left out: a duplicate */
    }
    if (count == layer->skipped_capacity) {
        size_t capacity = count ? 2 * count : 64;
        int64_t *grown = realloc(layer->skipped, capacity * sizeof *grown);
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        layer->skipped = grown;
        layer->skipped_capacity = capacity;
    }
    memmove(layer->skipped + at + 1, layer->skipped + at, (count - at) * sizeof *layer->skipped);
    layer->skipped[at] = extended;
    layer->skipped_count = ++count;
    layer->padding++;
    /* Forget in batches, once the oldest is two windows behind. */
    if (layer->skipped[0] < layer->highest - 2 * SKIP_WINDOW) {
        size_t cut = bisect(layer->skipped, count, layer->highest - SKIP_WINDOW, false);
        layer->skipped_before += (int64_t)cut;
        memmove(layer->skipped, layer->skipped + cut, (count - cut) * sizeof *layer->skipped);
        layer->skipped_count = count - cut;
    }
    return 0;
}

static int cache_store(CacheSlot *slot, const uint8_t *data, size_t length, const RtpView *rtp,
                       uint16_t sequence)
{
    if (length > slot->capacity) {
        uint8_t *grown = realloc(slot->data, length);
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        slot->data = grown;
        slot->capacity = length;
    }
    memcpy(slot->data, data, length);
    slot->valid = true;
    slot->sequence = sequence;
    slot->timestamp = rtp->timestamp;
    slot->marker = (uint8_t)(rtp->marker << 7);
    slot->padding_bit = rtp->padding_bit;
    slot->length = length;
    slot->elements_start = rtp->elements_start;
    slot->elements_end = rtp->elements_end;
    slot->payload_offset = rtp->payload_offset;
    return 0;
}

static void layer_free(Layer *layer)
{
    if (layer->cache) {
        for (size_t i = 0; i < CACHE_SIZE; i++)
            free(layer->cache[i].data);
        free(layer->cache);
        layer->cache = NULL;
    }
    free(layer->receivers.items);
    free(layer->joining.items);
    free(layer->skipped);
    memset(layer, 0, sizeof *layer);
    layer->highest = -1;
}

/* ------------------------------------------------------------------------ */
/* Output packets                                                              */


/* The packet's length, or 0 when its extension block would not fit the 16-bit
 * length (the Python forwarder raises then). */
static size_t packet_length(const SubscriberObject *sub, const OutPacket *o, size_t *padded_out)
{
    size_t mid_length = (size_t)PyBytes_GET_SIZE(sub->mid_element);
    size_t elements = mid_length + o->elements_length;
    size_t padded = (elements + 3) & ~(size_t)3;
    if (padded / 4 > MAX_BLOCK_WORDS)
        return 0;
    *padded_out = padded;
    size_t block = elements ? 4 + padded : 0;
    return FIXED_HEADER + block + o->prefix_length + o->payload_length;
}

/* Write the packet into `p`, which holds packet_length() bytes. */
static void write_into(const SubscriberObject *sub, const OutPacket *o, size_t padded, uint8_t *p)
{
    const char *mid = PyBytes_AS_STRING(sub->mid_element);
    size_t mid_length = (size_t)PyBytes_GET_SIZE(sub->mid_element);
    size_t elements = mid_length + o->elements_length;
    p[0] = (uint8_t)(0x80 | o->padding_bit | (elements ? 0x10 : 0));
    p[1] = o->marker_and_type;
    write16(p + 2, o->sequence);
    write32(p + 4, o->timestamp);
    write32(p + 8, o->ssrc);
    p += FIXED_HEADER;
    if (elements) {
        write16(p, ONE_BYTE_PROFILE);
        write16(p + 2, (uint16_t)(padded / 4));
        memcpy(p + 4, mid, mid_length);
        emit_elements(o->block, o->block_length, o->map, o->skip_id, p + 4 + mid_length);
        memset(p + 4 + elements, 0, padded - elements);
        p += 4 + padded;
    }
    if (o->prefix_length)
        memcpy(p, o->prefix, o->prefix_length);
    if (o->payload_length)
        memcpy(p + o->prefix_length, o->payload, o->payload_length);
}

/* The packet as bytes; NULL without an exception when its extension block
 * would not fit the 16-bit length (the Python forwarder raises then). */
static PyObject *build_packet(const SubscriberObject *sub, const OutPacket *o)
{
    size_t padded = 0;
    size_t total = packet_length(sub, o, &padded);
    if (!total)
        return NULL;
    PyObject *packet = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!packet)
        return NULL;
    write_into(sub, o, padded, (uint8_t *)PyBytes_AS_STRING(packet));
    return packet;
}

size_t native_write_packet(PyObject *subscriber, const OutPacket *packet, uint8_t *buf,
                           size_t capacity)
{
    const SubscriberObject *sub = (const SubscriberObject *)subscriber;
    size_t padded = 0;
    size_t total = packet_length(sub, packet, &padded);
    if (!total || total > capacity)
        return 0;
    write_into(sub, packet, padded, buf);
    return total;
}

PyObject *native_subscriber_leg(PyObject *subscriber)
{
    return ((SubscriberObject *)subscriber)->leg;
}

int native_subscriber_take_announce(PyObject *subscriber)
{
    SubscriberObject *sub = (SubscriberObject *)subscriber;
    int announce = sub->announce;
    sub->announce = false;
    return announce;
}

PyObject *native_subscriber_sink(PyObject *subscriber)
{
    return ((SubscriberObject *)subscriber)->sink;
}

/* ------------------------------------------------------------------------ */
/* Track                                                                       */

struct TrackObject {
    PyObject_HEAD
    bool is_video;
    int clock_rate;
    Codec codec;
    PyObject *request_keyframe;   /* callable(layer) */
    PyObject *source_extensions;  /* dict: id -> URI, or NULL: none yet */
    int64_t source_mid_id;  /* the publisher's MID id, 0: none, never forwarded */
    SubList subscribers;  /* strong references */
    Layer layers[MAX_LAYERS];
    int layer_count;
    uint64_t received;
    uint64_t forwarded;
    uint64_t switches;  /* layer changes of started subscribers */
    uint64_t malformed;  /* packets RtpHeader.parse would reject */
    bool fast;  /* the engine may forward its packets without Python (Track.fast) */
    PyObject *tap;  /* called with each packet the engine forwarded (Track.tap), or NULL */
};

static PyTypeObject TrackType;

static int Track_init(TrackObject *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"kind", "request_keyframe", NULL};
    const char *kind;
    PyObject *request_keyframe;
    if (self->layer_count) {
        PyErr_SetString(PyExc_RuntimeError, "Track cannot be reinitialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sO", keywords, &kind, &request_keyframe))
        return -1;
    if (strcmp(kind, "video") == 0) {
        self->is_video = true;
        self->clock_rate = 90000;
        self->codec = CODEC_VP8;
    } else if (strcmp(kind, "audio") == 0) {
        self->is_video = false;
        self->clock_rate = 48000;
        self->codec = CODEC_OPUS;
    } else {
        PyErr_Format(PyExc_ValueError, "kind must be 'audio' or 'video', not '%s'", kind);
        return -1;
    }
    if (!PyCallable_Check(request_keyframe)) {
        PyErr_SetString(PyExc_TypeError, "request_keyframe must be callable");
        return -1;
    }
    int count = self->is_video ? MAX_LAYERS : 1;
    for (int i = 0; i < count; i++) {
        memset(&self->layers[i], 0, sizeof self->layers[i]);
        self->layers[i].highest = -1;
        if (self->is_video) {
            self->layers[i].cache = calloc(CACHE_SIZE, sizeof(CacheSlot));
            if (!self->layers[i].cache) {
                for (int j = 0; j < i; j++)
                    layer_free(&self->layers[j]);
                PyErr_NoMemory();
                return -1;
            }
        }
    }
    self->layer_count = count;
    Py_INCREF(request_keyframe);
    Py_XSETREF(self->request_keyframe, request_keyframe);
    self->source_mid_id = MID_EXTENSION_ID;
    self->fast = true;
    return 0;
}

/* Let go of every subscriber; safe to re-enter while the references drop. */
static void track_release_subscribers(TrackObject *self)
{
    SubList held = self->subscribers;
    memset(&self->subscribers, 0, sizeof self->subscribers);
    for (int i = 0; i < self->layer_count; i++)
        self->layers[i].receivers.count = self->layers[i].joining.count = 0;
    for (size_t i = 0; i < held.count; i++) {
        held.items[i]->owner = NULL;
        held.items[i]->layer = -1;
    }
    for (size_t i = 0; i < held.count; i++)
        Py_DECREF(held.items[i]);
    free(held.items);
}

static int Track_traverse(TrackObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->request_keyframe);
    Py_VISIT(self->source_extensions);
    Py_VISIT(self->tap);
    for (size_t i = 0; i < self->subscribers.count; i++)
        Py_VISIT((PyObject *)self->subscribers.items[i]);
    return 0;
}

static int Track_clear(TrackObject *self)
{
    Py_CLEAR(self->request_keyframe);
    Py_CLEAR(self->source_extensions);
    Py_CLEAR(self->tap);
    track_release_subscribers(self);
    return 0;
}

static void Track_dealloc(TrackObject *self)
{
    PyObject_GC_UnTrack(self);
    Track_clear(self);
    for (int i = 0; i < self->layer_count; i++)
        layer_free(&self->layers[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int track_request_keyframe(TrackObject *self, int layer)
{
    if (!self->request_keyframe)
        return 0;  /* cleared by the garbage collector */
    PyObject *result = PyObject_CallFunction(self->request_keyframe, "i", layer);
    if (!result)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* An int from Python as a C int64; ids beyond int64 can match nothing. */
static int64_t to_id(PyObject *value, int *error)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        *error = 1;
        return 0;
    }
    return overflow ? INT64_MIN : v;
}

/* How to renumber the publisher's extensions for `sub` (_extension_map). */
static int track_extension_map(TrackObject *self, SubscriberObject *sub, bool *has_map,
                               int8_t map[16])
{
    memset(map, -1, 16);
    *has_map = false;
    if (!sub->extension_ids || !self->source_extensions ||
        PyDict_GET_SIZE(self->source_extensions) == 0)
        return 0;
    bool identity = true, complete = true;
    Py_ssize_t position = 0;
    PyObject *key, *uri;
    while (PyDict_Next(self->source_extensions, &position, &key, &uri)) {
        int is_mid = PyUnicode_CompareWithASCIIString(uri, MID_URI) == 0;
        if (is_mid)
            continue;
        PyObject *own = PyDict_GetItemWithError(sub->extension_ids, uri);
        if (!own) {
            if (PyErr_Occurred())
                return -1;
            complete = false;  /* the subscriber did not negotiate it: dropped */
            continue;
        }
        int error = 0;
        int64_t source_id = to_id(key, &error);
        if (error)
            return -1;
        long own_id = PyLong_AsLong(own);  /* checked to be in [0, 15] */
        if (source_id != own_id)
            identity = false;
        if (source_id >= 0 && source_id < 16)
            map[source_id] = (int8_t)own_id;
    }
    *has_map = !(complete && identity);
    return 0;
}

static PyObject *Track_set_source_extensions(TrackObject *self, PyObject *ids)
{
    PyObject *items = PyMapping_Items(ids);
    if (!items)
        return NULL;
    PyObject *copy = PyDict_New();
    int64_t mid_id = 0;
    bool mid_found = false;
    for (Py_ssize_t i = 0; copy && i < PyList_GET_SIZE(items); i++) {
        PyObject *key, *uri;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "O!U", &PyLong_Type, &key, &uri) ||
            PyDict_SetItem(copy, key, uri) < 0) {
            Py_CLEAR(copy);
            break;
        }
        if (!mid_found && PyUnicode_CompareWithASCIIString(uri, MID_URI) == 0) {
            int error = 0;
            mid_id = to_id(key, &error);
            if (error)
                Py_CLEAR(copy);
            mid_found = true;
        }
    }
    Py_DECREF(items);
    if (!copy)
        return NULL;
    Py_XSETREF(self->source_extensions, copy);
    self->source_mid_id = mid_id;
    for (size_t i = 0; i < self->subscribers.count; i++) {
        SubscriberObject *sub = self->subscribers.items[i];
        if (track_extension_map(self, sub, &sub->has_map, sub->extension_map) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Track_set_codec(TrackObject *self, PyObject *mime_object)
{
    const char *mime = PyUnicode_Check(mime_object) ? PyUnicode_AsUTF8(mime_object) : NULL;
    if (!mime) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "the codec must be a str");
        return NULL;
    }
    Codec codec;
    if (strcmp(mime, "video/vp8") == 0)
        codec = CODEC_VP8;
    else if (strcmp(mime, "video/h264") == 0)
        codec = CODEC_H264;
    else
        Py_RETURN_NONE;  /* no key frames known for it: nothing changes */
    if (codec == self->codec)
        Py_RETURN_NONE;
    for (int index = 0; index < self->layer_count; index++) {
        Layer *stream = &self->layers[index];
        if (sublist_reserve(&stream->joining, stream->joining.count + stream->receivers.count) < 0)
            return NULL;
    }
    self->codec = codec;
    for (int index = 0; index < self->layer_count; index++) {
        Layer *stream = &self->layers[index];
        for (size_t i = 0; i < stream->receivers.count; i++) {
            SubscriberObject *sub = stream->receivers.items[i];
            sub->layer = -1;
            if (sub->target == index)  /* else it waits at its target already */
                stream->joining.items[stream->joining.count++] = sub;
        }
        stream->receivers.count = 0;
    }
    for (int index = 0; index < self->layer_count; index++)
        if (self->layers[index].joining.count && track_request_keyframe(self, index) < 0)
            return NULL;
    Py_RETURN_NONE;
}

/* A layer number clamped to the track's layers, as min(max(layer, 0), n - 1). */
static int clamp_layer(TrackObject *self, PyObject *value, int *layer)
{
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "layer must be an int");
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (!overflow && v < 0))
        *layer = 0;
    else if (overflow > 0 || v > self->layer_count - 1)
        *layer = self->layer_count - 1;
    else
        *layer = (int)v;
    return 0;
}

static PyObject *Track_add_subscriber(TrackObject *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"output", "layer", NULL};
    SubscriberObject *sub;
    PyObject *layer_object = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|O", keywords, &SubscriberType, &sub,
                                     &layer_object))
        return NULL;
    if (!self->layer_count) {
        PyErr_SetString(PyExc_RuntimeError, "the track was not initialised");
        return NULL;
    }
    if (sub->owner == self)
        Py_RETURN_NONE;
    if (sub->owner) {
        PyErr_SetString(PyExc_ValueError, "the subscriber belongs to another track");
        return NULL;
    }
    if (!sub->mid_element) {
        PyErr_SetString(PyExc_ValueError, "the subscriber was not initialised");
        return NULL;
    }
    int layer = 0;
    if (layer_object && clamp_layer(self, layer_object, &layer) < 0)
        return NULL;
    bool has_map;
    int8_t map[16];
    if (track_extension_map(self, sub, &has_map, map) < 0 ||
        sublist_reserve(&self->subscribers, self->subscribers.count + 1) < 0 ||
        sublist_reserve(&self->layers[layer].joining, self->layers[layer].joining.count + 1) < 0)
        return NULL;
    sub->layer = -1;
    sub->target = layer;
    sub->segment_count = 0;
    sub->has_map = has_map;
    memcpy(sub->extension_map, map, sizeof map);
    Py_INCREF(sub);
    sub->owner = self;
    sublist_append(&self->subscribers, sub);
    sublist_append(&self->layers[layer].joining, sub);
    if (self->is_video && track_request_keyframe(self, layer) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Track_set_target(TrackObject *self, PyObject *args)
{
    SubscriberObject *sub;
    PyObject *layer_object;
    int layer;
    if (!PyArg_ParseTuple(args, "O!O", &SubscriberType, &sub, &layer_object) ||
        clamp_layer(self, layer_object, &layer) < 0)
        return NULL;
    if (sub->owner != self || layer == sub->target)
        Py_RETURN_NONE;
    if (layer != sub->layer &&
        sublist_reserve(&self->layers[layer].joining, self->layers[layer].joining.count + 1) < 0)
        return NULL;
    if (sub->target != sub->layer)
        sublist_remove(&self->layers[sub->target].joining, sub);
    sub->target = layer;
    if (layer != sub->layer) {
        sublist_append(&self->layers[layer].joining, sub);
        if (track_request_keyframe(self, layer) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Track_remove_subscriber(TrackObject *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &SubscriberType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Subscriber");
        return NULL;
    }
    SubscriberObject *sub = (SubscriberObject *)arg;
    if (sub->owner != self)
        Py_RETURN_NONE;
    sublist_remove(&self->subscribers, sub);
    if (sub->layer >= 0)
        sublist_remove(&self->layers[sub->layer].receivers, sub);
    if (sub->target != sub->layer)
        sublist_remove(&self->layers[sub->target].joining, sub);
    sub->layer = -1;
    sub->owner = NULL;
    Py_DECREF(sub);
    Py_RETURN_NONE;
}

/* Wall time since the previous layer's last packet in clock ticks, at least 1,
 * modulo 2**32 (only the low 32 bits reach a timestamp). */
static uint32_t wall_ticks(double elapsed, int clock_rate)
{
    double scaled = elapsed * clock_rate;
    if (!(scaled >= 2.0) || isinf(scaled))
        return 1;  /* int() of anything below 2 is at most 1; NaN/inf: keep going */
    return (uint32_t)fmod(trunc(scaled), 4294967296.0);
}

/* Move everyone waiting for this packet onto `layer` (_switch): output numbers
 * continue where they were, output time advances by the wall time since the
 * previous layer's last packet. Capacity is reserved first, so it cannot fail
 * half way. */
static int track_switch(TrackObject *self, int layer, uint16_t sequence, uint32_t timestamp,
                        double now)
{
    Layer *stream = &self->layers[layer];
    if (sublist_reserve(&stream->receivers, stream->receivers.count + stream->joining.count) < 0)
        return -1;
    for (size_t i = 0; i < stream->joining.count; i++) {
        SubscriberObject *sub = stream->joining.items[i];
        int old = sub->layer;
        uint16_t seq_offset = (uint16_t)(sub->next_sequence - sequence);
        uint32_t ts_offset;
        if (old < 0) {
            ts_offset = sub->timestamp_base - timestamp;
        } else {
            Layer *previous = &self->layers[old];
            sublist_remove(&previous->receivers, sub);
            uint32_t ticks = wall_ticks(now - previous->last_arrival, self->clock_rate);
            uint32_t last_out = previous->last_timestamp + sub->ts_offset;
            ts_offset = last_out + ticks - timestamp;
            self->switches++;
        }
        sub->layer = layer;
        sub->seq_offset = seq_offset;
        sub->ts_offset = ts_offset;
        if (sub->segment_count == SEGMENTS_KEPT) {
            memmove(sub->segments, sub->segments + 1, (SEGMENTS_KEPT - 1) * sizeof(Segment));
            sub->segment_count--;
        }
        sub->segments[sub->segment_count++] =
            (Segment){sub->next_sequence, layer, seq_offset, ts_offset};
        stream->receivers.items[stream->receivers.count++] = sub;
    }
    stream->joining.count = 0;
    return 0;
}

/* Track.forward's work, each output packet through `emit` (see forward.h);
 * `layer` is in range. 0, or -1 with a Python error set. */
static int track_forward(TrackObject *self, const uint8_t *data, size_t length, int layer,
                         double now, native_emit_fn emit, void *context)
{
    RtpView rtp;
    if (!parse_rtp(data, length, &rtp)) {
        self->malformed++;
        return 0;
    }
    Layer *stream = &self->layers[layer];
    self->received++;
    const uint8_t *payload = data + rtp.payload_offset;
    size_t payload_length = length - rtp.payload_offset;
    int64_t extended = layer_unwrap(stream, rtp.sequence);
    if (extended < stream->highest - SKIP_WINDOW)  /* later than any padding we remember */
        return 0;
    if (rtp.padding_bit && data[length - 1] >= payload_length)  /* padding only */
        return layer_skip(stream, extended) == 0 ? 0 : -1;
    uint16_t sequence = layer_compact(stream, extended);
    stream->packets++;
    stream->octets += length - (rtp.padding_bit ? data[length - 1] : 0);
    stream->last_arrival = now;
    stream->last_timestamp = rtp.timestamp;
    if (self->is_video) {
        if (cache_store(&stream->cache[sequence % CACHE_SIZE], data, length, &rtp, sequence) < 0)
            return -1;
        if (keyframe_start(self->codec, payload, payload_length)) {
            int64_t width, height;
            int found = keyframe_size(self->codec, payload, payload_length, &width, &height);
            if (found < 0)
                return -1;
            if (found) {
                stream->width = width;
                stream->height = height;
            }
            if (stream->joining.count && track_switch(self, layer, sequence, rtp.timestamp, now) < 0)
                return -1;
        }
    } else if (stream->joining.count &&
               track_switch(self, layer, sequence, rtp.timestamp, now) < 0) {
        return -1;
    }
    if (!stream->receivers.count)
        return 0;
    const uint8_t *block = data + rtp.elements_start;
    size_t block_length = rtp.elements_end - rtp.elements_start;
    size_t shared_length = emit_elements(block, block_length, NULL, self->source_mid_id, NULL);
    size_t sent = 0;
    for (size_t i = 0; i < stream->receivers.count; i++) {
        SubscriberObject *sub = stream->receivers.items[i];
        /* Fetch ahead what the next outputs read: with many subscribers each one's
         * memory is cold by the time the packet reaches it. */
        if (i + 2 < stream->receivers.count) {
            SubscriberObject *later = stream->receivers.items[i + 2];
            __builtin_prefetch(later);
            __builtin_prefetch(&later->seq_offset);
        }
        if (i + 1 < stream->receivers.count && stream->receivers.items[i + 1]->leg != NULL)
            __builtin_prefetch(stream->receivers.items[i + 1]->leg);
        uint16_t out_sequence = (uint16_t)(sequence + sub->seq_offset);
        const int8_t *map = sub->has_map ? sub->extension_map : NULL;
        OutPacket o = {
            .marker_and_type = (uint8_t)(rtp.marker << 7 | sub->payload_type),
            .sequence = out_sequence,
            .timestamp = rtp.timestamp + sub->ts_offset,
            .ssrc = sub->ssrc,
            .padding_bit = rtp.padding_bit,
            .block = block,
            .block_length = block_length,
            .map = map,
            .skip_id = self->source_mid_id,
            .elements_length = map ? emit_elements(block, block_length, map, 0, NULL) : shared_length,
            .payload = payload,
            .payload_length = payload_length,
        };
        int emitted = emit(context, (PyObject *)sub, &o);
        if (emitted < 0)
            return -1;
        if (emitted > 0)
            continue;  /* its extension block would not fit: not sent */
        sub->next_sequence = (uint16_t)(out_sequence + 1);
        sub->packets++;
        sub->octets += payload_length;
        sent++;
    }
    self->forwarded += sent;
    return 0;
}

int native_is_track(PyObject *object)
{
    return PyObject_TypeCheck(object, &TrackType);
}

int native_track_forward(PyObject *track, const uint8_t *data, size_t length, int layer,
                         double now, native_emit_fn emit, void *context)
{
    TrackObject *self = (TrackObject *)track;
    if (layer < 0 || layer >= self->layer_count) {
        PyErr_SetString(PyExc_IndexError, "no such layer");
        return -1;
    }
    return track_forward(self, data, length, layer, now, emit, context);
}

/* Track.forward's emit: (subscriber, bytes) appended to a list. */
int native_emit_to_list(void *context, PyObject *subscriber, const OutPacket *o)
{
    PyObject *packet = build_packet((SubscriberObject *)subscriber, o);
    if (!packet)
        return PyErr_Occurred() ? -1 : 1;
    PyObject *pair = PyTuple_Pack(2, subscriber, packet);
    Py_DECREF(packet);
    if (!pair || PyList_Append((PyObject *)context, pair) < 0) {
        Py_XDECREF(pair);
        return -1;
    }
    Py_DECREF(pair);
    return 0;
}

static PyObject *Track_forward(TrackObject *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"data", "layer", "now", NULL};
    Py_buffer buffer;
    int layer = 0;
    double now = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|id", keywords, &buffer, &layer, &now))
        return NULL;
    PyObject *out = NULL;
    if (layer < 0 || layer >= self->layer_count) {
        PyErr_SetString(PyExc_IndexError, "no such layer");
        goto done;
    }
    out = PyList_New(0);
    if (out && track_forward(self, buffer.buf, (size_t)buffer.len, layer, now, native_emit_to_list, out) < 0)
        Py_CLEAR(out);
done:
    PyBuffer_Release(&buffer);
    return out;
}

/* The switch after which `sub` was sent `out_sequence` (_segment_of). */
static const Segment *segment_of(const SubscriberObject *sub, uint16_t out_sequence)
{
    uint16_t newest = (uint16_t)(sub->next_sequence - 1);
    uint16_t age = (uint16_t)(newest - out_sequence);
    for (int i = sub->segment_count - 1; i >= 0; i--)
        if (age <= (uint16_t)(newest - sub->segments[i].first_sequence))
            return &sub->segments[i];
    return NULL;
}

static PyObject *Track_retransmit(TrackObject *self, PyObject *args)
{
    SubscriberObject *sub;
    PyObject *lost;
    if (!PyArg_ParseTuple(args, "O!O", &SubscriberType, &sub, &lost))
        return NULL;
    PyObject *sequence = PySequence_Fast(lost, "lost must be a sequence of ints");
    if (!sequence)
        return NULL;
    PyObject *packets = PyList_New(0);
    if (!packets || sub->layer < 0 || !self->is_video || sub->owner != self)
        goto done;
    uint64_t seen[65536 / 64];  /* a NACK may name a number twice: answer once */
    memset(seen, 0, sizeof seen);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, i);
        if (!PyLong_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "lost must be a sequence of ints");
            Py_CLEAR(packets);
            goto done;
        }
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (number == -1 && PyErr_Occurred()) {
            Py_CLEAR(packets);
            goto done;
        }
        if (overflow || number < 0 || number > 0xFFFF)
            continue;  /* not a sequence number (a NACK carries 16 bits) */
        uint16_t out_sequence = (uint16_t)number;
        if (seen[out_sequence / 64] & (UINT64_C(1) << (out_sequence % 64)))
            continue;
        seen[out_sequence / 64] |= UINT64_C(1) << (out_sequence % 64);
        const Segment *segment = segment_of(sub, out_sequence);
        if (!segment)
            continue;  /* sent before the oldest switch remembered */
        uint16_t source = (uint16_t)(out_sequence - segment->seq_offset);
        const CacheSlot *slot = &self->layers[segment->layer].cache[source % CACHE_SIZE];
        if (!slot->valid || slot->sequence != source)
            continue;  /* too old, or never received */
        const uint8_t *block = slot->data + slot->elements_start;
        size_t block_length = slot->elements_end - slot->elements_start;
        const int8_t *map = sub->has_map ? sub->extension_map : NULL;
        uint8_t original[2];
        write16(original, out_sequence);
        OutPacket o = {
            .timestamp = slot->timestamp + segment->ts_offset,
            .padding_bit = slot->padding_bit,
            .block = block,
            .block_length = block_length,
            .map = map,
            .skip_id = self->source_mid_id,
            .elements_length = emit_elements(block, block_length, map, self->source_mid_id, NULL),
            .payload = slot->data + slot->payload_offset,
            .payload_length = slot->length - slot->payload_offset,
        };
        if (sub->rtx_ssrc) {  /* RFC 4588 §4: original sequence number first */
            o.marker_and_type = (uint8_t)(slot->marker | sub->rtx_payload_type);
            o.sequence = sub->rtx_sequence;
            o.ssrc = sub->rtx_ssrc;
            o.prefix = original;
            o.prefix_length = 2;
        } else {
            o.marker_and_type = (uint8_t)(slot->marker | sub->payload_type);
            o.sequence = out_sequence;
            o.ssrc = sub->ssrc;
        }
        PyObject *packet = build_packet(sub, &o);
        if (!packet) {
            if (PyErr_Occurred()) {
                Py_CLEAR(packets);
                goto done;
            }
            continue;
        }
        int appended = PyList_Append(packets, packet);
        Py_DECREF(packet);
        if (appended < 0) {
            Py_CLEAR(packets);
            goto done;
        }
        if (sub->rtx_ssrc)
            sub->rtx_sequence++;
        sub->retransmitted++;
    }
done:
    Py_DECREF(sequence);
    return packets;
}

/* An RTCP SR (RFC 3550 §6.4.1) with the publisher's NTP/RTP pair in the
 * subscriber's timestamp space, written into `report`. */
static void write_sender_report(const SubscriberObject *sub, uint64_t ntp, uint32_t rtp_timestamp,
                                uint8_t report[SR_LENGTH])
{
    report[0] = 0x80;
    report[1] = 200;  /* SR */
    write16(report + 2, 6);  /* length in words, less one */
    write32(report + 4, sub->ssrc);
    write32(report + 8, (uint32_t)(ntp >> 32));
    write32(report + 12, (uint32_t)ntp);
    write32(report + 16, rtp_timestamp + sub->ts_offset);
    write32(report + 20, (uint32_t)sub->packets);
    write32(report + 24, (uint32_t)sub->octets);
}

/* The SR, None before anything was sent. */
static PyObject *Track_sender_report(TrackObject *self, PyObject *args)
{
    (void)self;
    SubscriberObject *sub;
    PyObject *ntp_object, *rtp_object;
    if (!PyArg_ParseTuple(args, "O!O!O!", &SubscriberType, &sub, &PyLong_Type, &ntp_object,
                          &PyLong_Type, &rtp_object))
        return NULL;
    if (sub->layer < 0)
        Py_RETURN_NONE;
    unsigned long long ntp = PyLong_AsUnsignedLongLongMask(ntp_object);
    unsigned long long rtp_timestamp = PyLong_AsUnsignedLongLongMask(rtp_object);
    if (PyErr_Occurred())
        return NULL;
    uint8_t report[SR_LENGTH];
    write_sender_report(sub, ntp, (uint32_t)rtp_timestamp, report);
    return PyBytes_FromStringAndSize((const char *)report, sizeof report);
}

int native_track_sender_reports(PyObject *track, int layer, uint64_t ntp, uint32_t rtp_timestamp,
                                const uint8_t *cname, size_t cname_length,
                                native_report_fn emit, void *context)
{
    TrackObject *self = (TrackObject *)track;
    if (layer < 0 || layer >= self->layer_count) {
        PyErr_SetString(PyExc_IndexError, "no such layer");
        return -1;
    }
    if (cname_length > 255) {
        PyErr_SetString(PyExc_ValueError, "a CNAME has at most 255 bytes");
        return -1;
    }
    /* SDES (RFC 3550 §6.5): one chunk, SSRC then CNAME item then a null item,
     * padded to 32 bits. */
    size_t chunk = (4 + 2 + cname_length + 1 + 3) & ~(size_t)3;
    size_t length = SR_LENGTH + 4 + chunk;
    uint8_t compound[SR_LENGTH + 4 + 264];
    uint8_t *sdes = compound + SR_LENGTH;
    memset(sdes, 0, 4 + chunk);
    sdes[0] = 0x81;  /* one chunk */
    sdes[1] = 202;   /* SDES */
    write16(sdes + 2, (uint16_t)(chunk / 4));
    sdes[8] = 1;     /* CNAME */
    sdes[9] = (uint8_t)cname_length;
    memcpy(sdes + 10, cname, cname_length);
    const SubList *receivers = &self->layers[layer].receivers;
    for (size_t i = 0; i < receivers->count; i++) {
        SubscriberObject *sub = receivers->items[i];
        if (sub->layer < 0)
            continue;
        write_sender_report(sub, ntp, rtp_timestamp, compound);
        write32(sdes + 4, sub->ssrc);
        if (emit(context, (PyObject *)sub, compound, length) < 0)
            return -1;
    }
    return 0;
}

/* Track.sender_reports' emit: (subscriber, bytes) appended to a list. */
int native_report_to_list(void *context, PyObject *subscriber, const uint8_t *report, size_t length)
{
    PyObject *pair = Py_BuildValue("(Oy#)", subscriber, report, (Py_ssize_t)length);
    if (!pair || PyList_Append((PyObject *)context, pair) < 0) {
        Py_XDECREF(pair);
        return -1;
    }
    Py_DECREF(pair);
    return 0;
}

int native_report_arguments(PyObject *args, int *layer, unsigned long long *ntp,
                            unsigned long long *rtp_timestamp, Py_buffer *cname)
{
    PyObject *ntp_object, *rtp_object;
    if (!PyArg_ParseTuple(args, "iO!O!y*", layer, &PyLong_Type, &ntp_object, &PyLong_Type,
                          &rtp_object, cname))
        return -1;
    *ntp = PyLong_AsUnsignedLongLongMask(ntp_object);
    *rtp_timestamp = PyLong_AsUnsignedLongLongMask(rtp_object);
    if (PyErr_Occurred()) {
        PyBuffer_Release(cname);
        return -1;
    }
    return 0;
}

/* The SR of every receiver of a layer, each followed by an SDES CNAME: a list
 * of (subscriber, bytes). */
static PyObject *Track_sender_reports(TrackObject *self, PyObject *args)
{
    int layer;
    unsigned long long ntp, rtp_timestamp;
    Py_buffer cname;
    if (native_report_arguments(args, &layer, &ntp, &rtp_timestamp, &cname) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out && native_track_sender_reports((PyObject *)self, layer, ntp, (uint32_t)rtp_timestamp,
                                           cname.buf, (size_t)cname.len, native_report_to_list,
                                           out) < 0) {
        Py_CLEAR(out);
    }
    PyBuffer_Release(&cname);
    return out;
}

static bool layer_index(TrackObject *self, PyObject *arg, int *index)
{
    int overflow = 0;
    long long value = PyLong_Check(arg) ? PyLong_AsLongLongAndOverflow(arg, &overflow) : -1;
    if (PyErr_Occurred())
        return false;
    if (!PyLong_Check(arg) || overflow || value < 0 || value >= self->layer_count) {
        PyErr_SetString(PyExc_IndexError, "no such layer");
        return false;
    }
    *index = (int)value;
    return true;
}

static PyObject *Track_receivers(TrackObject *self, PyObject *arg)
{
    int index;
    return layer_index(self, arg, &index) ? sublist_to_python(&self->layers[index].receivers) : NULL;
}

static PyObject *Track_joining(TrackObject *self, PyObject *arg)
{
    int index;
    return layer_index(self, arg, &index) ? sublist_to_python(&self->layers[index].joining) : NULL;
}

static PyTypeObject LayerStatsType;

static PyStructSequence_Field layer_stats_fields[] = {
    {"packets", "media packets received"},
    {"octets", "their octets, header included, padding not"},
    {"last_arrival", "arrival time of the newest media packet"},
    {"last_timestamp", "its RTP timestamp"},
    {"width", "from the latest key frame, 0 before one"},
    {"height", "from the latest key frame, 0 before one"},
    {"padding", "padding-only packets dropped"},
    {NULL, NULL},
};

static PyStructSequence_Desc layer_stats_desc = {
    "relay._native.LayerStats",
    "What the layer choice needs to know of one layer (LayerStream's counters).",
    layer_stats_fields,
    7,
};

static PyObject *Track_layer_stats(TrackObject *self, PyObject *arg)
{
    int index;
    if (!layer_index(self, arg, &index))
        return NULL;
    const Layer *layer = &self->layers[index];
    PyObject *stats = PyStructSequence_New(&LayerStatsType);
    if (!stats)
        return NULL;
    PyObject *values[] = {
        get_u64(layer->packets),           get_u64(layer->octets),
        PyFloat_FromDouble(layer->last_arrival), get_u64(layer->last_timestamp),
        PyLong_FromLongLong(layer->width), PyLong_FromLongLong(layer->height),
        get_u64(layer->padding),
    };
    bool failed = false;
    for (Py_ssize_t i = 0; i < 7; i++) {
        if (!values[i])
            failed = true;
        PyStructSequence_SET_ITEM(stats, i, values[i] ? values[i] : Py_NewRef(Py_None));
    }
    if (failed)
        Py_CLEAR(stats);
    return stats;
}

#define TRACK_COUNTER(field)                                                  \
    static PyObject *Track_get_##field(TrackObject *self, void *closure)     \
    {                                                                         \
        (void)closure;                                                        \
        return get_u64(self->field);                                          \
    }
TRACK_COUNTER(received)
TRACK_COUNTER(forwarded)
TRACK_COUNTER(switches)
TRACK_COUNTER(malformed)
#undef TRACK_COUNTER

static PyObject *Track_get_codec(TrackObject *self, void *c)
{
    (void)c;
    return PyUnicode_FromString(codec_name(self->codec));
}

static PyObject *Track_get_is_video(TrackObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->is_video);
}

static PyObject *Track_get_layer_count(TrackObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->layer_count);
}

static PyObject *Track_get_subscribers(TrackObject *self, void *c)
{
    (void)c;
    return sublist_to_python(&self->subscribers);
}

static PyObject *Track_get_source_mid_id(TrackObject *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(self->source_mid_id);
}

static PyObject *Track_get_fast(TrackObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->fast);
}

static int Track_set_fast(TrackObject *self, PyObject *value, void *c)
{
    (void)c;
    return set_flag(&self->fast, value, "fast");
}

static PyObject *Track_get_tap(TrackObject *self, void *c)
{
    (void)c;
    return Py_NewRef(self->tap ? self->tap : Py_None);
}

static int Track_set_tap(TrackObject *self, PyObject *value, void *c)
{
    (void)c;
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->tap);
        return 0;
    }
    if (!PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "tap must be callable or None");
        return -1;
    }
    Py_XSETREF(self->tap, Py_NewRef(value));
    return 0;
}

PyObject *native_track_tap(PyObject *track)
{
    return ((TrackObject *)track)->tap;
}

int native_track_fast(PyObject *track, int layer)
{
    TrackObject *self = (TrackObject *)track;
    if (!self->fast || layer < 0 || layer >= self->layer_count)
        return 0;
    const Layer *stream = &self->layers[layer];
    for (size_t i = 0; i < stream->receivers.count; i++)
        if (!stream->receivers.items[i]->leg)
            return 0;
    for (size_t i = 0; i < stream->joining.count; i++)
        if (!stream->joining.items[i]->leg)
            return 0;
    return 1;
}

static PyGetSetDef Track_getset[] = {
    {"fast", (getter)Track_get_fast, (setter)Track_set_fast,
     "False: the engine hands every packet of the track up to Python", NULL},
    {"tap", (getter)Track_get_tap, (setter)Track_set_tap,
     "None, or called as tap(packet, layer) with each packet the engine forwarded itself",
     NULL},
    {"received", (getter)Track_get_received, NULL, NULL, NULL},
    {"forwarded", (getter)Track_get_forwarded, NULL, NULL, NULL},
    {"switches", (getter)Track_get_switches, NULL, NULL, NULL},
    {"malformed", (getter)Track_get_malformed, NULL, "packets not parsed as RTP", NULL},
    {"codec", (getter)Track_get_codec, NULL, NULL, NULL},
    {"is_video", (getter)Track_get_is_video, NULL, NULL, NULL},
    {"layer_count", (getter)Track_get_layer_count, NULL, NULL, NULL},
    {"subscribers", (getter)Track_get_subscribers, NULL, NULL, NULL},
    {"source_mid_id", (getter)Track_get_source_mid_id, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Track_methods[] = {
    {"set_source_extensions", (PyCFunction)Track_set_source_extensions, METH_O,
     "The header-extension ids negotiated on the publisher's leg (id -> URI)."},
    {"set_codec", (PyCFunction)Track_set_codec, METH_O,
     "The publisher sends this codec now: everyone starts again at its next key frame."},
    {"add_subscriber", (PyCFunction)(void (*)(void))Track_add_subscriber,
     METH_VARARGS | METH_KEYWORDS, "Start forwarding to a subscriber at `layer`."},
    {"set_target", (PyCFunction)Track_set_target, METH_VARARGS,
     "Move a subscriber to `layer` at that layer's next key frame."},
    {"remove_subscriber", (PyCFunction)Track_remove_subscriber, METH_O, NULL},
    {"forward", (PyCFunction)(void (*)(void))Track_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(data, layer=0, now=0.0) -> [(subscriber, packet)]; [] for what is not RTP."},
    {"retransmit", (PyCFunction)Track_retransmit, METH_VARARGS,
     "retransmit(subscriber, lost) -> packets answering a NACK."},
    {"sender_report", (PyCFunction)Track_sender_report, METH_VARARGS,
     "sender_report(subscriber, ntp, rtp_timestamp) -> SR bytes, or None."},
    {"sender_reports", (PyCFunction)Track_sender_reports, METH_VARARGS,
     "sender_reports(layer, ntp, rtp_timestamp, cname) -> [(subscriber, SR + SDES bytes)]."},
    {"receivers", (PyCFunction)Track_receivers, METH_O, "The subscribers receiving a layer."},
    {"joining", (PyCFunction)Track_joining, METH_O,
     "The subscribers waiting for a layer's next key frame."},
    {"layer_stats", (PyCFunction)Track_layer_stats, METH_O, "A layer's counters."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrackType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Track",
    .tp_doc = "Fans one published track out to its subscribers (TrackForwarder).",
    .tp_basicsize = sizeof(TrackObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Track_init,
    .tp_dealloc = (destructor)Track_dealloc,
    .tp_traverse = (traverseproc)Track_traverse,
    .tp_clear = (inquiry)Track_clear,
    .tp_methods = Track_methods,
    .tp_getset = Track_getset,
};

/* ------------------------------------------------------------------------ */
/* Module functions: the parsers alone, for tests and fuzzing.                */

static PyObject *module_parse_header(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer buffer;
    if (PyObject_GetBuffer(arg, &buffer, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    RtpView rtp;
    const uint8_t *data = buffer.buf;
    if (!parse_rtp(data, (size_t)buffer.len, &rtp)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *elements = PyList_New(0);
    const uint8_t *block = data + rtp.elements_start;
    size_t length = rtp.elements_end - rtp.elements_start;
    for (size_t i = 0; elements && i < length;) {
        if (block[i] == 0) {
            i++;
            continue;
        }
        if (block[i] >> 4 == 15)
            break;
        size_t size = (size_t)(block[i] & 0x0F) + 1;
        PyObject *element = Py_BuildValue("(iy#)", block[i] >> 4, block + i + 1, (Py_ssize_t)size);
        if (!element || PyList_Append(elements, element) < 0)
            Py_CLEAR(elements);
        Py_XDECREF(element);
        i += 1 + size;
    }
    if (elements)
        result = Py_BuildValue("(IIIkkkN)", rtp.marker, rtp.payload_type, (unsigned)rtp.sequence,
                               (unsigned long)rtp.timestamp, (unsigned long)rtp.ssrc,
                               (unsigned long)rtp.payload_offset, elements);
done:
    PyBuffer_Release(&buffer);
    return result;
}

static int codec_argument(PyObject *mime, Codec *codec)
{
    const char *name = PyUnicode_Check(mime) ? PyUnicode_AsUTF8(mime) : NULL;
    if (name && strcmp(name, "video/vp8") == 0)
        *codec = CODEC_VP8;
    else if (name && strcmp(name, "video/h264") == 0)
        *codec = CODEC_H264;
    else {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "codec must be 'video/vp8' or 'video/h264'");
        return -1;
    }
    return 0;
}

static PyObject *module_keyframe(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *mime;
    Py_buffer buffer;
    Codec codec;
    if (!PyArg_ParseTuple(args, "Oy*", &mime, &buffer))
        return NULL;
    PyObject *result = NULL;
    if (codec_argument(mime, &codec) == 0) {
        const uint8_t *p = buffer.buf;
        size_t n = (size_t)buffer.len;
        bool start = keyframe_start(codec, p, n);
        int64_t width, height;
        int found = keyframe_size(codec, p, n, &width, &height);
        if (found > 0)
            result = Py_BuildValue("(O(LL))", start ? Py_True : Py_False, (long long)width,
                                   (long long)height);
        else if (found == 0)
            result = Py_BuildValue("(OO)", start ? Py_True : Py_False, Py_None);
    }
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef module_methods[] = {
    {"parse_header", module_parse_header, METH_O,
     "parse_header(data) -> (marker, payload_type, sequence, timestamp, ssrc, payload_offset, "
     "[(id, value)]) or None: the C parser, as RtpHeader.parse."},
    {"keyframe", module_keyframe, METH_VARARGS,
     "keyframe(codec, payload) -> (starts a key frame, (width, height) or None)."},
    {NULL, NULL, 0, NULL},
};

/* Track, Subscriber, LayerStats, the parser functions and constants, into
 * relay._native (module.c). */
int native_forward_setup_module(PyObject *module)
{
    if (PyType_Ready(&SubscriberType) < 0 || PyType_Ready(&TrackType) < 0)
        return -1;
    if (!LayerStatsType.tp_name &&
        PyStructSequence_InitType2(&LayerStatsType, &layer_stats_desc) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Subscriber", (PyObject *)&SubscriberType) < 0 ||
        PyModule_AddObjectRef(module, "Track", (PyObject *)&TrackType) < 0 ||
        PyModule_AddObjectRef(module, "LayerStats", (PyObject *)&LayerStatsType) < 0 ||
        PyModule_AddFunctions(module, module_methods) < 0 ||
        PyModule_AddIntConstant(module, "CACHE_SIZE", CACHE_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_LAYERS", MAX_LAYERS) < 0 ||
        PyModule_AddIntConstant(module, "SEGMENTS_KEPT", SEGMENTS_KEPT) < 0 ||
        PyModule_AddIntConstant(module, "SKIP_WINDOW", SKIP_WINDOW) < 0)
        return -1;
    return 0;
}
