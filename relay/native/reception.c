/* Per-packet receive bookkeeping in C (reception.h), and the Python-facing
 * types the differential test drives: Reception, Missing, LevelSum, nack,
 * audio_level, level_amplitude (relay/_native.pyi). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <string.h>

#include "module.h"
#include "reception.h"

/* -- the core: no Python below until the Python-facing part ------------------ */

const double audio_level_amplitude[128] = {
    0x1.0000000000000p+0, 0x1.c8520affa0a4bp-1, 0x1.96b230bcdc434p-1, 0x1.6a77deae8ab8ap-1,
    0x1.430cd74f6d478p-1, 0x1.1feb33c1c381ep-1, 0x1.009b9cf334252p-1, 0x1.c9676c6fcaf21p-2,
    0x1.97a967f7524b2p-2, 0x1.6b54337bc3b65p-2, 0x1.43d136248490fp-2, 0x1.209a37aef4450p-2,
    0x1.0137987dd704cp-2, 0x1.ca7d767c030d5p-3, 0x1.98a13577c93c0p-3, 0x1.6c310e3769f3fp-3,
    0x1.44960c576b375p-3, 0x1.2149a5fed24dap-3, 0x1.01d3f2d9684d0p-3, 0x1.cb94298ac6d25p-4,
    0x1.999999999999ap-4, 0x1.6d0e6f32e6ea2p-4, 0x1.455b5a30b035cp-4, 0x1.21f97ef20893cp-4,
    0x1.0270ac3f8a9fap-4, 0x1.ccab8602d2697p-5, 0x1.9a9294b8536e9p-5, 0x1.6dec56bfd58e5p-5,
    0x1.46211ff90ea2ap-5, 0x1.22a9c2c9695ebp-5, 0x1.030dc4ea03a72p-5, 0x1.cdc38c4b206e6p-6,
    0x1.9b8c272fbe6dep-6, 0x1.6ecac53002712p-6, 0x1.46e75df96dc9ap-6, 0x1.235a71c5ee5ccp-6,
    0x1.03ab3d12bc2c4p-6, 0x1.cedc3ccaea15ap-7, 0x1.9c86515bda14ep-7, 0x1.6fa9bad56bdb7p-7,
    0x1.47ae147ae147bp-7, 0x1.240b8c28b8bb7p-7, 0x1.044914f3c02b0p-7, 0x1.cff597e9a752dp-8,
    0x1.9d811398ddcc0p-8, 0x1.7089380241edfp-8, 0x1.487543c6a9257p-8, 0x1.24bd1233113ebp-8,
    0x1.04e74cc73ee88p-8, 0x1.d10f9e0f0efdap-9, 0x1.9e7c6e43390b7p-9, 0x1.71693d08e6beep-9,
    0x1.493cec2631f18p-9, 0x1.256f0426685a8p-9, 0x1.0585e4c78b079p-9, 0x1.d22a4fa316facp-10,
    0x1.9f7861b7937a3p-10, 0x1.7249ca3bee77bp-10, 0x1.4a050de314dd8p-10, 0x1.2621624456490p-10,
    0x1.0624dd2f1a9fcp-10, 0x1.d345ad0df45f2p-11, 0x1.a074ee52cd119p-11, 0x1.732adfee1f757p-11,
    0x1.4acda94717d66p-11, 0x1.26d42cce9b24cp-11, 0x1.06c4363887513p-11, 0x1.d461b6b81b978p-12,
    0x1.a1721471fe40dp-12, 0x1.740c7e7272648p-12, 0x1.4b96be9c2da2cp-12, 0x1.278764071eff2p-12,
    0x1.0763f01e8e5adp-12, 0x1.d57e6d0a4090dp-13, 0x1.a26fd472780c1p-13, 0x1.74eea61c12623p-13,
    0x1.4c604e2c75fb6p-13, 0x1.283b082ff1f96p-13, 0x1.08040b1c10b13p-13, 0x1.d69bd06d56db3p-14,
    0x1.a36e2eb1c432dp-14, 0x1.75d1573e5d18ep-14, 0x1.4d2a58423da81p-14, 0x1.28ef198b4c5dap-14,
    0x1.08a4876c1311ep-14, 0x1.d7b9e14a91d46p-15, 0x1.a46d238da54ebp-15, 0x1.76b4922ce2e00p-15,
    0x1.4df4dd27fe99ep-15, 0x1.29a3985b8eb6dp-15, 0x1.09456549be1bdp-15, 0x1.d8d8a00b64cb6p-16,
    0x1.a56cb36416f83p-16, 0x1.7798573b66d9ep-16, 0x1.4ebfdd286009ap-16, 0x1.2a5884e341e83p-16,
    0x1.09e6a4f05e62bp-16, 0x1.d9f80d1983292p-17, 0x1.a66cde934de7dp-17, 0x1.787ca6bddf15cp-17,
    0x1.4f8b588e368f1p-17, 0x1.2b0ddf6517472p-17, 0x1.0a88469b64867p-17, 0x1.db1828dee095dp-18,
    0x1.a76da579b81cap-18, 0x1.7961810874a9fp-18, 0x1.50574fa4843efp-18, 0x1.2bc3a823e8b33p-18,
    0x1.0b2a4a866547ep-18, 0x1.dc38f3c5b1247p-19, 0x1.a86f0875fcf94p-19, 0x1.7a46e66f83d5fp-19,
    0x1.5123c2b678c69p-19, 0x1.2c79df62b8ae4p-19, 0x1.0bccb0ed19a15p-19, 0x1.dd5a6e3869738p-20,
    0x1.a97107e6fd6abp-20, 0x1.7b2cd7479c20ep-20, 0x1.51f0b20f71864p-20, 0x1.2d308564b277dp-20,
    0x1.0c6f7a0b5ed8dp-20, 0x1.de7c98a1bed83p-21, 0x1.aa73a42bd40a5p-21, 0x1.7c1353e58077ep-21,
    0x1.52be1dfaf9b08p-21, 0x1.2de79a6d2a218p-21, 0x1.0d12a61d3698cp-21, 0x0.0p+0,
};

void reception_init(reception_stats_t *stats, uint32_t ssrc, uint32_t clock_rate)
{
    memset(stats, 0, sizeof *stats);
    stats->ssrc = ssrc;
    stats->clock_rate = clock_rate;
    stats->base_seq = -1;
    stats->bad_seq = -1;
}

void reception_update(reception_stats_t *stats, uint16_t seq, uint32_t ts, double arrival_s)
{
    int32_t sequence = seq;
    if (stats->base_seq < 0)
        stats->base_seq = stats->max_seq = sequence;
    uint32_t delta = (uint32_t)(sequence - stats->max_seq) & 0xFFFF;
    if (delta > 0 && delta < RECEPTION_MAX_DROPOUT) {
        if (sequence < stats->max_seq)
            stats->cycles += 1 << 16;
        stats->max_seq = sequence;
    } else if (delta >= RECEPTION_MAX_DROPOUT && delta <= 0x10000 - RECEPTION_MAX_DROPOUT) {
        /* A jump either way: a restart if the next packet follows this one. */
        if (sequence != stats->bad_seq) {
            stats->bad_seq = (sequence + 1) & 0xFFFF;
            return;
        }
        stats->base_seq = stats->max_seq = sequence;
        stats->cycles = stats->received = stats->expected_prior = stats->received_prior = 0;
    }
    stats->received += 1;
    /* The same double operations in the same order as reception.py. */
    double transit = arrival_s * (double)stats->clock_rate - (double)ts;
    if (stats->has_transit) {
        double jump = fabs(transit - stats->transit);
        if (jump < (double)stats->clock_rate * 10.0) /* exact: clock_rate < 2^32 */
            stats->jitter += (jump - stats->jitter) / 16;
    }
    stats->transit = transit;
    stats->has_transit = true;
}

void reception_sender_report(reception_stats_t *stats, uint64_t ntp, double arrival_s)
{
    stats->last_sr = (uint32_t)(ntp >> 16);
    stats->last_sr_arrival = arrival_s;
}

/* int(x) & 0xFFFFFFFF as Python computes it, for any finite double (fmod is
 * exact); 0 for inf and nan, where Python's int() raises. */
static uint32_t python_int_low32(double x)
{
    if (!isfinite(x))
        return 0;
    double r = fmod(trunc(x), 4294967296.0);
    if (r < 0)
        r += 4294967296.0;
    return (uint32_t)r;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q -= 1;
    return q;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void reception_report(reception_stats_t *stats, double now_s,
                      uint8_t out[RECEPTION_REPORT_BLOCK_SIZE])
{
    int64_t extended_max = stats->cycles + stats->max_seq;
    int64_t expected = extended_max - stats->base_seq + 1;
    int64_t expected_interval = expected - stats->expected_prior;
    int64_t received_interval = stats->received - stats->received_prior;
    stats->expected_prior = expected;
    stats->received_prior = stats->received;
    int64_t lost_interval = expected_interval - received_interval;
    int64_t fraction =
        expected_interval > 0 ? floor_div(lost_interval * 256, expected_interval) : 0;
    if (fraction > 255)
        fraction = 255;
    if (fraction < 0)
        fraction = 0;
    uint32_t delay =
        stats->last_sr ? python_int_low32((now_s - stats->last_sr_arrival) * 65536.0) : 0;
    int64_t cumulative = expected - stats->received;
    if (cumulative > 0x7FFFFF)
        cumulative = 0x7FFFFF;
    if (cumulative < -0x800000)
        cumulative = -0x800000;
    uint32_t lost = (uint32_t)cumulative & 0xFFFFFF;
    put32(out, stats->ssrc);
    out[4] = (uint8_t)fraction;
    out[5] = (uint8_t)(lost >> 16);
    put16(out + 6, lost & 0xFFFF);
    put32(out + 8, (uint32_t)extended_max);
    put32(out + 12, python_int_low32(stats->jitter));
    put32(out + 16, stats->last_sr);
    put32(out + 20, delay);
}

/* -- MissingPackets ----------------------------------------------------------- */

static bool present(const missing_t *m, uint16_t seq)
{
    return m->present[seq >> 6] >> (seq & 63) & 1;
}

static void set_present(missing_t *m, uint16_t seq, bool on)
{
    if (on)
        m->present[seq >> 6] |= UINT64_C(1) << (seq & 63);
    else
        m->present[seq >> 6] &= ~(UINT64_C(1) << (seq & 63));
}

static size_t find(const missing_t *m, uint16_t seq)
{
    for (size_t i = 0; i < m->count; i++)
        if (m->entries[i].seq == seq)
            return i;
    return m->count;
}

void missing_init(missing_t *m)
{
    memset(m, 0, sizeof *m);
    m->highest = -1;
}

/* dict.pop(seq, None) */
static void missing_remove(missing_t *m, uint16_t seq)
{
    if (!present(m, seq))
        return;
    size_t i = find(m, seq);
    memmove(&m->entries[i], &m->entries[i + 1], (m->count - i - 1) * sizeof m->entries[0]);
    m->count--;
    set_present(m, seq, false);
}

/* dict[seq] = (0.0, 0): an existing entry keeps its place. */
static void missing_reset(missing_t *m, uint16_t seq)
{
    missing_entry_t *entry;
    if (present(m, seq)) {
        entry = &m->entries[find(m, seq)];
    } else {
        entry = &m->entries[m->count++];
        entry->seq = seq;
        set_present(m, seq, true);
    }
    entry->when = 0.0;
    entry->tries = 0;
}

static void missing_drop_first(missing_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        set_present(m, m->entries[i].seq, false);
    memmove(&m->entries[0], &m->entries[n], (m->count - n) * sizeof m->entries[0]);
    m->count -= n;
}

bool missing_update(missing_t *m, uint16_t seq)
{
    if (m->highest < 0) {
        m->highest = seq;
        return false;
    }
    uint32_t gap = (uint32_t)((int32_t)seq - m->highest) & 0xFFFF;
    if (gap == 0 || gap >= 0x8000) { /* duplicate, or late / retransmitted packet */
        missing_remove(m, seq);
        return false;
    }
    m->highest = seq;
    if (gap == 1)
        return false;
    if (gap > RECEPTION_MAX_MISSING) {
        missing_drop_first(m, m->count);
        return false;
    }
    /* At most MAX_MISSING before, MAX_MISSING - 1 more: entries has room. */
    for (uint32_t lost = 1; lost < gap; lost++)
        missing_reset(m, (uint16_t)(seq - gap + lost));
    if (m->count > RECEPTION_MAX_MISSING)
        missing_drop_first(m, m->count - RECEPTION_MAX_MISSING);
    return true;
}

size_t missing_due(missing_t *m, double now_s, uint16_t *out, size_t cap)
{
    size_t wanted = 0, kept = 0;
    for (size_t i = 0; i < m->count; i++) {
        missing_entry_t entry = m->entries[i];
        if (wanted < cap && !(entry.when > now_s)) {
            if (entry.tries >= RECEPTION_NACK_MAX_TRIES) {
                set_present(m, entry.seq, false);
                continue;
            }
            entry.when = now_s + RECEPTION_NACK_RETRY_S;
            entry.tries += 1;
            out[wanted++] = entry.seq;
        }
        m->entries[kept++] = entry;
    }
    m->count = kept;
    return wanted;
}

/* -- generic NACK --------------------------------------------------------------- */

size_t nack_build(uint32_t sender_ssrc, uint32_t media_ssrc, const uint16_t *lost, size_t n,
                  uint8_t *out, size_t cap)
{
    /* rtcp.nack: sorted(set(lost)); each smallest left is a PID, and the next 16
     * numbers above it (no wrap: they are sorted numerically) its bitmask. */
    uint64_t bits[65536 / 64];
    memset(bits, 0, sizeof bits);
    for (size_t i = 0; i < n; i++)
        bits[lost[i] >> 6] |= UINT64_C(1) << (lost[i] & 63);
    if (cap < 12)
        return 0;
    size_t length = 12;
    uint32_t seq = 0;
    while (seq < 65536) {
        uint64_t word = bits[seq >> 6] >> (seq & 63);
        if (word == 0) {
            seq = (seq | 63) + 1;
            continue;
        }
        seq += (uint32_t)__builtin_ctzll(word);
        uint32_t pid = seq, bitmask = 0;
        for (uint32_t distance = 1; distance <= 16 && pid + distance < 65536; distance++) {
            uint32_t s = pid + distance;
            if (bits[s >> 6] >> (s & 63) & 1) {
                bitmask |= 1u << (distance - 1);
                bits[s >> 6] &= ~(UINT64_C(1) << (s & 63));
            }
        }
        if (length + 4 > cap)
            return 0;
        put16(out + length, pid);
        put16(out + length + 2, bitmask);
        length += 4;
        seq = pid + 1;
    }
    out[0] = 0x80 | 1; /* FMT generic NACK */
    out[1] = 205;      /* RTPFB */
    put16(out + 2, (uint32_t)((length - 4) / 4));
    put32(out + 4, sender_ssrc);
    put32(out + 8, media_ssrc);
    return length;
}

/* -- audio level ------------------------------------------------------------------ */

bool audio_level_find(const uint8_t *rtp, size_t len, int ext_id, int *level)
{
    /* RtpHeader.parse's refusals, then the first element named ext_id. */
    if (len < 12 || rtp[0] >> 6 != 2)
        return false;
    size_t offset = 12 + 4 * (size_t)(rtp[0] & 0x0F);
    bool found = false;
    int value = 0;
    if (rtp[0] & 0x10) {
        if (offset + 4 > len)
            return false;
        uint32_t profile = (uint32_t)rtp[offset] << 8 | rtp[offset + 1];
        size_t words = (size_t)rtp[offset + 2] << 8 | rtp[offset + 3];
        size_t start = offset + 4, end = start + 4 * words;
        if (end > len)
            return false;
        if (profile == 0xBEDE) {
            size_t i = start;
            while (i < end) {
                uint8_t byte = rtp[i];
                if (byte == 0) {
                    i++;
                    continue;
                }
                int id = byte >> 4;
                size_t size = (size_t)(byte & 0x0F) + 1;
                if (id == 15)
                    break;
                if (i + 1 + size > end)
                    return false; /* a truncated element refuses the whole packet */
                if (!found && id == ext_id) {
                    found = true;
                    value = rtp[i + 1];
                }
                i += 1 + size;
            }
        }
        offset = end;
    }
    size_t stop = len;
    if (rtp[0] & 0x20) {
        uint8_t padding = rtp[len - 1];
        if (padding == 0 || padding > len)
            return false;
        stop = len - padding;
    }
    if (offset > stop)
        return false;
    if (found)
        *level = value;
    return found;
}

/* -- Python-facing: what tests/unit/test_native_reception.py drives --------------- */


typedef struct {
    PyObject_HEAD
    reception_stats_t stats;
} ReceptionObject;

static int Reception_init(ReceptionObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ssrc", "clock_rate", NULL};
    PyObject *ssrc_arg, *rate_arg;
    uint64_t ssrc, rate;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &ssrc_arg, &rate_arg) ||
        native_to_bounded(ssrc_arg, UINT32_MAX, "ssrc", &ssrc) < 0 ||
        native_to_bounded(rate_arg, UINT32_MAX, "clock_rate", &rate) < 0)
        return -1;
    reception_init(&self->stats, (uint32_t)ssrc, (uint32_t)rate);
    return 0;
}

static PyObject *Reception_update(ReceptionObject *self, PyObject *args)
{
    PyObject *seq_arg, *ts_arg;
    double arrival;
    uint64_t seq, ts;
    if (!PyArg_ParseTuple(args, "OOd:update", &seq_arg, &ts_arg, &arrival) ||
        native_to_bounded(seq_arg, 0xFFFF, "sequence", &seq) < 0 ||
        native_to_bounded(ts_arg, UINT32_MAX, "timestamp", &ts) < 0)
        return NULL;
    reception_update(&self->stats, (uint16_t)seq, (uint32_t)ts, arrival);
    Py_RETURN_NONE;
}

static PyObject *Reception_sender_report(ReceptionObject *self, PyObject *args)
{
    PyObject *ntp_arg;
    double arrival;
    uint64_t ntp;
    if (!PyArg_ParseTuple(args, "Od:sender_report", &ntp_arg, &arrival) ||
        native_to_bounded(ntp_arg, UINT64_MAX, "ntp", &ntp) < 0)
        return NULL;
    reception_sender_report(&self->stats, ntp, arrival);
    Py_RETURN_NONE;
}

static PyObject *Reception_report(ReceptionObject *self, PyObject *args)
{
    double now;
    uint8_t block[RECEPTION_REPORT_BLOCK_SIZE];
    if (!PyArg_ParseTuple(args, "d:report", &now))
        return NULL;
    reception_report(&self->stats, now, block);
    return PyBytes_FromStringAndSize((const char *)block, sizeof block);
}

static PyObject *Reception_get_jitter(ReceptionObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->stats.jitter);
}

static PyObject *Reception_get_received(ReceptionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->stats.received);
}

static PyObject *Reception_get_ssrc(ReceptionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(self->stats.ssrc);
}

static PyMethodDef Reception_methods[] = {
    {"update", (PyCFunction)Reception_update, METH_VARARGS,
     "update(sequence, timestamp, arrival_s): account one RTP packet."},
    {"sender_report", (PyCFunction)Reception_sender_report, METH_VARARGS,
     "sender_report(ntp, arrival_s): note the sender's last SR."},
    {"report", (PyCFunction)Reception_report, METH_VARARGS,
     "report(now_s) -> bytes: the 24-byte report block; starts a new interval."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reception_getset[] = {
    {"jitter", (getter)Reception_get_jitter, NULL, "interarrival jitter, timestamp units", NULL},
    {"received", (getter)Reception_get_received, NULL, "packets received", NULL},
    {"ssrc", (getter)Reception_get_ssrc, NULL, "the SSRC reported on", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReceptionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Reception",
    .tp_doc = "Receive statistics of one SSRC (reception.ReceptionStats).",
    .tp_basicsize = sizeof(ReceptionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reception_init,
    .tp_methods = Reception_methods,
    .tp_getset = Reception_getset,
};

typedef struct {
    PyObject_HEAD
    missing_t missing;
} MissingObject;

static int Missing_init(MissingObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    missing_init(&self->missing);
    return 0;
}

static PyObject *Missing_update(MissingObject *self, PyObject *arg)
{
    uint64_t seq;
    if (native_to_bounded(arg, 0xFFFF, "sequence", &seq) < 0)
        return NULL;
    return PyBool_FromLong(missing_update(&self->missing, (uint16_t)seq));
}

static PyObject *Missing_due(MissingObject *self, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    uint16_t lost[2 * RECEPTION_MAX_MISSING];
    size_t n = missing_due(&self->missing, now, lost, 2 * RECEPTION_MAX_MISSING);
    PyObject *result = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; result && i < n; i++) {
        PyObject *item = PyLong_FromLong(lost[i]);
        if (!item) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
    }
    return result;
}

static PyObject *Missing_items(MissingObject *self, PyObject *Py_UNUSED(ignored))
{
    const missing_t *m = &self->missing;
    PyObject *result = PyList_New((Py_ssize_t)m->count);
    for (size_t i = 0; result && i < m->count; i++) {
        const missing_entry_t *e = &m->entries[i];
        PyObject *item = Py_BuildValue("(i(di))", e->seq, e->when, e->tries);
        if (!item) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
    }
    return result;
}

static Py_ssize_t Missing_len(MissingObject *self)
{
    return (Py_ssize_t)missing_count(&self->missing);
}

static PyMethodDef Missing_methods[] = {
    {"update", (PyCFunction)Missing_update, METH_O,
     "update(sequence) -> bool: record a packet; True when it opened a gap to NACK now."},
    {"due", (PyCFunction)Missing_due, METH_O,
     "due(now_s) -> list[int]: sequence numbers to NACK now."},
    {"items", (PyCFunction)Missing_items, METH_NOARGS,
     "items() -> [(sequence, (next NACK time, tries))], as MissingPackets.missing.items()."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Missing_as_sequence = {
    .sq_length = (lenfunc)Missing_len,
};

static PyTypeObject MissingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Missing",
    .tp_doc = "Sequence numbers not received yet, and when to NACK them (MissingPackets).",
    .tp_basicsize = sizeof(MissingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Missing_init,
    .tp_methods = Missing_methods,
    .tp_as_sequence = &Missing_as_sequence,
};

typedef struct {
    PyObject_HEAD
    level_sum_t sum;
} LevelSumObject;

static int level_argument(PyObject *arg, int *level)
{
    if (!PyLong_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "level must be an int");
        return -1;
    }
    /* level & 0x7F of any int, as Python (two's complement) computes it. */
    unsigned long long bits = PyLong_AsUnsignedLongLongMask(arg);
    if (bits == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *level = (int)(bits & 0x7F);
    return 0;
}

static int LevelSum_init(LevelSumObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    self->sum.total = 0.0;
    self->sum.count = 0;
    return 0;
}

static PyObject *LevelSum_add(LevelSumObject *self, PyObject *arg)
{
    int level;
    if (level_argument(arg, &level) < 0)
        return NULL;
    level_sum_add(&self->sum, level);
    Py_RETURN_NONE;
}

static PyObject *LevelSum_observe(LevelSumObject *self, PyObject *args)
{
    Py_buffer buffer;
    int ext_id, level;
    if (!PyArg_ParseTuple(args, "y*i:observe", &buffer, &ext_id))
        return NULL;
    bool found = audio_level_find(buffer.buf, (size_t)buffer.len, ext_id, &level);
    PyBuffer_Release(&buffer);
    if (found)
        level_sum_add(&self->sum, level);
    return PyBool_FromLong(found);
}

static PyObject *LevelSum_clear(LevelSumObject *self, PyObject *Py_UNUSED(ignored))
{
    self->sum.total = 0.0;
    self->sum.count = 0;
    Py_RETURN_NONE;
}

static PyObject *LevelSum_get_total(LevelSumObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->sum.total);
}

static PyObject *LevelSum_get_count(LevelSumObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->sum.count);
}

static PyMethodDef LevelSum_methods[] = {
    {"add", (PyCFunction)LevelSum_add, METH_O,
     "add(level): account one audio-level byte (the V flag ignored)."},
    {"observe", (PyCFunction)LevelSum_observe, METH_VARARGS,
     "observe(rtp, ext_id) -> bool: account the packet's audio level, if it has one."},
    {"clear", (PyCFunction)LevelSum_clear, METH_NOARGS, "clear(): start a new interval."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef LevelSum_getset[] = {
    {"total", (getter)LevelSum_get_total, NULL, "sum of linear amplitudes", NULL},
    {"count", (getter)LevelSum_get_count, NULL, "packets summed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LevelSumType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.LevelSum",
    .tp_doc = "One interval's audio levels (VoiceLevel.total and .count).",
    .tp_basicsize = sizeof(LevelSumObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LevelSum_init,
    .tp_methods = LevelSum_methods,
    .tp_getset = LevelSum_getset,
};

static PyObject *native_nack(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *sender_arg, *media_arg, *lost_arg;
    uint64_t sender, media;
    if (!PyArg_ParseTuple(args, "OOO:nack", &sender_arg, &media_arg, &lost_arg) ||
        native_to_bounded(sender_arg, UINT32_MAX, "sender_ssrc", &sender) < 0 ||
        native_to_bounded(media_arg, UINT32_MAX, "media_ssrc", &media) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(lost_arg, "lost must be iterable");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint16_t *lost = PyMem_Malloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
    PyObject *result = NULL;
    if (!lost) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t value;
        if (native_to_bounded(PySequence_Fast_GET_ITEM(seq, i), 0xFFFF, "sequence", &value) < 0)
            goto done;
        lost[i] = (uint16_t)value;
    }
    size_t cap = 12 + 4 * (size_t)(n < 65536 ? n : 65536);
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (!result)
        goto done;
    size_t length = nack_build((uint32_t)sender, (uint32_t)media, lost, (size_t)n,
                               (uint8_t *)PyBytes_AS_STRING(result), cap);
    if (length == 0) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_RuntimeError, "NACK does not fit");
        goto done;
    }
    _PyBytes_Resize(&result, (Py_ssize_t)length);
done:
    PyMem_Free(lost);
    Py_DECREF(seq);
    return result;
}

static PyObject *native_audio_level(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer buffer;
    int ext_id, level;
    if (!PyArg_ParseTuple(args, "y*i:audio_level", &buffer, &ext_id))
        return NULL;
    bool found = audio_level_find(buffer.buf, (size_t)buffer.len, ext_id, &level);
    PyBuffer_Release(&buffer);
    if (!found)
        Py_RETURN_NONE;
    return PyLong_FromLong(level);
}

static PyObject *native_level_amplitude(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int level;
    if (level_argument(arg, &level) < 0)
        return NULL;
    return PyFloat_FromDouble(audio_level_amplitude[level]);
}

static PyMethodDef reception_functions[] = {
    {"nack", native_nack, METH_VARARGS,
     "nack(sender_ssrc, media_ssrc, lost) -> bytes: a generic NACK (rtcp.nack)."},
    {"audio_level", native_audio_level, METH_VARARGS,
     "audio_level(rtp, ext_id) -> int | None: the audio-level byte of element ext_id."},
    {"level_amplitude", native_level_amplitude, METH_O,
     "level_amplitude(level) -> float: linear amplitude of level & 0x7F."},
    {NULL, NULL, 0, NULL},
};

int native_reception_setup_module(PyObject *module)
{
    if (PyType_Ready(&ReceptionType) < 0 || PyType_Ready(&MissingType) < 0 ||
        PyType_Ready(&LevelSumType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Reception", (PyObject *)&ReceptionType) < 0 ||
        PyModule_AddObjectRef(module, "Missing", (PyObject *)&MissingType) < 0 ||
        PyModule_AddObjectRef(module, "LevelSum", (PyObject *)&LevelSumType) < 0 ||
        PyModule_AddFunctions(module, reception_functions) < 0)
        return -1;
    return 0;
}
