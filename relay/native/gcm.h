/* AES-GCM for libsrtp on OpenSSL's libcrypto, in place of Debian's NSS one
 * (gcm.c). */
#ifndef RELAY_NATIVE_GCM_H
#define RELAY_NATIVE_GCM_H

/* Replace libsrtp's AES-128-GCM and AES-256-GCM cipher types with ours, after
 * libsrtp's self-test of each; a libsrtp status, 0 on success. Call once,
 * after srtp_init() and before any session exists. */
int native_gcm_install(void);

#endif
