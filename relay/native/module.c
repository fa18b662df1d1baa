/* relay._native: the module that holds the native media path's parts
 * (docs/native.md). One module, so that one copy of libsrtp's state and one
 * srtp_init serve them all. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "module.h"
#include "srtp.h"

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
        || native_forward_setup_module(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
