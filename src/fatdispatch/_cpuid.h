/* What the two sources of the compiled module _fatdispatch share: _cpuid.c (the CPU primitives) and
 * _fatdispatch.c (the import path, and the module).  The module state starts with _cpuid.c's part, so the
 * primitives cast the module's state to native_state. */
#ifndef FATDISPATCH_CPUID_H
#define FATDISPATCH_CPUID_H
#include <Python.h>
#include <stddef.h>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define FD_X86 1
#define FD_NBITS_MAX 64
#endif

typedef struct {
#ifdef FD_X86
    PyObject *names[FD_NBITS_MAX]; /* interned feature names, in table order; made on first use (not on the
                                      import path of a cached pick, which needs none) */
    PyObject *levels;              /* x86_levels(): 4 frozensets, levels 1-4; made on first use */
#endif
    int unused;                    /* no empty struct where there is no x86 part */
} native_state;

extern PyMethodDef fd_cpu_methods[];      /* x86, x86_decode, x86_levels, cpu, request_amx, hwcaps, ... */
int fd_cpu_traverse(native_state *st, visitproc visit, void *arg);
void fd_cpu_clear(native_state *st);
int fd_request_amx(void);                  /* 1: this process may use AMX tiles */
#ifdef FD_X86
PyObject *fd_cpu(PyObject *module, PyObject *unused);   /* cpu(): this process's CPU, decoded */
int fd_words(PyObject *raw, char *out, size_t n, unsigned long long *usable);  /* the key's CPU words */
int fd_names_usable(unsigned long long usable, const char *names, size_t n);    /* every listed feature usable */
#endif

#endif
