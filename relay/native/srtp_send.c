/* Outbound SRTP of RTP; see srtp_send.h. */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <srtp2/srtp.h>

#include "srtp_send.h"

#define GCM_SALT_LEN 12 /* RFC 7714 8.1: the session salt */
#define GCM_TAG_LEN 16  /* AEAD_AES_128_GCM and AEAD_AES_256_GCM */
#define CM_SALT_LEN 14  /* RFC 3711 4.1.1 */
#define CM_AUTH_KEY_LEN 20
#define CM_TAG_LEN 10   /* HMAC-SHA1 truncated to 80 bits */
#define SHA1_LEN 20
#define WINDOW 1024   /* packets, as the relay's policy (srtp.c) */
#define SEQ_MEDIAN 0x8000
#define SEQ_MAX 0x10000

/* One SSRC's packet index: the highest sent (rollover counter << 16 |
 * sequence number), as libsrtp's srtp_rdbx_t keeps it. libsrtp also keeps a
 * bitmap of the window, but a sender that may repeat an index (the relay's
 * policy, srtp.c) never reads it: only "older than the window" refuses. */
typedef struct {
    uint32_t ssrc;
    uint64_t index;
} send_stream_t;

struct native_srtp_send {
    int aes_cm;          /* AES128_CM_SHA1_80; else a GCM profile */
    EVP_CIPHER_CTX *ctx; /* the session key set, restarted per packet */
    EVP_MAC_CTX *mac;    /* AES-CM: HMAC-SHA1 with the session auth key */
    uint8_t salt[CM_SALT_LEN]; /* GCM uses the first 12 */
    send_stream_t *streams;
    size_t count, size;
    size_t last; /* the stream of the previous packet, looked at first */
};

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n--) {
        *v++ = 0;
    }
}

/* RFC 3711 4.3.1 with libsrtp's AES-CM PRF: `out_len` bytes of the keystream
 * of `master_key` from the counter block (master salt of `salt_len` bytes,
 * padded to 14 with zeros, its byte 7 XOR `label`) || 0x0000. */
static int derive(const EVP_CIPHER *ctr, const uint8_t *master_key, const uint8_t *master_salt,
                  size_t salt_len, uint8_t label, uint8_t *out, int out_len)
{
    uint8_t counter[16] = {0};
    memcpy(counter, master_salt, salt_len);
    counter[7] ^= label;
    uint8_t zeros[32] = {0};
    int n = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int ok = ctx != NULL && out_len <= (int)sizeof zeros &&
             EVP_EncryptInit_ex(ctx, ctr, NULL, master_key, counter) &&
             EVP_EncryptUpdate(ctx, out, &n, zeros, out_len) && n == out_len;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

native_srtp_send_t *native_srtp_send_new(int aes_cm, const uint8_t *key_and_salt,
                                         size_t key_and_salt_len)
{
    size_t salt_len = aes_cm ? CM_SALT_LEN : GCM_SALT_LEN;
    int key_len = (int)key_and_salt_len - (int)salt_len;
    if (aes_cm ? key_len != 16 : key_len != 16 && key_len != 32) {
        return NULL;
    }
    const EVP_CIPHER *ctr = key_len == 16 ? EVP_aes_128_ctr() : EVP_aes_256_ctr();
    const EVP_CIPHER *gcm = key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    native_srtp_send_t *sender = calloc(1, sizeof *sender);
    if (sender == NULL) {
        return NULL;
    }
    sender->aes_cm = aes_cm;
    uint8_t session_key[32], auth_key[CM_AUTH_KEY_LEN];
    const uint8_t *master_salt = key_and_salt + key_len;
    sender->ctx = EVP_CIPHER_CTX_new();
    int ok = sender->ctx != NULL &&
             derive(ctr, key_and_salt, master_salt, salt_len, 0x00, session_key, key_len) &&
             derive(ctr, key_and_salt, master_salt, salt_len, 0x02, sender->salt, (int)salt_len) &&
             EVP_EncryptInit_ex(sender->ctx, aes_cm ? ctr : gcm, NULL, session_key, NULL);
    if (ok && aes_cm) {
        char digest[] = "SHA1";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end(),
        };
        EVP_MAC *hmac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
        sender->mac = hmac != NULL ? EVP_MAC_CTX_new(hmac) : NULL;
        EVP_MAC_free(hmac); /* the context keeps its own reference */
        ok = sender->mac != NULL &&
             derive(ctr, key_and_salt, master_salt, salt_len, 0x01, auth_key, CM_AUTH_KEY_LEN) &&
             EVP_MAC_init(sender->mac, auth_key, CM_AUTH_KEY_LEN, params);
    }
    wipe(session_key, sizeof session_key);
    wipe(auth_key, sizeof auth_key);
    if (!ok) {
        native_srtp_send_free(sender);
        return NULL;
    }
    return sender;
}

void native_srtp_send_free(native_srtp_send_t *sender)
{
    if (sender == NULL) {
        return;
    }
    EVP_CIPHER_CTX_free(sender->ctx); /* wipes the key schedule */
    EVP_MAC_CTX_free(sender->mac);    /* and the auth key */
    wipe(sender->salt, sizeof sender->salt);
    free(sender->streams);
    free(sender);
}

/* The stream of `ssrc`, new (as libsrtp clones its template) the first time;
 * NULL only when memory runs out. */
static send_stream_t *stream_of(native_srtp_send_t *sender, uint32_t ssrc)
{
    if (sender->last < sender->count && sender->streams[sender->last].ssrc == ssrc) {
        return &sender->streams[sender->last];
    }
    for (size_t i = 0; i < sender->count; i++) {
        if (sender->streams[i].ssrc == ssrc) {
            sender->last = i;
            return &sender->streams[i];
        }
    }
    if (sender->count == sender->size) {
        size_t size = sender->size ? 2 * sender->size : 4;
        send_stream_t *grown = realloc(sender->streams, size * sizeof *grown);
        if (grown == NULL) {
            return NULL;
        }
        sender->streams = grown;
        sender->size = size;
    }
    send_stream_t *stream = &sender->streams[sender->count];
    stream->ssrc = ssrc;
    stream->index = 0;
    sender->last = sender->count++;
    return stream;
}

/* libsrtp's srtp_rdbx_estimate_index: the index of sequence number `seq`
 * relative to the highest sent, and how far ahead of it (negative: behind). */
static int32_t estimate(const send_stream_t *stream, uint16_t seq, uint64_t *guess)
{
    if (stream->index <= SEQ_MEDIAN) {
        *guess = seq;
        return (int32_t)((uint64_t)seq - stream->index);
    }
    uint32_t roc = (uint32_t)(stream->index >> 16);
    int local = (int)(uint16_t)stream->index;
    int s = seq;
    int32_t difference;
    if (local < SEQ_MEDIAN) {
        if (s - local > SEQ_MEDIAN) {
            roc--;
            difference = s - local - SEQ_MAX;
        } else {
            difference = s - local;
        }
    } else if (local - SEQ_MEDIAN > s) {
        roc++;
        difference = s - local + SEQ_MAX;
    } else {
        difference = s - local;
    }
    *guess = (uint64_t)roc << 16 | seq;
    return difference;
}

/* RFC 7714 8: IV (0x0000 || SSRC || ROC || SEQ) XOR the session salt, the
 * header as AAD, the tag after the encrypted payload. */
static int protect_gcm(native_srtp_send_t *sender, uint8_t *buf, size_t *len, size_t header_len,
                       uint64_t index)
{
    uint32_t roc = (uint32_t)(index >> 16);
    uint8_t iv[GCM_SALT_LEN] = {0, 0, buf[8], buf[9], buf[10], buf[11], (uint8_t)(roc >> 24),
                                (uint8_t)(roc >> 16), (uint8_t)(roc >> 8), (uint8_t)roc, buf[2],
                                buf[3]};
    for (int i = 0; i < GCM_SALT_LEN; i++) {
        iv[i] ^= sender->salt[i];
    }
    int out = 0;
    int payload_len = (int)(*len - header_len);
    if (!EVP_EncryptInit_ex(sender->ctx, NULL, NULL, NULL, iv) ||
        !EVP_EncryptUpdate(sender->ctx, NULL, &out, buf, (int)header_len) ||
        (payload_len > 0 &&
         !EVP_EncryptUpdate(sender->ctx, buf + header_len, &out, buf + header_len, payload_len)) ||
        !EVP_EncryptFinal_ex(sender->ctx, buf + *len, &out) ||
        !EVP_CIPHER_CTX_ctrl(sender->ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, buf + *len)) {
        return srtp_err_status_cipher_fail;
    }
    *len += GCM_TAG_LEN;
    return srtp_err_status_ok;
}

/* RFC 3711 4.1.1 and 4.2: the payload XOR AES-CM keystream from (SSRC << 64 |
 * index << 16) XOR the salt, then HMAC-SHA1 of the packet and the ROC, its
 * first 80 bits appended. */
static int protect_cm(native_srtp_send_t *sender, uint8_t *buf, size_t *len, size_t header_len,
                      uint64_t index)
{
    uint8_t iv[16] = {0, 0, 0, 0, buf[8], buf[9], buf[10], buf[11], (uint8_t)(index >> 40),
                      (uint8_t)(index >> 32), (uint8_t)(index >> 24), (uint8_t)(index >> 16),
                      (uint8_t)(index >> 8), (uint8_t)index, 0, 0};
    for (int i = 0; i < CM_SALT_LEN; i++) {
        iv[i] ^= sender->salt[i];
    }
    uint32_t roc = (uint32_t)(index >> 16);
    uint8_t roc_bytes[4] = {(uint8_t)(roc >> 24), (uint8_t)(roc >> 16), (uint8_t)(roc >> 8),
                            (uint8_t)roc};
    uint8_t digest[SHA1_LEN];
    size_t digest_len = 0;
    int out = 0;
    int payload_len = (int)(*len - header_len);
    if (!EVP_EncryptInit_ex(sender->ctx, NULL, NULL, NULL, iv) ||
        (payload_len > 0 &&
         !EVP_EncryptUpdate(sender->ctx, buf + header_len, &out, buf + header_len, payload_len)) ||
        !EVP_MAC_init(sender->mac, NULL, 0, NULL) || /* starts over with its key */
        !EVP_MAC_update(sender->mac, buf, *len) ||
        !EVP_MAC_update(sender->mac, roc_bytes, sizeof roc_bytes) ||
        !EVP_MAC_final(sender->mac, digest, &digest_len, sizeof digest) || digest_len != SHA1_LEN) {
        return srtp_err_status_cipher_fail;
    }
    memcpy(buf + *len, digest, CM_TAG_LEN);
    *len += CM_TAG_LEN;
    return srtp_err_status_ok;
}

int native_srtp_send_protect(native_srtp_send_t *sender, uint8_t *buf, size_t *len,
                             size_t header_len)
{
    uint32_t ssrc = (uint32_t)buf[8] << 24 | (uint32_t)buf[9] << 16 | (uint32_t)buf[10] << 8 |
                    buf[11];
    uint16_t seq = (uint16_t)(buf[2] << 8 | buf[3]);
    send_stream_t *stream = stream_of(sender, ssrc);
    if (stream == NULL) {
        return srtp_err_status_alloc_fail;
    }
    uint64_t index;
    int32_t delta = estimate(stream, seq, &index);
    if (delta <= -WINDOW) {
        return srtp_err_status_replay_old;
    }
    if (delta > 0) {
        stream->index += (uint16_t)delta; /* libsrtp's srtp_index_advance */
    }

    return sender->aes_cm ? protect_cm(sender, buf, len, header_len, index)
                        : protect_gcm(sender, buf, len, header_len, index);
}
