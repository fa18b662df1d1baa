/* Per-packet receive bookkeeping of one incoming stream, in C (docs/native.md,
 * step 4): reception statistics and the report block built from them
 * (relay/reception.py ReceptionStats, relay/rtcp.py report_block), the gaps to
 * NACK and when (MissingPackets), the generic NACK itself (rtcp.nack), and the
 * RFC 6464 audio level of a packet (relay/speaker.py VoiceLevel). Each does
 * number for number what the Python reference does; tests/unit/
 * test_native_reception.py checks it. No Python, no allocation. */
#ifndef RELAY_NATIVE_RECEPTION_H
#define RELAY_NATIVE_RECEPTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECEPTION_MAX_DROPOUT 3000
#define RECEPTION_MAX_MISSING 256
#define RECEPTION_NACK_RETRY_S 0.1
#define RECEPTION_NACK_MAX_TRIES 3
#define RECEPTION_REPORT_BLOCK_SIZE 24

/* ReceptionStats: RFC 3550 A.1 sequence tracking, A.3 loss, A.8 jitter. */
typedef struct {
    uint32_t ssrc;
    uint32_t clock_rate;
    int32_t base_seq; /* -1 before the first packet */
    int32_t bad_seq;  /* -1: none */
    int32_t max_seq;
    int64_t cycles;
    int64_t received;
    int64_t expected_prior;
    int64_t received_prior;
    double jitter;
    double transit;
    bool has_transit;
    uint32_t last_sr; /* middle 32 bits of the last SR's NTP time, 0 if none */
    double last_sr_arrival;
} reception_stats_t;

void reception_init(reception_stats_t *stats, uint32_t ssrc, uint32_t clock_rate);
void reception_update(reception_stats_t *stats, uint16_t seq, uint32_t ts, double arrival_s);
void reception_sender_report(reception_stats_t *stats, uint64_t ntp, double arrival_s);
/* Writes the 24-byte RFC 3550 report block and starts a new report interval.
 * A non-finite delay since the last SR (where Python's int() would raise)
 * is written as 0. */
void reception_report(reception_stats_t *stats, double now_s,
                      uint8_t out[RECEPTION_REPORT_BLOCK_SIZE]);

/* MissingPackets: sequence numbers not received yet, in the order Python's dict
 * iterates them (insertion order; an existing entry keeps its place when its
 * value changes). At most RECEPTION_MAX_MISSING between calls. */
typedef struct {
    double when;   /* next NACK time */
    uint16_t seq;
    uint8_t tries; /* NACKs sent so far */
} missing_entry_t;

typedef struct {
    int32_t highest; /* -1 before the first packet */
    size_t count;
    missing_entry_t entries[2 * RECEPTION_MAX_MISSING];
    uint64_t present[65536 / 64]; /* bit per sequence number: in entries */
} missing_t;

void missing_init(missing_t *missing);
/* Records a packet; true when it opened a new gap worth a NACK now. */
bool missing_update(missing_t *missing, uint16_t seq);
/* Writes the sequence numbers to NACK now into out and returns how many. With
 * cap >= RECEPTION_MAX_MISSING all are written; otherwise the entries after the
 * cap-th one due are left untouched (asked for on a later call). */
size_t missing_due(missing_t *missing, double now_s, uint16_t *out, size_t cap);
static inline size_t missing_count(const missing_t *missing) { return missing->count; }

/* The RTCP generic NACK (RFC 4585 §6.2.1) naming lost[0..n), as rtcp.nack builds
 * it. Returns its length, or 0 when it does not fit in cap bytes (12 + 4 * n
 * always suffices). */
size_t nack_build(uint32_t sender_ssrc, uint32_t media_ssrc, const uint16_t *lost, size_t n,
                  uint8_t *out, size_t cap);

/* The first byte of one-byte-header extension element ext_id in an RTP packet,
 * as VoiceLevel.observe sees it: false when RtpHeader.parse would refuse the
 * packet or no such element is there. */
bool audio_level_find(const uint8_t *rtp, size_t len, int ext_id, int *level);

/* speaker._AMPLITUDE: linear amplitude of each RFC 6464 level, 127 silence. */
extern const double audio_level_amplitude[128];

/* This interval's sum of linear amplitudes (VoiceLevel.total, .count). */
typedef struct {
    double total;
    uint64_t count;
} level_sum_t;

static inline void level_sum_add(level_sum_t *sum, int level)
{
    sum->total += audio_level_amplitude[level & 0x7F];
    sum->count += 1;
}

#endif
