/* SRTP for one participant leg on libsrtp2, and the CPython type
 * relay._native_srtp.Session over it. See srtp.h and docs/native.md.
 *
 * Build the C functions alone (for the engine) with -DNATIVE_SRTP_NO_PYTHON.
 */
#ifndef NATIVE_SRTP_NO_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as CPython asks */
#endif

#include <limits.h>
#include <string.h>

#include "crypto.h"
#include "srtp.h"
#ifndef NATIVE_SRTP_NO_PYTHON
#include "module.h"
#endif

#define RTP_FIXED_HEADER 12
#define RTCP_FIXED_HEADER 8 /* common header + sender SSRC */
#define SRTCP_INDEX_LEN 4   /* E flag + 31-bit SRTCP index */
#define MAX_KEY_AND_SALT 64

/* ------------------------------------------------------------ C functions */

int native_srtp_init(void)
{
    static int done;
    if (done) {
        return srtp_err_status_ok;
    }
    srtp_err_status_t status = srtp_init();
    if (status == srtp_err_status_ok) {
        status = (srtp_err_status_t)native_crypto_install();
    }
    if (status == srtp_err_status_ok) {
        done = 1;
    }
    return (int)status;
}

size_t native_srtp_key_and_salt_length(int profile)
{
    switch (profile) {
    case NATIVE_SRTP_AES128_CM_SHA1_80:
    case NATIVE_SRTP_AEAD_AES_128_GCM:
    case NATIVE_SRTP_AEAD_AES_256_GCM:
        return srtp_profile_get_master_key_length((srtp_profile_t)profile) +
               srtp_profile_get_master_salt_length((srtp_profile_t)profile);
    default:
        return 0;
    }
}

/* The key is wiped from our stack copy; volatile so the stores stay. */
static void wipe(uint8_t *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n--) {
        *v++ = 0;
    }
}

int native_srtp_open(native_srtp_t *s, int profile, const uint8_t *key_and_salt,
                     size_t key_and_salt_len, int outbound)
{
    memset(s, 0, sizeof(*s));
    size_t expected = native_srtp_key_and_salt_length(profile);
    if (expected == 0 || key_and_salt_len != expected || expected > MAX_KEY_AND_SALT) {
        return srtp_err_status_bad_param;
    }

    srtp_policy_t policy;
    memset(&policy, 0, sizeof(policy));
    srtp_err_status_t status =
        srtp_crypto_policy_set_from_profile_for_rtp(&policy.rtp, (srtp_profile_t)profile);
    if (status != srtp_err_status_ok) {
        return (int)status;
    }
    status = srtp_crypto_policy_set_from_profile_for_rtcp(&policy.rtcp, (srtp_profile_t)profile);
    if (status != srtp_err_status_ok) {
        return (int)status;
    }

    /* As aiortc's _setup_srtp: one wildcard stream per direction, so every
     * SSRC of the leg shares the keys; a 1024-packet replay window; and
     * retransmissions (NACK answers, RTX off) may repeat a sequence number. */
    uint8_t key[MAX_KEY_AND_SALT];
    memcpy(key, key_and_salt, expected);
    policy.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
    policy.ssrc.value = 0;
    policy.key = key;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 1;
    policy.next = NULL;

    srtp_t session = NULL;
    status = srtp_create(&session, &policy);
    wipe(key, sizeof(key));
    if (status != srtp_err_status_ok) {
        return (int)status;
    }
    if (outbound) {
        s->sender = native_srtp_send_new(profile == NATIVE_SRTP_AES128_CM_SHA1_80, key_and_salt,
                                         key_and_salt_len);
        if (s->sender == NULL) {
            srtp_dealloc(session);
            return srtp_err_status_init_fail;
        }
    }
    s->session = session;
    s->profile = profile;
    s->outbound = outbound ? 1 : 0;
    s->rtp_trailer = (size_t)policy.rtp.auth_tag_len;
    s->rtcp_trailer = (size_t)policy.rtcp.auth_tag_len + SRTCP_INDEX_LEN;
    return srtp_err_status_ok;
}

void native_srtp_close(native_srtp_t *s)
{
    if (s->session != NULL) {
        srtp_dealloc(s->session);
        s->session = NULL;
    }
    native_srtp_send_free(s->sender);
    s->sender = NULL;
}

/* Length of the RTP header (fixed part, CSRCs, extension) if all of it lies
 * within `len` bytes, else 0. libsrtp finds where to encrypt from the header,
 * so a header that claims more than the packet holds must never reach it. */
static size_t rtp_header_length(const uint8_t *buf, size_t len)
{
    if (len < RTP_FIXED_HEADER) {
        return 0;
    }
    size_t need = RTP_FIXED_HEADER + 4u * (size_t)(buf[0] & 0x0f);
    if (buf[0] & 0x10) {
        if (len < need + 4) {
            return 0;
        }
        size_t words = ((size_t)buf[need + 2] << 8) | buf[need + 3];
        need += 4 + 4 * words;
    }
    return need <= len ? need : 0;
}

/* Why a packet is refused before libsrtp sees it, or NULL if it is not. */
static const char *refusal(const native_srtp_t *s, const uint8_t *buf, size_t len,
                           size_t capacity, int protect, int rtcp)
{
    if (s->session == NULL) {
        return "session is closed";
    }
    if (protect && !s->outbound) {
        return "protect on an inbound session";
    }
    if (!protect && s->outbound) {
        return "unprotect on an outbound session";
    }
    size_t trailer = rtcp ? s->rtcp_trailer : s->rtp_trailer;
    if (protect) {
        if (len > NATIVE_SRTP_MAX_PACKET) {
            return "packet too long";
        }
        if (capacity < len + NATIVE_SRTP_PROTECT_HEADROOM) {
            return "buffer too small for the SRTP trailer";
        }
        if (rtcp ? len < RTCP_FIXED_HEADER : rtp_header_length(buf, len) == 0) {
            return "packet too short";
        }
        return NULL;
    }
    if (len > NATIVE_SRTP_MAX_PACKET + trailer) {
        return "packet too long";
    }
    /* The tag (and SRTCP index) must follow the header, not overlap it. */
    size_t header = rtcp ? RTCP_FIXED_HEADER : rtp_header_length(buf, len);
    if (header == 0 || header + trailer > len) {
        return "packet too short";
    }
    return NULL;
}

int native_srtp_protect(native_srtp_t *s, uint8_t *buf, size_t *len, size_t capacity, int rtcp)
{
    if (refusal(s, buf, *len, capacity, 1, rtcp) != NULL) {
        return srtp_err_status_bad_param;
    }
    if (!rtcp && s->sender != NULL) {
        return native_srtp_send_protect(s->sender, buf, len, rtp_header_length(buf, *len));
    }
    int n = (int)*len; /* <= NATIVE_SRTP_MAX_PACKET, fits */
    srtp_err_status_t status =
        rtcp ? srtp_protect_rtcp(s->session, buf, &n) : srtp_protect(s->session, buf, &n);
    if (status == srtp_err_status_ok) {
        *len = (size_t)n;
    }
    return (int)status;
}

int native_srtp_unprotect(native_srtp_t *s, uint8_t *buf, size_t *len, int rtcp)
{
    if (refusal(s, buf, *len, *len, 0, rtcp) != NULL) {
        return srtp_err_status_bad_param;
    }
    int n = (int)*len;
    srtp_err_status_t status =
        rtcp ? srtp_unprotect_rtcp(s->session, buf, &n) : srtp_unprotect(s->session, buf, &n);
    if (status == srtp_err_status_ok) {
        if (n < 0 || (size_t)n > *len) {
            return srtp_err_status_fail; /* never expected: libsrtp only shortens */
        }
        *len = (size_t)n;
    }
    return (int)status;
}

#ifndef NATIVE_SRTP_NO_PYTHON
/* -------------------------------------------------------------- Python API */

static PyObject *SrtpError;

/* Our wording of libsrtp's srtp_err_status_t values, by number. */
static const char *status_text(int status)
{
    switch (status) {
    case srtp_err_status_ok: return "ok";
    case srtp_err_status_fail: return "unspecified failure";
    case srtp_err_status_bad_param: return "bad parameter";
    case srtp_err_status_alloc_fail: return "allocation failed";
    case srtp_err_status_dealloc_fail: return "deallocation failed";
    case srtp_err_status_init_fail: return "initialisation failed";
    case srtp_err_status_terminus: return "cannot process that much data";
    case srtp_err_status_auth_fail: return "authentication failed";
    case srtp_err_status_cipher_fail: return "cipher failed";
    case srtp_err_status_replay_fail: return "replayed packet";
    case srtp_err_status_replay_old: return "packet older than the replay window";
    case srtp_err_status_algo_fail: return "algorithm self-test failed";
    case srtp_err_status_no_such_op: return "unsupported operation";
    case srtp_err_status_no_ctx: return "no stream for this SSRC";
    case srtp_err_status_cant_check: return "cannot check";
    case srtp_err_status_key_expired: return "key expired";
    case srtp_err_status_parse_err: return "parse error";
    case srtp_err_status_bad_mki: return "bad MKI";
    case srtp_err_status_pkt_idx_old: return "packet index too old";
    case srtp_err_status_pkt_idx_adv: return "packet index advanced too far";
    default: return "libsrtp error";
    }
}

/* Raise SrtpError(message) with .status = status. */
static void raise_srtp(int status, const char *what, const char *reason)
{
    PyObject *message = PyUnicode_FromFormat("%s: %s (libsrtp status %d)", what,
                                             reason != NULL ? reason : status_text(status),
                                             status);
    if (message == NULL) {
        return;
    }
    PyObject *exc = PyObject_CallOneArg(SrtpError, message);
    Py_DECREF(message);
    if (exc == NULL) {
        return;
    }
    PyObject *code = PyLong_FromLong(status);
    if (code != NULL && PyObject_SetAttrString(exc, "status", code) == 0) {
        PyErr_SetObject(SrtpError, exc);
    }
    Py_XDECREF(code);
    Py_DECREF(exc);
}

typedef struct {
    PyObject_HEAD
    native_srtp_t srtp;
    /* One packet at a time: copied in, processed in place, copied out. */
    uint8_t buf[NATIVE_SRTP_BUFFER_SIZE];
} SessionObject;

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"profile", "key_and_salt", "outbound", NULL};
    int profile;
    Py_buffer key;
    int outbound;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iy*p:Session", keywords, &profile, &key,
                                     &outbound)) {
        return NULL;
    }
    size_t expected = native_srtp_key_and_salt_length(profile);
    if (expected == 0) {
        PyBuffer_Release(&key);
        return PyErr_Format(PyExc_ValueError, "unsupported SRTP profile %d", profile);
    }
    if ((size_t)key.len != expected) {
        PyBuffer_Release(&key);
        return PyErr_Format(PyExc_ValueError,
                            "key_and_salt must be %zu bytes for profile %d, not %zd", expected,
                            profile, key.len);
    }
    SessionObject *self = (SessionObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        PyBuffer_Release(&key);
        return NULL;
    }
    int status = native_srtp_open(&self->srtp, profile, key.buf, (size_t)key.len, outbound);
    PyBuffer_Release(&key);
    if (status != srtp_err_status_ok) {
        raise_srtp(status, "srtp_create", NULL);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Session_dealloc(SessionObject *self)
{
    native_srtp_close(&self->srtp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *process(SessionObject *self, PyObject *arg, int protect, int rtcp)
{
    static const char *const names[2][2] = {{"unprotect", "unprotect_rtcp"},
                                            {"protect", "protect_rtcp"}};
    const char *what = names[protect][rtcp];
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    size_t len = (size_t)in.len;
    /* Checked before the copy: `buf` holds at most NATIVE_SRTP_BUFFER_SIZE. */
    const char *why = refusal(&self->srtp, in.buf, len, sizeof(self->buf), protect, rtcp);
    if (why != NULL) {
        PyBuffer_Release(&in);
        raise_srtp(srtp_err_status_bad_param, what, why);
        return NULL;
    }
    memcpy(self->buf, in.buf, len);
    PyBuffer_Release(&in);
    int status = protect ? native_srtp_protect(&self->srtp, self->buf, &len, sizeof(self->buf), rtcp)
                         : native_srtp_unprotect(&self->srtp, self->buf, &len, rtcp);
    if (status != srtp_err_status_ok) {
        raise_srtp(status, what, NULL);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)self->buf, (Py_ssize_t)len);
}

static PyObject *Session_protect(PyObject *self, PyObject *arg)
{
    return process((SessionObject *)self, arg, 1, 0);
}

static PyObject *Session_protect_rtcp(PyObject *self, PyObject *arg)
{
    return process((SessionObject *)self, arg, 1, 1);
}

static PyObject *Session_unprotect(PyObject *self, PyObject *arg)
{
    return process((SessionObject *)self, arg, 0, 0);
}

static PyObject *Session_unprotect_rtcp(PyObject *self, PyObject *arg)
{
    return process((SessionObject *)self, arg, 0, 1);
}

static PyObject *Session_get_profile(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(((SessionObject *)self)->srtp.profile);
}

static PyObject *Session_get_outbound(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((SessionObject *)self)->srtp.outbound);
}

static PyMethodDef Session_methods[] = {
    {"protect", Session_protect, METH_O, "protect(rtp) -> SRTP packet"},
    {"protect_rtcp", Session_protect_rtcp, METH_O, "protect_rtcp(rtcp) -> SRTCP packet"},
    {"unprotect", Session_unprotect, METH_O, "unprotect(srtp) -> RTP packet"},
    {"unprotect_rtcp", Session_unprotect_rtcp, METH_O, "unprotect_rtcp(srtcp) -> RTCP packet"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"profile", Session_get_profile, NULL, "libsrtp profile number", NULL},
    {"outbound", Session_get_outbound, NULL, "True: protects; False: unprotects", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Session",
    .tp_doc = "Session(profile, key_and_salt, outbound): one direction of a leg's SRTP",
    .tp_basicsize = sizeof(SessionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
};

static PyObject *module_key_and_salt_length(PyObject *module, PyObject *arg)
{
    (void)module;
    long profile = PyLong_AsLong(arg);
    if (profile == -1 && PyErr_Occurred()) {
        return NULL;
    }
    size_t n = profile >= INT_MIN && profile <= INT_MAX
                   ? native_srtp_key_and_salt_length((int)profile)
                   : 0;
    if (n == 0) {
        return PyErr_Format(PyExc_ValueError, "unsupported SRTP profile %ld", profile);
    }
    return PyLong_FromSize_t(n);
}

static PyMethodDef module_methods[] = {
    {"key_and_salt_length", module_key_and_salt_length, METH_O,
     "key_and_salt_length(profile) -> master key + salt length in bytes"},
    {NULL, NULL, 0, NULL},
};

/* Session, SrtpError and the constants, into relay._native (module.c). */
int native_srtp_setup_module(PyObject *module)
{
    if (PyType_Ready(&SessionType) < 0) {
        return -1;
    }
    if (SrtpError == NULL) {
        SrtpError = PyErr_NewExceptionWithDoc(
            "relay._native.SrtpError",
            "An SRTP operation failed; .status is libsrtp's srtp_err_status_t.", NULL, NULL);
    }
    if (SrtpError == NULL || PyModule_AddObjectRef(module, "SrtpError", SrtpError) < 0 ||
        PyModule_AddObjectRef(module, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddFunctions(module, module_methods) < 0 ||
        PyModule_AddIntConstant(module, "SRTP_AES128_CM_SHA1_80", NATIVE_SRTP_AES128_CM_SHA1_80) <
            0 ||
        PyModule_AddIntConstant(module, "SRTP_AEAD_AES_128_GCM", NATIVE_SRTP_AEAD_AES_128_GCM) < 0 ||
        PyModule_AddIntConstant(module, "SRTP_AEAD_AES_256_GCM", NATIVE_SRTP_AEAD_AES_256_GCM) < 0 ||
        PyModule_AddIntConstant(module, "MAX_PACKET", NATIVE_SRTP_MAX_PACKET) < 0 ||
        PyModule_AddIntConstant(module, "PROTECT_HEADROOM", NATIVE_SRTP_PROTECT_HEADROOM) < 0 ||
        PyModule_AddStringConstant(module, "LIBSRTP_VERSION", srtp_get_version_string()) < 0) {
        return -1;
    }
    return 0;
}
#endif
