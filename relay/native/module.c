/* relay._native: the module that holds the native media path's parts
 * (docs/native.md). One module, so that one copy of libsrtp's state and one
 * srtp_init serve them all. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "module.h"
#include "srtp.h"

int native_to_bounded(PyObject *value, uint64_t max, const char *name, uint64_t *out)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0 && max == UINT64_MAX) {
        unsigned long long u = PyLong_AsUnsignedLongLong(value);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
        } else {
            *out = u;
            return 0;
        }
    }
    if (overflow || v < 0 || (uint64_t)v > max) {
        PyErr_Format(PyExc_ValueError, "%s out of range [0, %llu]", name,
                     (unsigned long long)max);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay._native",
    .m_doc = "The relay's native media path: SRTP, sockets, forwarding (docs/native.md).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    int status = native_srtp_init();
    if (status != 0) {
        return PyErr_Format(PyExc_ImportError, "srtp_init failed (libsrtp status %d)", status);
    }
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) {
        return NULL;
    }
    if (native_srtp_setup_module(module) < 0 || native_engine_setup_module(module) < 0
        || native_forward_setup_module(module) < 0 || native_reception_setup_module(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
