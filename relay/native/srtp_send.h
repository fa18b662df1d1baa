/* Outbound SRTP of RTP on the AEAD_AES_128_GCM and AEAD_AES_256_GCM profiles
 * (RFC 7714), done here rather than by libsrtp (docs/native.md, "SRTP").
 *
 * Every copy the relay forwards is protected once per subscriber, so this is
 * the relay's most frequent piece of cryptography. libsrtp's own work around
 * the cipher (stream lookup, key-usage limit, replay bookkeeping through
 * several layers of calls) cost as much as a third of the AES-GCM itself.
 * This does the same, in the same order, with the same results: session keys
 * derived as RFC 3711 4.3 and libsrtp derive them, the packet index estimated
 * and a sender's 1024-packet window kept per SSRC as libsrtp keeps them (a
 * repeated index is allowed, one older than the window refused), IV, AAD and
 * tag as RFC 7714 8. tests/unit/test_native_srtp.py compares the output with
 * pylibsrtp's byte for byte. SRTCP, and everything inbound, stay libsrtp's.
 */
#ifndef RELAY_NATIVE_SRTP_SEND_H
#define RELAY_NATIVE_SRTP_SEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct native_srtp_send native_srtp_send_t;

/* A sender for `key_and_salt` (master key of 16 or 32 bytes, then the 12-byte
 * master salt); NULL when the length is not one of those or memory or
 * OpenSSL fails. */
native_srtp_send_t *native_srtp_send_new(const uint8_t *key_and_salt, size_t key_and_salt_len);

void native_srtp_send_free(native_srtp_send_t *send);

/* Protect the RTP packet of *len bytes in `buf`, whose header (fixed part,
 * CSRCs, extension) is `header_len` bytes, in place: the payload encrypted
 * and the 16-byte tag appended (the caller guarantees the room). A libsrtp
 * status: 0, srtp_err_status_replay_old, or srtp_err_status_cipher_fail. */
int native_srtp_send_protect(native_srtp_send_t *send, uint8_t *buf, size_t *len,
                             size_t header_len);

#endif
