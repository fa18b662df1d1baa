/* libsrtp's ciphers on OpenSSL's libcrypto (docs/native.md, "SRTP").
 *
 * Debian builds libsrtp2 on NSS, which makes a new PKCS#11 context, with its
 * allocations and locks, for every packet and every primitive: at 80 000
 * packets/s AES-GCM alone took a third of the relay's CPU, three times the AES
 * itself, and AES-CM with HMAC-SHA1 (what browsers negotiate) cost 5.6 µs per
 * 1200-byte packet. libsrtp lets a program replace a cipher or authentication
 * type (srtp_replace_cipher_type, srtp_replace_auth_type); these keep one
 * OpenSSL context per libsrtp object and only restart it per packet. libsrtp
 * still does all of SRTP around them (key derivation, IVs, replay, the packet
 * format), and libsrtp's self-test must pass each (with published vectors)
 * before it takes it; the tests compare every profile byte for byte with
 * pylibsrtp (libsrtp on OpenSSL).
 *
 * Each follows the contract libsrtp's own OpenSSL and NSS types keep.
 * AES-GCM: `init` takes the session key (the salt after it is libsrtp's, for
 * IVs); `set_iv` starts a packet in one direction; `set_aad` may be called more
 * than once; `encrypt` encrypts in place and keeps the tag for `get_tag`;
 * `decrypt` takes ciphertext followed by the tag and refuses a wrong tag with
 * srtp_err_status_auth_fail. AES-CM (RFC 3711 4.1.1): `init` takes key and
 * 14-byte salt, `set_iv` sets the counter to salt XOR IV, and encryption and
 * decryption are the same keystream. HMAC-SHA1: `start` begins a message,
 * `update` adds to it, `compute` adds its last part and writes the tag.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <srtp2/auth.h>
#include <srtp2/cipher.h>
#include <srtp2/srtp.h>

#include "crypto.h"

#define GCM_TAG_MAX 16
#define GCM_IV_LEN 12

typedef struct {
    EVP_CIPHER_CTX *ctx;
    int key_size; /* 16 or 32 */
    int tag_len;  /* 8 or 16 */
    int dir;      /* srtp_direction_t of the packet under way */
    unsigned char tag[GCM_TAG_MAX];
} gcm_state_t;

static const srtp_cipher_type_t gcm_128;
static const srtp_cipher_type_t gcm_256;

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--) {
        *v++ = 0;
    }
}

/* Both cipher states begin with their OpenSSL context, which these two
 * allocate and free with the libsrtp cipher around them. */
static srtp_err_status_t cipher_new(srtp_cipher_pointer_t *cp, const srtp_cipher_type_t *type,
                                    int key_len, size_t state_size)
{
    srtp_cipher_t *cipher = calloc(1, sizeof *cipher);
    void *state = calloc(1, state_size);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (cipher == NULL || state == NULL || ctx == NULL) {
        free(cipher);
        free(state);
        EVP_CIPHER_CTX_free(ctx);
        return srtp_err_status_alloc_fail;
    }
    *(EVP_CIPHER_CTX **)state = ctx;
    cipher->type = type;
    cipher->state = state;
    cipher->key_len = key_len;
    cipher->algorithm = type->id;
    *cp = cipher;
    return srtp_err_status_ok;
}

static void cipher_free(srtp_cipher_pointer_t cipher, size_t state_size)
{
    EVP_CIPHER_CTX_free(*(EVP_CIPHER_CTX **)cipher->state); /* wipes the key schedule */
    wipe(cipher->state, state_size);
    free(cipher->state);
    wipe(cipher, sizeof *cipher);
    free(cipher);
}

/* ------------------------------------------------------------------ AES-GCM */

static srtp_err_status_t gcm_alloc(srtp_cipher_pointer_t *cp, int key_len, int tag_len)
{
    const srtp_cipher_type_t *type;
    int key_size;
    if (key_len == SRTP_AES_GCM_128_KEY_LEN_WSALT) {
        type = &gcm_128;
        key_size = SRTP_AES_128_KEY_LEN;
    } else if (key_len == SRTP_AES_GCM_256_KEY_LEN_WSALT) {
        type = &gcm_256;
        key_size = SRTP_AES_256_KEY_LEN;
    } else {
        return srtp_err_status_bad_param;
    }
    if (tag_len != 8 && tag_len != GCM_TAG_MAX) {
        return srtp_err_status_bad_param;
    }
    srtp_err_status_t status = cipher_new(cp, type, key_len, sizeof(gcm_state_t));
    if (status == srtp_err_status_ok) {
        gcm_state_t *state = (*cp)->state;
        state->key_size = key_size;
        state->tag_len = tag_len;
        state->dir = srtp_direction_any;
    }
    return status;
}

static srtp_err_status_t gcm_dealloc(srtp_cipher_pointer_t cipher)
{
    cipher_free(cipher, sizeof(gcm_state_t));
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_init(void *sv, const uint8_t *key)
{
    gcm_state_t *state = sv;
    const EVP_CIPHER *evp = state->key_size == SRTP_AES_128_KEY_LEN ? EVP_aes_128_gcm()
                                                                    : EVP_aes_256_gcm();
    state->dir = srtp_direction_any;
    if (!EVP_CipherInit_ex(state->ctx, evp, NULL, key, NULL, 1)) {
        return srtp_err_status_init_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_set_iv(void *sv, uint8_t *iv, srtp_cipher_direction_t direction)
{
    gcm_state_t *state = sv;
    if (direction != srtp_direction_encrypt && direction != srtp_direction_decrypt) {
        return srtp_err_status_bad_param;
    }
    state->dir = direction;
    int encrypt = direction == srtp_direction_encrypt;
    if (!EVP_CipherInit_ex(state->ctx, NULL, NULL, NULL, iv, encrypt)) {
        return srtp_err_status_init_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_set_aad(void *sv, const uint8_t *aad, uint32_t aad_len)
{
    gcm_state_t *state = sv;
    int out_len;
    if (state->dir != srtp_direction_encrypt && state->dir != srtp_direction_decrypt) {
        return srtp_err_status_cipher_fail;
    }
    if (aad_len > 0 && !EVP_CipherUpdate(state->ctx, NULL, &out_len, aad, (int)aad_len)) {
        return srtp_err_status_cipher_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_encrypt(void *sv, uint8_t *buf, unsigned int *len)
{
    gcm_state_t *state = sv;
    int out_len = 0;
    int final_len = 0;
    if (state->dir != srtp_direction_encrypt) {
        return srtp_err_status_bad_param;
    }
    if (*len > 0 && (buf == NULL || !EVP_CipherUpdate(state->ctx, buf, &out_len, buf, (int)*len))) {
        return srtp_err_status_cipher_fail;
    }
    unsigned char none[1];
    if (!EVP_CipherFinal_ex(state->ctx, buf != NULL ? buf + out_len : none, &final_len) ||
        !EVP_CIPHER_CTX_ctrl(state->ctx, EVP_CTRL_GCM_GET_TAG, state->tag_len, state->tag)) {
        return srtp_err_status_cipher_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_get_tag(void *sv, uint8_t *tag, uint32_t *len)
{
    gcm_state_t *state = sv;
    if (state->dir != srtp_direction_encrypt) {
        return srtp_err_status_bad_param;
    }
    memcpy(tag, state->tag, (size_t)state->tag_len);
    *len = (uint32_t)state->tag_len;
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_decrypt(void *sv, uint8_t *buf, unsigned int *len)
{
    gcm_state_t *state = sv;
    int out_len = 0;
    int final_len = 0;
    if (state->dir != srtp_direction_decrypt || *len < (unsigned int)state->tag_len) {
        return srtp_err_status_bad_param;
    }
    unsigned int text_len = *len - (unsigned int)state->tag_len;
    if (!EVP_CIPHER_CTX_ctrl(state->ctx, EVP_CTRL_GCM_SET_TAG, state->tag_len, buf + text_len)) {
        return srtp_err_status_cipher_fail;
    }
    if (text_len > 0 && !EVP_CipherUpdate(state->ctx, buf, &out_len, buf, (int)text_len)) {
        return srtp_err_status_cipher_fail;
    }
    if (EVP_CipherFinal_ex(state->ctx, buf + out_len, &final_len) <= 0) {
        return srtp_err_status_auth_fail;
    }
    *len = text_len;
    return srtp_err_status_ok;
}

/* A libsrtp self-test case: `plaintext` encrypts to `ciphertext` (the tag
 * after it, for GCM) with `key` (salt included) and IV `iv`. */
#define CIPHER_TEST(key_, iv_, plain_, cipher_, aad_, aad_len_, tag_len_)                           \
    {                                                                                              \
        .key_length_octets = sizeof key_, .key = key_, .idx = iv_,                                 \
        .plaintext_length_octets = sizeof plain_, .plaintext = plain_,                             \
        .ciphertext_length_octets = sizeof cipher_, .ciphertext = cipher_,                         \
        .aad_length_octets = aad_len_, .aad = aad_, .tag_length_octets = tag_len_,                 \
        .next_test_case = NULL,                                                                    \
    }

/* The self-test libsrtp runs before it takes a cipher: test case 4 of the GCM
 * specification (McGrew and Viega), AES-128, with a salt after the key as
 * libsrtp passes keys (the cipher does not use it). */
static const uint8_t gcm_test_key[SRTP_AES_GCM_128_KEY_LEN_WSALT] = {
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30,
    0x83, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14,
};
static uint8_t gcm_test_iv[GCM_IV_LEN] = {
    0xca, 0xfe, 0xba, 0xbe, 0xfa, 0xce, 0xdb, 0xad, 0xde, 0xca, 0xf8, 0x88,
};
static const uint8_t gcm_test_plaintext[60] = {
    0xd9, 0x31, 0x32, 0x25, 0xf8, 0x84, 0x06, 0xe5, 0xa5, 0x59, 0x09, 0xc5, 0xaf, 0xf5, 0x26,
    0x9a, 0x86, 0xa7, 0xa9, 0x53, 0x15, 0x34, 0xf7, 0xda, 0x2e, 0x4c, 0x30, 0x3d, 0x8a, 0x31,
    0x8a, 0x72, 0x1c, 0x3c, 0x0c, 0x95, 0x95, 0x68, 0x09, 0x53, 0x2f, 0xcf, 0x0e, 0x24, 0x49,
    0xa6, 0xb5, 0x25, 0xb1, 0x6a, 0xed, 0xf5, 0xaa, 0x0d, 0xe6, 0x57, 0xba, 0x63, 0x7b, 0x39,
};
static const uint8_t gcm_test_aad[20] = {
    0xfe, 0xed, 0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed,
    0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xab, 0xad, 0xda, 0xd2,
};
static const uint8_t gcm_test_ciphertext[76] = {
    0x42, 0x83, 0x1e, 0xc2, 0x21, 0x77, 0x74, 0x24, 0x4b, 0x72, 0x21, 0xb7, 0x84, 0xd0, 0xd4,
    0x9c, 0xe3, 0xaa, 0x21, 0x2f, 0x2c, 0x02, 0xa4, 0xe0, 0x35, 0xc1, 0x7e, 0x23, 0x29, 0xac,
    0xa1, 0x2e, 0x21, 0xd5, 0x14, 0xb2, 0x54, 0x66, 0x93, 0x1c, 0x7d, 0x8f, 0x6a, 0x5a, 0xac,
    0x84, 0xaa, 0x05, 0x1b, 0xa3, 0x0b, 0x39, 0x6a, 0x0a, 0xac, 0x97, 0x3d, 0x58, 0xe0, 0x91,
    /* the tag */
    0x5b, 0xc9, 0x4f, 0xbc, 0x32, 0x21, 0xa5, 0xdb, 0x94, 0xfa, 0xe9, 0x5a, 0xe7, 0x12, 0x1a,
    0x47,
};
static const srtp_cipher_test_case_t gcm_test_case_128 =
    CIPHER_TEST(gcm_test_key, gcm_test_iv, gcm_test_plaintext, gcm_test_ciphertext, gcm_test_aad,
                sizeof gcm_test_aad, GCM_TAG_MAX);

/* Test case 16 of the same specification: AES-256, the same IV, AAD and
 * plaintext. */
static const uint8_t gcm_test_key_256[SRTP_AES_GCM_256_KEY_LEN_WSALT] = {
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30, 0x83,
    0x08, 0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30,
    0x83, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14,
};
static const uint8_t gcm_test_ciphertext_256[76] = {
    0x52, 0x2d, 0xc1, 0xf0, 0x99, 0x56, 0x7d, 0x07, 0xf4, 0x7f, 0x37, 0xa3, 0x2a, 0x84, 0x42,
    0x7d, 0x64, 0x3a, 0x8c, 0xdc, 0xbf, 0xe5, 0xc0, 0xc9, 0x75, 0x98, 0xa2, 0xbd, 0x25, 0x55,
    0xd1, 0xaa, 0x8c, 0xb0, 0x8e, 0x48, 0x59, 0x0d, 0xbb, 0x3d, 0xa7, 0xb0, 0x8b, 0x10, 0x56,
    0x82, 0x88, 0x38, 0xc5, 0xf6, 0x1e, 0x63, 0x93, 0xba, 0x7a, 0x0a, 0xbc, 0xc9, 0xf6, 0x62,
    /* the tag */
    0x76, 0xfc, 0x6e, 0xce, 0x0f, 0x4e, 0x17, 0x68, 0xcd, 0xdf, 0x88, 0x53, 0xbb, 0x2d, 0x55,
    0x1b,
};
static const srtp_cipher_test_case_t gcm_test_case_256 =
    CIPHER_TEST(gcm_test_key_256, gcm_test_iv, gcm_test_plaintext, gcm_test_ciphertext_256,
                gcm_test_aad, sizeof gcm_test_aad, GCM_TAG_MAX);

#define GCM_TYPE(bits)                                                                             \
    {                                                                                              \
        .alloc = gcm_alloc, .dealloc = gcm_dealloc, .init = gcm_init, .set_aad = gcm_set_aad,      \
        .encrypt = gcm_encrypt, .decrypt = gcm_decrypt, .set_iv = gcm_set_iv,                      \
        .get_tag = gcm_get_tag, .description = "AES-" #bits " GCM on OpenSSL (Conclave)",         \
        .test_data = &gcm_test_case_##bits, .id = SRTP_AES_GCM_##bits,                             \
    }

static const srtp_cipher_type_t gcm_128 = GCM_TYPE(128);

static const srtp_cipher_type_t gcm_256 = GCM_TYPE(256);


/* ------------------------------------------------------------------- AES-CM */

typedef struct {
    EVP_CIPHER_CTX *ctx;
    int key_size;       /* 16 or 32 */
    uint8_t offset[16]; /* the salt, its last two octets zero (the block counter) */
} icm_state_t;

static const srtp_cipher_type_t icm_128;
static const srtp_cipher_type_t icm_256;

/* AES-128-CM is SRTP's default cipher; AES-256-CM derives the keys of the
 * AES-256-GCM profile (libsrtp's key derivation takes the AES-CM of the key's
 * size). */
static srtp_err_status_t icm_alloc(srtp_cipher_pointer_t *cp, int key_len, int tag_len)
{
    const srtp_cipher_type_t *type;
    int key_size;
    (void)tag_len;
    if (key_len == SRTP_AES_ICM_128_KEY_LEN_WSALT) {
        type = &icm_128;
        key_size = SRTP_AES_128_KEY_LEN;
    } else if (key_len == SRTP_AES_ICM_256_KEY_LEN_WSALT) {
        type = &icm_256;
        key_size = SRTP_AES_256_KEY_LEN;
    } else {
        return srtp_err_status_bad_param;
    }
    srtp_err_status_t status = cipher_new(cp, type, key_len, sizeof(icm_state_t));
    if (status == srtp_err_status_ok) {
        ((icm_state_t *)(*cp)->state)->key_size = key_size;
    }
    return status;
}

static srtp_err_status_t icm_dealloc(srtp_cipher_pointer_t cipher)
{
    cipher_free(cipher, sizeof(icm_state_t));
    return srtp_err_status_ok;
}

static srtp_err_status_t icm_init(void *sv, const uint8_t *key)
{
    icm_state_t *state = sv;
    memset(state->offset, 0, sizeof state->offset);
    memcpy(state->offset, key + state->key_size, SRTP_SALT_LEN);
    const EVP_CIPHER *evp = state->key_size == SRTP_AES_128_KEY_LEN ? EVP_aes_128_ctr()
                                                                    : EVP_aes_256_ctr();
    if (!EVP_EncryptInit_ex(state->ctx, evp, NULL, key, NULL)) {
        return srtp_err_status_init_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t icm_set_iv(void *sv, uint8_t *iv, srtp_cipher_direction_t direction)
{
    icm_state_t *state = sv;
    uint8_t counter[16];
    (void)direction; /* the keystream is the same both ways */
    for (size_t i = 0; i < sizeof counter; i++) {
        counter[i] = state->offset[i] ^ iv[i];
    }
    if (!EVP_EncryptInit_ex(state->ctx, NULL, NULL, NULL, counter)) {
        return srtp_err_status_init_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t icm_encrypt(void *sv, uint8_t *buf, unsigned int *len)
{
    icm_state_t *state = sv;
    int out_len = 0;
    if (*len > 0 && !EVP_EncryptUpdate(state->ctx, buf, &out_len, buf, (int)*len)) {
        return srtp_err_status_cipher_fail;
    }
    return srtp_err_status_ok;
}

/* RFC 3711 B.2: the first two keystream blocks for key 2B7E1516..., salt
 * F0F1...FD, SSRC 0, index 0 (the IV is zero). */
static const uint8_t icm_test_key[SRTP_AES_ICM_128_KEY_LEN_WSALT] = {
    0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f,
    0x3c, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
};
static uint8_t icm_test_iv[16];
static const uint8_t icm_test_plaintext[32];
static const uint8_t icm_test_ciphertext[32] = {
    0xe0, 0x3e, 0xad, 0x09, 0x35, 0xc9, 0x5e, 0x80, 0xe1, 0x66, 0xb1, 0x6d, 0xd9, 0x2b, 0x4e, 0xb4,
    0xd2, 0x35, 0x13, 0x16, 0x2b, 0x02, 0xd0, 0xf7, 0x2a, 0x43, 0xa2, 0xfe, 0x4a, 0x5f, 0x97, 0xab,
};
static const srtp_cipher_test_case_t icm_test_case_128 =
    CIPHER_TEST(icm_test_key, icm_test_iv, icm_test_plaintext, icm_test_ciphertext, NULL, 0, 0);

/* RFC 6188 7.1: the same with the AES-256 key 57F82FE3.... */
static const uint8_t icm_test_key_256[SRTP_AES_ICM_256_KEY_LEN_WSALT] = {
    0x57, 0xf8, 0x2f, 0xe3, 0x61, 0x3f, 0xd1, 0x70, 0xa8, 0x5e, 0xc9, 0x3c, 0x40, 0xb1, 0xf0, 0x92,
    0x2e, 0xc4, 0xcb, 0x0d, 0xc0, 0x25, 0xb5, 0x82, 0x72, 0x14, 0x7c, 0xc4, 0x38, 0x94, 0x4a, 0x98,
    0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
};
static const uint8_t icm_test_ciphertext_256[32] = {
    0x92, 0xbd, 0xd2, 0x8a, 0x93, 0xc3, 0xf5, 0x25, 0x11, 0xc6, 0x77, 0xd0, 0x8b, 0x55, 0x15, 0xa4,
    0x9d, 0xa7, 0x1b, 0x23, 0x78, 0xa8, 0x54, 0xf6, 0x70, 0x50, 0x75, 0x6d, 0xed, 0x16, 0x5b, 0xac,
};
static const srtp_cipher_test_case_t icm_test_case_256 =
    CIPHER_TEST(icm_test_key_256, icm_test_iv, icm_test_plaintext, icm_test_ciphertext_256, NULL,
                0, 0);

/* Encryption and decryption are the same keystream; no AAD, no tag. */
#define ICM_TYPE(bits)                                                                             \
    {                                                                                              \
        .alloc = icm_alloc, .dealloc = icm_dealloc, .init = icm_init, .set_aad = NULL,             \
        .encrypt = icm_encrypt, .decrypt = icm_encrypt, .set_iv = icm_set_iv, .get_tag = NULL,     \
        .description = "AES-" #bits " counter mode on OpenSSL (Conclave)",                        \
        .test_data = &icm_test_case_##bits, .id = SRTP_AES_ICM_##bits,                             \
    }

static const srtp_cipher_type_t icm_128 = ICM_TYPE(128);

static const srtp_cipher_type_t icm_256 = ICM_TYPE(256);

/* ---------------------------------------------------------------- HMAC-SHA1 */

#define SHA1_DIGEST 20

static EVP_MAC *hmac; /* fetched once, by native_crypto_install */

static const srtp_auth_type_t hmac_sha1;

static srtp_err_status_t hmac_alloc(srtp_auth_pointer_t *ap, int key_len, int out_len)
{
    if (key_len < 0 || key_len > SHA1_DIGEST || out_len < 0 || out_len > SHA1_DIGEST) {
        return srtp_err_status_bad_param;
    }
    srtp_auth_t *auth = calloc(1, sizeof *auth);
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac);
    if (auth == NULL || ctx == NULL) {
        free(auth);
        EVP_MAC_CTX_free(ctx);
        return srtp_err_status_alloc_fail;
    }
    auth->type = &hmac_sha1;
    auth->state = ctx;
    auth->out_len = out_len;
    auth->key_len = key_len;
    auth->prefix_len = 0;
    *ap = auth;
    return srtp_err_status_ok;
}

static srtp_err_status_t hmac_dealloc(srtp_auth_pointer_t auth)
{
    EVP_MAC_CTX_free(auth->state); /* wipes the key */
    wipe(auth, sizeof *auth);
    free(auth);
    return srtp_err_status_ok;
}

static srtp_err_status_t hmac_init(void *sv, const uint8_t *key, int key_len)
{
    char digest[] = "SHA1";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_init(sv, key, (size_t)key_len, params)) {
        return srtp_err_status_init_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t hmac_start(void *sv)
{
    /* No key: OpenSSL's HMAC starts over with the key it has. */
    if (!EVP_MAC_init(sv, NULL, 0, NULL)) {
        return srtp_err_status_auth_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t hmac_update(void *sv, const uint8_t *buf, int len)
{
    if (len < 0 || !EVP_MAC_update(sv, buf, (size_t)len)) {
        return srtp_err_status_auth_fail;
    }
    return srtp_err_status_ok;
}

static srtp_err_status_t hmac_compute(void *sv, const uint8_t *buf, int len, int tag_len,
                                      uint8_t *tag)
{
    uint8_t digest[SHA1_DIGEST];
    size_t digest_len = 0;
    if (tag_len < 0 || tag_len > SHA1_DIGEST) {
        return srtp_err_status_bad_param;
    }
    if (hmac_update(sv, buf, len) != srtp_err_status_ok ||
        !EVP_MAC_final(sv, digest, &digest_len, sizeof digest) || digest_len != SHA1_DIGEST) {
        return srtp_err_status_auth_fail;
    }
    memcpy(tag, digest, (size_t)tag_len);
    wipe(digest, sizeof digest);
    return srtp_err_status_ok;
}

/* RFC 2202, test case 1. */
static const uint8_t hmac_test_key[20] = {
    0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
    0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
};
static const uint8_t hmac_test_data[8] = {'H', 'i', ' ', 'T', 'h', 'e', 'r', 'e'};
static const uint8_t hmac_test_tag[SHA1_DIGEST] = {
    0xb6, 0x17, 0x31, 0x86, 0x55, 0x05, 0x72, 0x64, 0xe2, 0x8b,
    0xc0, 0xb6, 0xfb, 0x37, 0x8c, 0x8e, 0xf1, 0x46, 0xbe, 0x00,
};
static const srtp_auth_test_case_t hmac_test_case = {
    .key_length_octets = sizeof hmac_test_key,
    .key = hmac_test_key,
    .data_length_octets = sizeof hmac_test_data,
    .data = hmac_test_data,
    .tag_length_octets = sizeof hmac_test_tag,
    .tag = hmac_test_tag,
    .next_test_case = NULL,
};

static const srtp_auth_type_t hmac_sha1 = {
    .alloc = hmac_alloc,
    .dealloc = hmac_dealloc,
    .init = hmac_init,
    .compute = hmac_compute,
    .update = hmac_update,
    .start = hmac_start,
    .description = "HMAC-SHA1 on OpenSSL (Conclave)",
    .test_data = &hmac_test_case,
    .id = SRTP_HMAC_SHA1,
};

/* ------------------------------------------------------------------ install */

int native_crypto_install(void)
{
    if (hmac == NULL) {
        hmac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
        if (hmac == NULL) {
            return (int)srtp_err_status_init_fail;
        }
    }
    srtp_err_status_t status = srtp_replace_cipher_type(&gcm_128, SRTP_AES_GCM_128);
    if (status == srtp_err_status_ok) {
        status = srtp_replace_cipher_type(&gcm_256, SRTP_AES_GCM_256);
    }
    if (status == srtp_err_status_ok) {
        status = srtp_replace_cipher_type(&icm_128, SRTP_AES_ICM_128);
    }
    if (status == srtp_err_status_ok) {
        status = srtp_replace_cipher_type(&icm_256, SRTP_AES_ICM_256);
    }
    if (status == srtp_err_status_ok) {
        status = srtp_replace_auth_type(&hmac_sha1, SRTP_HMAC_SHA1);
    }
    return (int)status;
}
