/* relay._native: one extension module for the relay's native media path
 * (docs/native.md). Each part adds its types and constants to it. */
#ifndef RELAY_NATIVE_MODULE_H
#define RELAY_NATIVE_MODULE_H

#include <Python.h>
#include <stdint.h>

/* An int in [0, max] from a Python object into *out; -1 with TypeError or
 * ValueError (naming `name`) otherwise. */
int native_to_bounded(PyObject *value, uint64_t max, const char *name, uint64_t *out);

/* Session, SrtpError, profile constants (srtp.c). */
int native_srtp_setup_module(PyObject *module);

/* Engine, Leg (engine.c). */
int native_engine_setup_module(PyObject *module);

/* Track, Subscriber, LayerStats, parse_header, keyframe (forward.c). */
int native_forward_setup_module(PyObject *module);

/* Reception, Missing, LevelSum, nack, audio_level, level_amplitude (reception.c). */
int native_reception_setup_module(PyObject *module);

#endif
