/* fatdispatch's compiled primitives, the things Python cannot do: CPUID and XGETBV (raw x86 facts), the x86
 * feature decoder over those facts, Linux's AMX permission request, aarch64's auxv words (getauxval), macOS
 * sysctls and Windows' IsProcessorFeaturePresent.  Part of the one compiled module _fatdispatch (its import path
 * is _fatdispatch.c; _cpuid.h is what the two share), so a probe and a cached pick cost one module load.
 *
 * x86() returns raw facts; x86_decode(raw) turns raw CPUID/XCR0 facts into usable feature names (a pure function
 * of its argument, so tests replay recorded machines through it); cpu() is the two together plus the x86-64
 * level, in one call.  The decoder's table is generated from fatdispatch/_data/cpu_features.json
 * (_cpu_table.h), the one copy of the feature vocabulary.  This file is compiled with the compiler's baseline
 * flags and must never need more than the oldest CPU of its architecture.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cpuid.h"

#ifdef FD_X86
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

#if defined(__APPLE__)
/* An integer sysctl, or -1 when the name does not exist. */
static long long fd_sysctl(const char *name)
{
    long long value = 0;
    size_t size = sizeof(value);
    if (sysctlbyname(name, &value, &size, NULL, 0) != 0)
        return -1;
    return size == sizeof(int) ? (long long)*(int *)&value : value;
}
#endif

#ifdef FD_X86
#include "_cpu_table.h"
#if FD_NBITS > FD_NBITS_MAX
#error "more x86 features than native_state holds: widen FD_NBITS_MAX in _cpuid.h"
#endif

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

/* request_amx() -> bool: ask Linux for permission to use AMX tile data
 * (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).  Without it the first AMX
 * instruction raises SIGILL. */
int fd_request_amx(void)
{
#if defined(__linux__) && defined(__x86_64__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#elif defined(_WIN32) || defined(__APPLE__)
    return 1;   /* these kernels grant AMX state without a request */
#else
    return 0;
#endif
}

static PyObject *native_request_amx(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(fd_request_amx());
}
/* The raw x86 facts of this process, gathered once per call in C (x86(), cpu() and cpu_key() share them). */
typedef struct {
    unsigned int r0[4];                     /* leaf 0: max leaf, vendor */
    unsigned int max_ext;                   /* leaf 0x80000000 EAX */
    unsigned int regs[FD_NLEAVES][4];       /* the decoded leaves, in FD_LEAVES order (0 where not available) */
    int has_xcr0;                           /* OSXSAVE set, so XGETBV may run */
    unsigned long long xcr0;
    int amx_permission;                     /* -1 not asked (no AMX tile state), 0 refused, 1 granted */
    int translated, macos_avx512;           /* macOS: Rosetta 2; ZMM state enabled on first use */
} fd_facts;

static void fd_read(fd_facts *f)
{
    int i;
    memset(f, 0, sizeof(*f));
    f->amx_permission = -1;
    fd_cpuid(0, 0, f->r0);
    {
        unsigned int e0[4];
        fd_cpuid(0x80000000u, 0, e0);
        f->max_ext = e0[0];
    }
    for (i = 0; i < FD_NLEAVES; i++) {
        unsigned int leaf = FD_LEAF_IDS[i][0], sub = FD_LEAF_IDS[i][1];
        int base = -1, k;
        if (leaf > (leaf >= 0x80000000u ? f->max_ext : f->r0[0]))
            continue;
        for (k = 0; k < i && sub > 0; k++)   /* a subleaf exists only up to subleaf 0's EAX (leaf 7) */
            if (FD_LEAF_IDS[k][0] == leaf && FD_LEAF_IDS[k][1] == 0)
                base = k;
        if (sub > 0 && (base < 0 || f->regs[base][0] < sub))
            continue;
        fd_cpuid(leaf, sub, f->regs[i]);
    }
    f->has_xcr0 = (f->regs[0][2] >> 27) & 1;   /* CPUID.1:ECX.OSXSAVE (leaf "1" is FD_LEAVES[0]) */
    if (f->has_xcr0)
        f->xcr0 = fd_xgetbv0();
    /* AMX tiles present and their XCR0 state enabled: Linux still refuses them until the process asks.
     * Asking is harmless and the answer is a fact about this process, so it is part of the raw probe. */
    {
        const fd_bit *tile = &FD_BITS[FD_AMX_TILE];
        if (((f->regs[tile->leaf][tile->reg] >> tile->bit) & 1) && f->has_xcr0 &&
            (f->xcr0 & FD_AMX_XCR0_MASK) == FD_AMX_XCR0_MASK)
            f->amx_permission = fd_request_amx();
    }
#if defined(__APPLE__)
    /* Rosetta 2 hides AVX-512/AMX behind a CPUID that may say otherwise; macOS enables ZMM state lazily. */
    f->translated = fd_sysctl("sysctl.proc_translated") > 0;
    f->macos_avx512 = fd_sysctl("hw.optional.avx512f") > 0;
#endif
}

/* The vendor string of leaf 0: its EBX, EDX, ECX (12 bytes and a NUL), and the reverse. */
static void vendor_of(const fd_facts *f, char out[13])
{
    memcpy(out, &f->r0[1], 4);
    memcpy(out + 4, &f->r0[3], 4);
    memcpy(out + 8, &f->r0[2], 4);
    out[12] = 0;
}

static void set_vendor(fd_facts *f, const char *vendor)
{
    memcpy(&f->r0[1], vendor, 4);
    memcpy(&f->r0[3], vendor + 4, 4);
    memcpy(&f->r0[2], vendor + 8, 4);
}

/* x86() -> dict of raw CPUID leaves and XCR0 (None when XGETBV is not allowed), plus "amx_permission" where
 * it was asked and, on macOS, "translated" and "macos_avx512". */
static PyObject *facts_dict(const fd_facts *fp)
{
    const fd_facts f = *fp;
    char vendor[13];
    PyObject *result;
    int i;

    vendor_of(&f, vendor);
    result = Py_BuildValue("{s:I,s:s,s:I}", "max_leaf", f.r0[0], "vendor", vendor, "max_ext", f.max_ext);
    for (i = 0; result != NULL && i < FD_NLEAVES; i++) {
        const unsigned int *r = f.regs[i];
        PyObject *t = Py_BuildValue("(IIII)", r[0], r[1], r[2], r[3]);
        if (t == NULL || PyDict_SetItemString(result, FD_LEAVES[i], t) < 0)
            Py_CLEAR(result);
        Py_XDECREF(t);
    }
    if (result != NULL) {
        PyObject *xcr0 = f.has_xcr0 ? PyLong_FromUnsignedLongLong(f.xcr0) : (Py_INCREF(Py_None), Py_None);
        if (xcr0 == NULL || PyDict_SetItemString(result, "xcr0", xcr0) < 0 ||
            (f.amx_permission >= 0 && PyDict_SetItemString(result, "amx_permission", f.amx_permission ? Py_True : Py_False) < 0)
#if defined(__APPLE__)
            || PyDict_SetItemString(result, "translated", f.translated ? Py_True : Py_False) < 0
            || PyDict_SetItemString(result, "macos_avx512", f.macos_avx512 ? Py_True : Py_False) < 0
#endif
            )
            Py_CLEAR(result);
        Py_XDECREF(xcr0);
    }
    return result;
}

static PyObject *native_x86(PyObject *self, PyObject *unused)
{
    fd_facts f;
    fd_read(&f);
    return facts_dict(&f);
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
    long long value;
    if (name == NULL)
        return NULL;
    value = fd_sysctl(name);
    if (value == -1)
        Py_RETURN_NONE;
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

/* ------------------------------------------------------------------ the module state (_cpuid.h) */

#ifdef FD_X86
static PyObject *names_set(native_state *st, unsigned long long mask)
{
    PyObject *set = PyFrozenSet_New(NULL);
    int i;
    if (set == NULL)
        return NULL;
    for (i = 0; i < FD_NBITS; i++) {
        if (!((mask >> i) & 1))
            continue;
        /* each name is made the first time a set holds it, and not interned: adding some forty strings to
         * the interpreter's interned table cost ~17 us, a third of a cold probe's first call on this VM */
        if (st->names[i] == NULL && (st->names[i] = PyUnicode_FromString(FD_BITS[i].name)) == NULL) {
            Py_DECREF(set);
            return NULL;
        }
        if (PySet_Add(set, st->names[i]) < 0) {
            Py_DECREF(set);
            return NULL;
        }
    }
    return set;
}

/* x86_levels() -> the features of the x86-64 psABI levels 1-4 (each level's own), from the compiled table. */
static PyObject *native_x86_levels(PyObject *self, PyObject *unused)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    int k;
    if (st->levels == NULL) {
        PyObject *levels = PyTuple_New(4);
        for (k = 0; levels != NULL && k < 4; k++) {
            PyObject *set = names_set(st, FD_LEVELS[k]);
            if (set == NULL)
                Py_CLEAR(levels);
            else
                PyTuple_SET_ITEM(levels, k, set);
        }
        if (levels == NULL)
            return NULL;
        st->levels = levels;
    }
    Py_INCREF(st->levels);
    return st->levels;
}

/* One raw CPUID leaf from the dict: 1 = read, 0 = missing or empty (its features are absent), -1 = error. */
static int raw_leaf(PyObject *raw, const char *key, unsigned long long regs[4])
{
    PyObject *item = PyDict_GetItemString(raw, key), *seq;
    Py_ssize_t i;
    if (item == NULL || item == Py_None)
        return 0;
    seq = PySequence_Tuple(item);  /* its own tuple: an element's __index__ cannot free the others under us */
    if (seq == NULL)
        return -1;
    if (PyTuple_GET_SIZE(seq) == 0) {
        Py_DECREF(seq);
        return 0;
    }
    if (PyTuple_GET_SIZE(seq) != 4) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "CPUID leaf %s: expected 4 registers", key);
        return -1;
    }
    for (i = 0; i < 4; i++) {
        PyObject *n = PyNumber_Index(PyTuple_GET_ITEM(seq, i));
        if (n == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        regs[i] = PyLong_AsUnsignedLongLongMask(n);
        Py_DECREF(n);
        if (regs[i] == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 1;
}

static int raw_flag(PyObject *raw, const char *key)
{
    PyObject *item = PyDict_GetItemString(raw, key);
    return item == NULL ? 0 : PyObject_IsTrue(item);
}

static int add_masked(PyObject *list, native_state *st, const char *why, const char *group,
                      unsigned long long xmask, unsigned long long features)
{
    PyObject *names = names_set(st, features), *entry;
    int rc;
    if (names == NULL)
        return -1;
    entry = Py_BuildValue("(ssKN)", why, group, xmask, names);
    if (entry == NULL)
        return -1;
    rc = PyList_Append(list, entry);
    Py_DECREF(entry);
    return rc;
}

/* The facts of a raw dict (what x86() returns, or a recorded one); -1 with an exception set on a bad dict. */
static int facts_from_dict(PyObject *raw, fd_facts *f)
{
    PyObject *item;
    int i;
    if (!PyDict_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "x86_decode() takes the dict x86() returns");
        return -1;
    }
    memset(f, 0, sizeof(*f));
    for (i = 0; i < FD_NLEAVES; i++) {
        unsigned long long regs[4] = {0};
        int k;
        if (raw_leaf(raw, FD_LEAVES[i], regs) < 0)
            return -1;
        for (k = 0; k < 4; k++)
            f->regs[i][k] = (unsigned int)regs[k];
    }
    item = PyDict_GetItemString(raw, "xcr0");
    f->has_xcr0 = item != NULL && item != Py_None;
    if (f->has_xcr0) {
        PyObject *n = PyNumber_Index(item);
        if (n == NULL)
            return -1;
        f->xcr0 = PyLong_AsUnsignedLongLongMask(n);
        Py_DECREF(n);
        if (f->xcr0 == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
    }
    f->macos_avx512 = raw_flag(raw, "macos_avx512");
    f->translated = raw_flag(raw, "translated");
    if (f->macos_avx512 < 0 || f->translated < 0)
        return -1;
    item = PyDict_GetItemString(raw, "amx_permission");
    f->amx_permission = item == NULL ? -1 : item == Py_False ? 0 : 1;
    return 0;
}

/* The features present in CPUID that the OS lets this process use: every group of XSAVE state (FD_STATES) whose
 * features are present is usable only where OSXSAVE is on, XCR0 enables the group's state and, for AMX, Linux
 * granted the permission; Rosetta 2 hides some features whatever CPUID says.  why[i] says why group i is masked
 * (NULL where it is not), *hidden what Rosetta hides.  The one rule: decode() and the pick cache use it. */
static unsigned long long fd_usable_mask(const fd_facts *f, const char *why[FD_NSTATES], unsigned long long *present_out,
                                  unsigned long long *hidden)
{
    unsigned long long present = 0, usable;
    int i;
    for (i = 0; i < FD_NBITS; i++) {
        const fd_bit *b = &FD_BITS[i];
        if ((f->regs[b->leaf][b->reg] >> b->bit) & 1)
            present |= 1ULL << i;
    }
    usable = present;
    for (i = 0; i < FD_NSTATES; i++) {
        const fd_state *s = &FD_STATES[i];
        why[i] = NULL;
        if ((present & s->features) == 0)
            continue;
        if (strcmp(s->group, "zmm") == 0 && f->macos_avx512)
            continue;  /* macOS enables ZMM state on first use; its sysctl says it will */
        if (!f->has_xcr0)
            why[i] = "osxsave";
        else if ((f->xcr0 & s->xcr0_mask) != s->xcr0_mask)
            why[i] = "xcr0";
        else if (strcmp(s->group, "amx") == 0 && f->amx_permission == 0)
            why[i] = "amx_permission";
        if (why[i] != NULL)
            usable &= ~(present & s->features);
    }
    *hidden = f->translated ? usable & FD_ROSETTA_HIDDEN : 0;
    *present_out = present;
    return usable & ~*hidden;
}

/* Decode facts: the usable features (*usable_out) and the masked groups, a list of
 * (why, group, xcr0_mask, features) for every group of present features that is not usable;
 * why is "osxsave", "xcr0", "amx_permission" or "rosetta". */
static PyObject *decode(native_state *st, const fd_facts *f, unsigned long long *usable_out)
{
    const char *why[FD_NSTATES];
    unsigned long long present, hidden;
    PyObject *masked = PyList_New(0);
    int i;
    if (masked == NULL)
        return NULL;
    *usable_out = fd_usable_mask(f, why, &present, &hidden);
    for (i = 0; i < FD_NSTATES; i++) {
        const fd_state *s = &FD_STATES[i];
        if (why[i] != NULL && add_masked(masked, st, why[i], s->group, s->xcr0_mask, present & s->features) < 0)
            goto fail;
    }
    if (hidden && add_masked(masked, st, "rosetta", "", 0, hidden) < 0)
        goto fail;
    return masked;
fail:
    Py_DECREF(masked);
    return NULL;
}

/* The pick cache's view of the CPU, as the text its key compares: this process's raw CPUID/XCR0 words (raw
 * NULL) or a raw dict's (what x86() returns: the full path keys on the words its decision was made from),
 * the APIC id masked (CPUID.1:EBX bits 31-24 say which core ran CPUID, not a feature); and the mask of usable
 * features.  Python objects only for a dict: a pick cache hit makes none.  The length, or -1 with an
 * exception (a bad dict, a short buffer). */
int fd_words(PyObject *raw, char *out, size_t n, unsigned long long *usable)
{
    fd_facts f;
    const char *why[FD_NSTATES];
    unsigned long long present, hidden;
    char vendor[13];
    int i, len;
    if (raw == NULL) {
        fd_read(&f);
    } else {
        static const char *const keys[2] = {"max_leaf", "max_ext"};
        unsigned int *dest[2] = {&f.r0[0], &f.max_ext};
        PyObject *v;
        if (facts_from_dict(raw, &f) < 0)
            return -1;
        for (i = 0; i < 2; i++) {
            v = PyDict_GetItemString(raw, keys[i]);
            *dest[i] = v == NULL ? 0 : (unsigned int)PyLong_AsUnsignedLongLongMask(v);
            if (PyErr_Occurred())
                return -1;
        }
        v = PyDict_GetItemString(raw, "vendor");
        if (v != NULL) {
            const char *t = PyUnicode_AsUTF8(v);
            if (t == NULL || strlen(t) != 12) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "raw CPU facts: the vendor is 12 characters");
                return -1;
            }
            set_vendor(&f, t);
        }
        if (PyErr_Occurred())
            return -1;
    }
    vendor_of(&f, vendor);
    for (i = 0; i < 12; i++)  /* the key is one line of text */
        if (vendor[i] < 0x21 || vendor[i] > 0x7e)
            vendor[i] = '?';
    len = snprintf(out, n, "%x %s %x %llx %d", f.r0[0], vendor, f.max_ext, f.has_xcr0 ? f.xcr0 : ~0ULL,
                   f.amx_permission);
    for (i = 0; i < FD_NLEAVES && len > 0 && (size_t)len < n; i++) {
        unsigned int ebx = FD_LEAF_IDS[i][0] == 1 ? f.regs[i][1] & 0x00FFFFFFu : f.regs[i][1];
        len += snprintf(out + len, n - (size_t)len, " %x:%x:%x:%x", f.regs[i][0], ebx, f.regs[i][2], f.regs[i][3]);
    }
    if (len < 0 || (size_t)len >= n) {
        PyErr_SetString(PyExc_ValueError, "raw CPU facts do not fit the pick key");
        return -1;
    }
    *usable = fd_usable_mask(&f, why, &present, &hidden);
    return len;
}

/* 1 where every name of a space-separated list (n bytes) is a feature of the table set in usable; 0 where one
 * is not, or is not in the table. */
int fd_names_usable(unsigned long long usable, const char *names, size_t n)
{
    size_t at = 0;
    while (at < n) {
        size_t end = at;
        int k;
        while (end < n && names[end] != ' ')
            end++;
        for (k = 0; k < FD_NBITS; k++)
            if (strlen(FD_BITS[k].name) == end - at && memcmp(FD_BITS[k].name, names + at, end - at) == 0)
                break;
        if (end > at && (k == FD_NBITS || !((usable >> k) & 1)))
            return 0;
        at = end + 1;
    }
    return 1;
}

/* x86_decode(raw) -> (usable, masked)
 *
 * raw: the dict x86() returns (or a recorded one): leaves "1", "7", "7.1", "0x80000001" as 4 registers
 * (missing or empty: not available), "xcr0" (None when OSXSAVE is off), optional "amx_permission" (False: Linux
 * refused AMX state), "macos_avx512" (macOS enables ZMM state lazily and says so in a sysctl), "translated"
 * (Rosetta 2).  usable: frozenset of the features present in CPUID *and* enabled by the OS; masked: as decode().
 * A pure function of its argument, so tests replay recorded machines through it. */
static PyObject *native_x86_decode(PyObject *self, PyObject *raw)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    unsigned long long usable;
    fd_facts f;
    PyObject *masked;
    if (facts_from_dict(raw, &f) < 0 || (masked = decode(st, &f, &usable)) == NULL)
        return NULL;
    return Py_BuildValue("(NN)", names_set(st, usable), masked);
}

/* cpu() -> this process's CPU, decoded: {"arch", "vendor", "features" (usable), "x86_64_level" (0-4; None on
 * 32-bit x86), "masked" (as x86_decode), "raw" (what x86() returns)}.  What fatdispatch.hardware().cpu reports
 * on x86, for callers that want a probe without importing the package. */
PyObject *fd_cpu(PyObject *self, PyObject *unused)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    unsigned long long usable;
    const char *arch;
    fd_facts f;
    PyObject *raw, *masked, *level;
    fd_read(&f);
    raw = facts_dict(&f);
    if (raw == NULL)
        return NULL;
    masked = decode(st, &f, &usable);
    if (masked == NULL) {
        Py_DECREF(raw);
        return NULL;
    }
#if defined(__x86_64__) || defined(_M_X64)
    {
        long k = 0;
        while (k < 4 && (usable & FD_LEVELS[k]) == FD_LEVELS[k])
            k++;  /* levels nest: v4 needs all of v1-v3 too */
        level = PyLong_FromLong(k);
    }
    arch = "x86_64";
#else
    Py_INCREF(Py_None);
    level = Py_None;
    arch = "i686";
#endif
    return Py_BuildValue("{s:s,s:O,s:N,s:N,s:N,s:N}", "arch", arch, "vendor", PyDict_GetItemString(raw, "vendor"),
                         "features", names_set(st, usable), "x86_64_level", level, "masked", masked, "raw", raw);
}
#endif /* FD_X86 */



PyMethodDef fd_cpu_methods[] = {
#ifdef FD_X86
    {"x86", native_x86, METH_NOARGS, "Raw CPUID leaves and XCR0."},
    {"request_amx", native_request_amx, METH_NOARGS, "Ask the kernel for AMX tile state."},
    {"x86_decode", native_x86_decode, METH_O, "(usable features, masked groups) from raw CPUID facts."},
    {"x86_levels", native_x86_levels, METH_NOARGS, "The features of the x86-64 levels 1-4."},
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

int fd_cpu_traverse(native_state *st, visitproc visit, void *arg)
{
#ifdef FD_X86
    int i;
    for (i = 0; i < FD_NBITS; i++)
        Py_VISIT(st->names[i]);
    Py_VISIT(st->levels);
#endif
    return 0;
}

void fd_cpu_clear(native_state *st)
{
#ifdef FD_X86
    int i;
    for (i = 0; i < FD_NBITS; i++)
        Py_CLEAR(st->names[i]);
    Py_CLEAR(st->levels);
#endif
}
