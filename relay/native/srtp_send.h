/* Outbound SRTP of RTP on the profiles the relay negotiates
 * (AES128_CM_SHA1_80, RFC 3711; AEAD_AES_128_GCM and AEAD_AES_256_GCM, RFC
 * 7714), done here rather than by libsrtp (docs/native.md, "SRTP").
 *
 * Every copy the relay forwards is protected once per subscriber, so this is
 * the relay's most frequent piece of cryptography. libsrtp's own work around
 * the cipher (stream lookup, key-usage limit, replay bookkeeping through
 * several layers of calls) was 6-8 % of the relay's CPU in a profile, against
 * 9 % for the AES-GCM itself.
 * This does the same, in the same order, with the same results: session keys
 * derived as RFC 3711 4.3 and libsrtp derive them, the packet index estimated
 * per SSRC as libsrtp estimates it (a repeated index is allowed, one older
 * than the 1024-packet window refused), IV, AAD and tag as RFC 7714 8 or RFC
 * 3711 4.1.1 and 4.2. tests/unit/test_native_srtp.py compares the output with
 * pylibsrtp's byte for byte. SRTCP, and everything inbound, stay libsrtp's.
 */
#ifndef RELAY_NATIVE_SRTP_SEND_H
#define RELAY_NATIVE_SRTP_SEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct native_srtp_send native_srtp_send_t;

/* A sender for `key_and_salt`: with `aes_cm`, AES128_CM_SHA1_80 (a 16-byte
 * master key, then the 14-byte master salt); else a GCM profile (a master key
 * of 16 or 32 bytes, then the 12-byte master salt). NULL when the length does
 * not fit or memory or OpenSSL fails. */
native_srtp_send_t *native_srtp_send_new(int aes_cm, const uint8_t *key_and_salt,
                                         size_t key_and_salt_len);

void native_srtp_send_free(native_srtp_send_t *sender);

/* Protect the RTP packet of *len bytes in `buf`, whose header (fixed part,
 * CSRCs, extension) is `header_len` bytes, in place: the payload encrypted
 * and the tag appended (16 bytes on GCM, 10 on AES-CM; the caller guarantees
 * the room). A libsrtp status: 0, srtp_err_status_replay_old,
 * srtp_err_status_alloc_fail or srtp_err_status_cipher_fail. */
int native_srtp_send_protect(native_srtp_send_t *sender, uint8_t *buf, size_t *len,
                             size_t header_len);

#endif
