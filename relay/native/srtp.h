/* SRTP for one participant leg, on libsrtp2 (docs/native.md, step 2), except
 * outbound RTP, which srtp_send.c protects (docs/native.md, "SRTP").
 *
 * A native_srtp_t is one direction of a leg: outbound (protect) or inbound
 * (unprotect), with the policy aiortc builds in RTCDtlsTransport._setup_srtp:
 * any SSRC, replay window 1024, repeated transmissions allowed. The engine
 * calls these functions on its own buffers, without Python objects; the
 * Python type relay._native_srtp.Session wraps the same functions.
 *
 * Every function returns a libsrtp status: 0 (srtp_err_status_ok) on success.
 * Lengths the functions refuse themselves (a packet too short to hold its
 * header, too long, or a buffer too small) return srtp_err_status_bad_param
 * and leave the buffer untouched. Not thread-safe: one event loop owns it.
 */
#ifndef RELAY_NATIVE_SRTP_H
#define RELAY_NATIVE_SRTP_H

#include <stddef.h>
#include <stdint.h>

#include <srtp2/srtp.h>

#include "srtp_send.h"

/* The profiles aiortc negotiates (libsrtp's srtp_profile_t numbers). */
#define NATIVE_SRTP_AES128_CM_SHA1_80 1
#define NATIVE_SRTP_AEAD_AES_128_GCM 7
#define NATIVE_SRTP_AEAD_AES_256_GCM 8

/* The largest plaintext RTP or RTCP packet protected, and so the largest
 * SRTP/SRTCP packet unprotected is this plus the profile's trailer. */
#define NATIVE_SRTP_MAX_PACKET 1500

/* What libsrtp may write past the end of a packet it protects: tag, MKI and,
 * for SRTCP, the 4-byte index (srtp.h documents SRTP_MAX_TRAILER_LEN + 4).
 * A protect buffer's capacity must be at least its length plus this. */
#define NATIVE_SRTP_PROTECT_HEADROOM (SRTP_MAX_TRAILER_LEN + 4)

/* A buffer that holds any packet these functions accept or produce. */
#define NATIVE_SRTP_BUFFER_SIZE (NATIVE_SRTP_MAX_PACKET + NATIVE_SRTP_PROTECT_HEADROOM)

typedef struct native_srtp {
    srtp_t session;          /* NULL until opened and after close */
    int profile;             /* NATIVE_SRTP_* */
    int outbound;            /* 1: protect only; 0: unprotect only */
    size_t rtp_trailer;      /* bytes protect adds to RTP (the tag) */
    size_t rtcp_trailer;     /* bytes protect adds to RTCP (E flag + index, tag) */
    native_srtp_send_t *sender; /* outbound RTP: srtp_send.h, not libsrtp */
} native_srtp_t;

/* srtp_init() for the process; safe to call more than once. */
int native_srtp_init(void);

/* Master key + salt length of a supported profile, 0 if it is not one. */
size_t native_srtp_key_and_salt_length(int profile);

/* Open `s` for `profile` with `key_and_salt` (exactly
 * native_srtp_key_and_salt_length(profile) bytes). On failure `s` is left
 * closed. The key is copied by libsrtp; the caller may wipe its copy. */
int native_srtp_open(native_srtp_t *s, int profile, const uint8_t *key_and_salt,
                     size_t key_and_salt_len, int outbound);

/* Free the libsrtp session; `s` may be closed already. */
void native_srtp_close(native_srtp_t *s);

/* Protect the RTP (rtcp = 0) or RTCP (rtcp = 1) packet of *len bytes in
 * `buf`, in place; on success *len is the SRTP/SRTCP length. Needs
 * capacity >= *len + NATIVE_SRTP_PROTECT_HEADROOM and *len <=
 * NATIVE_SRTP_MAX_PACKET. Only on an outbound session. */
int native_srtp_protect(native_srtp_t *s, uint8_t *buf, size_t *len, size_t capacity, int rtcp);

/* Verify and decrypt the SRTP (rtcp = 0) or SRTCP (rtcp = 1) packet of *len
 * bytes in `buf`, in place; on success *len is the plaintext length (never
 * more than the input). Only on an inbound session. */
int native_srtp_unprotect(native_srtp_t *s, uint8_t *buf, size_t *len, int rtcp);

#endif
