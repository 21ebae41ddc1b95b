/* fatdispatch._native: the raw CPU probe.
 *
 * Only raw facts leave this file (CPUID registers, XCR0, auxv words, sysctl
 * values); turning them into feature names is pure Python (_cpu.py), so that
 * recorded machines can be replayed in tests.  This file is compiled with the
 * compiler's baseline flags and must never need more than the oldest CPU of
 * its architecture.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define FD_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#include <immintrin.h>
#else
#include <cpuid.h>
#endif
#endif

#if defined(__linux__)
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#if defined(_WIN32)
#include <windows.h>
#endif

#ifdef FD_X86
static void fd_cpuid(unsigned int leaf, unsigned int sub, unsigned int r[4])
{
#if defined(_MSC_VER)
    int regs[4];
    __cpuidex(regs, (int)leaf, (int)sub);
    r[0] = (unsigned int)regs[0]; r[1] = (unsigned int)regs[1];
    r[2] = (unsigned int)regs[2]; r[3] = (unsigned int)regs[3];
#else
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

/* XGETBV(0).  Only called when CPUID.1:ECX.OSXSAVE is set: otherwise it is #UD. */
static unsigned long long fd_xgetbv0(void)
{
#if defined(_MSC_VER)
    return (unsigned long long)_xgetbv(0);
#else
    unsigned int eax, edx;
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
#endif
}

static PyObject *regs_tuple(const unsigned int r[4])
{
    return Py_BuildValue("(IIII)", r[0], r[1], r[2], r[3]);
}

/* x86() -> dict of raw CPUID leaves and XCR0 (None when XGETBV is not allowed). */
static PyObject *native_x86(PyObject *self, PyObject *unused)
{
    unsigned int r0[4] = {0}, r1[4] = {0}, r7[4] = {0}, r71[4] = {0}, e0[4] = {0}, e1[4] = {0};
    char vendor[13];
    PyObject *xcr0, *result;

    fd_cpuid(0, 0, r0);
    memcpy(vendor, &r0[1], 4);
    memcpy(vendor + 4, &r0[3], 4);
    memcpy(vendor + 8, &r0[2], 4);
    vendor[12] = 0;
    if (r0[0] >= 1)
        fd_cpuid(1, 0, r1);
    if (r0[0] >= 7) {
        fd_cpuid(7, 0, r7);
        if (r7[0] >= 1)
            fd_cpuid(7, 1, r71);
    }
    fd_cpuid(0x80000000u, 0, e0);
    if (e0[0] >= 0x80000001u)
        fd_cpuid(0x80000001u, 0, e1);

    if (r1[2] & (1u << 27)) {
        xcr0 = PyLong_FromUnsignedLongLong(fd_xgetbv0());
        if (xcr0 == NULL)
            return NULL;
    } else {
        Py_INCREF(Py_None);
        xcr0 = Py_None;
    }
    result = Py_BuildValue(
        "{s:I,s:s,s:N,s:N,s:N,s:I,s:N,s:N}",
        "max_leaf", r0[0], "vendor", vendor,
        "1", regs_tuple(r1), "7", regs_tuple(r7), "7.1", regs_tuple(r71),
        "max_ext", e0[0], "0x80000001", regs_tuple(e1), "xcr0", xcr0);
    return result;
}

/* request_amx() -> bool: ask Linux for permission to use AMX tile data
 * (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).  Without it the first AMX
 * instruction raises SIGILL. */
static PyObject *native_request_amx(PyObject *self, PyObject *unused)
{
#if defined(__linux__) && defined(__x86_64__) && defined(SYS_arch_prctl)
    long rc = syscall(SYS_arch_prctl, 0x1023, 18);
    return PyBool_FromLong(rc == 0);
#elif defined(_WIN32) || defined(__APPLE__)
    Py_RETURN_TRUE;   /* these kernels grant AMX state without a request */
#else
    Py_RETURN_FALSE;
#endif
}
#endif /* FD_X86 */

#if defined(__linux__)
/* hwcaps() -> (AT_HWCAP, AT_HWCAP2) */
static PyObject *native_hwcaps(PyObject *self, PyObject *unused)
{
    unsigned long h1 = getauxval(AT_HWCAP);
#ifdef AT_HWCAP2
    unsigned long h2 = getauxval(AT_HWCAP2);
#else
    unsigned long h2 = 0;
#endif
    return Py_BuildValue("(kk)", h1, h2);
}
#endif

#if defined(__APPLE__)
/* sysctl(name) -> int or None when the name does not exist (ENOENT). */
static PyObject *native_sysctl(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    long long value = 0;
    size_t size = sizeof(value);
    if (name == NULL)
        return NULL;
    if (sysctlbyname(name, &value, &size, NULL, 0) != 0)
        Py_RETURN_NONE;
    if (size == sizeof(int))
        return PyLong_FromLong((long)*(int *)&value);
    return PyLong_FromLongLong(value);
}
#endif

#if defined(_WIN32)
/* processor_feature(id) -> bool */
static PyObject *native_processor_feature(PyObject *self, PyObject *arg)
{
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(IsProcessorFeaturePresent((DWORD)id) ? 1 : 0);
}
#endif

static PyMethodDef native_methods[] = {
#ifdef FD_X86
    {"x86", native_x86, METH_NOARGS, "Raw CPUID leaves and XCR0."},
    {"request_amx", native_request_amx, METH_NOARGS, "Ask the kernel for AMX tile state."},
#endif
#if defined(__linux__)
    {"hwcaps", native_hwcaps, METH_NOARGS, "(AT_HWCAP, AT_HWCAP2)."},
#endif
#if defined(__APPLE__)
    {"sysctl", native_sysctl, METH_O, "An integer sysctl, or None."},
#endif
#if defined(_WIN32)
    {"processor_feature", native_processor_feature, METH_O, "IsProcessorFeaturePresent."},
#endif
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "fatdispatch's raw CPU probe.", 0, native_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
