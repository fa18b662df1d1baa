/* AES-GCM for libsrtp on OpenSSL's libcrypto (docs/native.md, "SRTP").
 *
 * Debian builds libsrtp2 on NSS, whose AES-GCM makes a new PKCS#11 context,
 * with its allocations and locks, for every packet: at 80 000 packets/s that
 * was a quarter of the relay's CPU, three times the AES itself. libsrtp lets
 * a program replace a cipher type (srtp_replace_cipher_type); this one keeps
 * one EVP context per libsrtp cipher, sets only the IV per packet, and so
 * costs what the AES costs. libsrtp still does all of SRTP around it (key
 * derivation, IVs, replay, the packet format); the tests compare every
 * profile byte for byte with pylibsrtp (libsrtp on OpenSSL).
 *
 * The cipher contract, as libsrtp's own OpenSSL and NSS GCM ciphers keep it:
 * `init` takes the session key (the salt after it is libsrtp's, for IVs);
 * `set_iv` starts a packet in one direction; `set_aad` may be called more than
 * once; `encrypt` encrypts in place and keeps the tag for `get_tag`; `decrypt`
 * takes ciphertext followed by the tag and refuses a wrong tag with
 * srtp_err_status_auth_fail.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <srtp2/cipher.h>
#include <srtp2/srtp.h>

#include "gcm.h"

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
    srtp_cipher_t *cipher = calloc(1, sizeof *cipher);
    gcm_state_t *state = calloc(1, sizeof *state);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (cipher == NULL || state == NULL || ctx == NULL) {
        free(cipher);
        free(state);
        EVP_CIPHER_CTX_free(ctx);
        return srtp_err_status_alloc_fail;
    }
    state->ctx = ctx;
    state->key_size = key_size;
    state->tag_len = tag_len;
    state->dir = srtp_direction_any;
    cipher->type = type;
    cipher->state = state;
    cipher->key_len = key_len;
    cipher->algorithm = type->id;
    *cp = cipher;
    return srtp_err_status_ok;
}

static srtp_err_status_t gcm_dealloc(srtp_cipher_pointer_t cipher)
{
    gcm_state_t *state = cipher->state;
    EVP_CIPHER_CTX_free(state->ctx); /* wipes the key schedule */
    wipe(state, sizeof *state);
    free(state);
    wipe(cipher, sizeof *cipher);
    free(cipher);
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

/* The self-test libsrtp runs before it takes a cipher: test case 4 of the GCM
 * specification (McGrew and Viega), AES-128, with a salt after the key as
 * libsrtp passes keys (the cipher does not use it). */
static const uint8_t test_key[SRTP_AES_GCM_128_KEY_LEN_WSALT] = {
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30,
    0x83, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14,
};
static uint8_t test_iv[GCM_IV_LEN] = {
    0xca, 0xfe, 0xba, 0xbe, 0xfa, 0xce, 0xdb, 0xad, 0xde, 0xca, 0xf8, 0x88,
};
static const uint8_t test_plaintext[60] = {
    0xd9, 0x31, 0x32, 0x25, 0xf8, 0x84, 0x06, 0xe5, 0xa5, 0x59, 0x09, 0xc5, 0xaf, 0xf5, 0x26,
    0x9a, 0x86, 0xa7, 0xa9, 0x53, 0x15, 0x34, 0xf7, 0xda, 0x2e, 0x4c, 0x30, 0x3d, 0x8a, 0x31,
    0x8a, 0x72, 0x1c, 0x3c, 0x0c, 0x95, 0x95, 0x68, 0x09, 0x53, 0x2f, 0xcf, 0x0e, 0x24, 0x49,
    0xa6, 0xb5, 0x25, 0xb1, 0x6a, 0xed, 0xf5, 0xaa, 0x0d, 0xe6, 0x57, 0xba, 0x63, 0x7b, 0x39,
};
static const uint8_t test_aad[20] = {
    0xfe, 0xed, 0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed,
    0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xab, 0xad, 0xda, 0xd2,
};
static const uint8_t test_ciphertext[76] = {
    0x42, 0x83, 0x1e, 0xc2, 0x21, 0x77, 0x74, 0x24, 0x4b, 0x72, 0x21, 0xb7, 0x84, 0xd0, 0xd4,
    0x9c, 0xe3, 0xaa, 0x21, 0x2f, 0x2c, 0x02, 0xa4, 0xe0, 0x35, 0xc1, 0x7e, 0x23, 0x29, 0xac,
    0xa1, 0x2e, 0x21, 0xd5, 0x14, 0xb2, 0x54, 0x66, 0x93, 0x1c, 0x7d, 0x8f, 0x6a, 0x5a, 0xac,
    0x84, 0xaa, 0x05, 0x1b, 0xa3, 0x0b, 0x39, 0x6a, 0x0a, 0xac, 0x97, 0x3d, 0x58, 0xe0, 0x91,
    /* the tag */
    0x5b, 0xc9, 0x4f, 0xbc, 0x32, 0x21, 0xa5, 0xdb, 0x94, 0xfa, 0xe9, 0x5a, 0xe7, 0x12, 0x1a,
    0x47,
};
static const srtp_cipher_test_case_t test_case = {
    .key_length_octets = SRTP_AES_GCM_128_KEY_LEN_WSALT,
    .key = test_key,
    .idx = test_iv,
    .plaintext_length_octets = sizeof test_plaintext,
    .plaintext = test_plaintext,
    .ciphertext_length_octets = sizeof test_ciphertext,
    .ciphertext = test_ciphertext,
    .aad_length_octets = sizeof test_aad,
    .aad = test_aad,
    .tag_length_octets = GCM_TAG_MAX,
    .next_test_case = NULL,
};

/* Test case 16 of the same specification: AES-256, the same IV, AAD and
 * plaintext. */
static const uint8_t test_key_256[SRTP_AES_GCM_256_KEY_LEN_WSALT] = {
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30, 0x83,
    0x08, 0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30,
    0x83, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14,
};
static const uint8_t test_ciphertext_256[76] = {
    0x52, 0x2d, 0xc1, 0xf0, 0x99, 0x56, 0x7d, 0x07, 0xf4, 0x7f, 0x37, 0xa3, 0x2a, 0x84, 0x42,
    0x7d, 0x64, 0x3a, 0x8c, 0xdc, 0xbf, 0xe5, 0xc0, 0xc9, 0x75, 0x98, 0xa2, 0xbd, 0x25, 0x55,
    0xd1, 0xaa, 0x8c, 0xb0, 0x8e, 0x48, 0x59, 0x0d, 0xbb, 0x3d, 0xa7, 0xb0, 0x8b, 0x10, 0x56,
    0x82, 0x88, 0x38, 0xc5, 0xf6, 0x1e, 0x63, 0x93, 0xba, 0x7a, 0x0a, 0xbc, 0xc9, 0xf6, 0x62,
    /* the tag */
    0x76, 0xfc, 0x6e, 0xce, 0x0f, 0x4e, 0x17, 0x68, 0xcd, 0xdf, 0x88, 0x53, 0xbb, 0x2d, 0x55,
    0x1b,
};
static const srtp_cipher_test_case_t test_case_256 = {
    .key_length_octets = SRTP_AES_GCM_256_KEY_LEN_WSALT,
    .key = test_key_256,
    .idx = test_iv,
    .plaintext_length_octets = sizeof test_plaintext,
    .plaintext = test_plaintext,
    .ciphertext_length_octets = sizeof test_ciphertext_256,
    .ciphertext = test_ciphertext_256,
    .aad_length_octets = sizeof test_aad,
    .aad = test_aad,
    .tag_length_octets = GCM_TAG_MAX,
    .next_test_case = NULL,
};

static const srtp_cipher_type_t gcm_128 = {
    .alloc = gcm_alloc,
    .dealloc = gcm_dealloc,
    .init = gcm_init,
    .set_aad = gcm_set_aad,
    .encrypt = gcm_encrypt,
    .decrypt = gcm_decrypt,
    .set_iv = gcm_set_iv,
    .get_tag = gcm_get_tag,
    .description = "AES-128 GCM on OpenSSL (Conclave)",
    .test_data = &test_case,
    .id = SRTP_AES_GCM_128,
};

static const srtp_cipher_type_t gcm_256 = {
    .alloc = gcm_alloc,
    .dealloc = gcm_dealloc,
    .init = gcm_init,
    .set_aad = gcm_set_aad,
    .encrypt = gcm_encrypt,
    .decrypt = gcm_decrypt,
    .set_iv = gcm_set_iv,
    .get_tag = gcm_get_tag,
    .description = "AES-256 GCM on OpenSSL (Conclave)",
    .test_data = &test_case_256,
    .id = SRTP_AES_GCM_256,
};

int native_gcm_install(void)
{
    srtp_err_status_t status = srtp_replace_cipher_type(&gcm_128, SRTP_AES_GCM_128);
    if (status == srtp_err_status_ok) {
        status = srtp_replace_cipher_type(&gcm_256, SRTP_AES_GCM_256);
    }
    return (int)status;
}
