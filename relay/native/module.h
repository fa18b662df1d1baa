/* relay._native: one extension module for the relay's native media path
 * (docs/native.md). Each part adds its types and constants to it. */
#ifndef RELAY_NATIVE_MODULE_H
#define RELAY_NATIVE_MODULE_H

#include <Python.h>

/* Session, SrtpError, profile constants (srtp.c). */
int native_srtp_setup_module(PyObject *module);

/* Engine, Leg (engine.c). */
int native_engine_setup_module(PyObject *module);

/* Track, Subscriber, LayerStats, parse_header, keyframe (forward.c). */
int native_forward_setup_module(PyObject *module);

#endif
