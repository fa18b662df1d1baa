/* libsrtp's AES-GCM, AES-CM and HMAC-SHA1 on OpenSSL's libcrypto, in place of
 * Debian's NSS ones (crypto.c). */
#ifndef RELAY_NATIVE_CRYPTO_H
#define RELAY_NATIVE_CRYPTO_H

/* Replace libsrtp's AES-GCM and AES-CM cipher types (128 and 256 bits) and
 * its HMAC-SHA1 authentication type with ours, after libsrtp's self-test of
 * each; a libsrtp status, 0 on success. Call once, after srtp_init() and
 * before any session exists. */
int native_crypto_install(void);

#endif
