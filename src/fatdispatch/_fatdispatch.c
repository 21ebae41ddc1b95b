/* _fatdispatch: fatdispatch's compiled helper: the import path of a cached pick (install, the meta-path
 * finder and loader, the cache lookup), the raw CPU probe, the x86 feature decoder and a strict JSON reader.
 *
 * A top-level module, so that neither a cached pick nor a CPU probe needs a Python package: a fat package's
 * __init__ calls _fatdispatch.install(), and ``import _fatdispatch; _fatdispatch.cpu()`` probes.  Everything
 * else (no cached pick, a failed load, the decision, the reports) is fatdispatch's Python, which shares this
 * module's registry.  Compiled with FD_PROBE_ONLY (_fatdispatch_cpu.c) it is the CPU probe alone.
 *
 * Raw probes (x86, hwcaps, sysctl, processor_feature) return plain facts: CPUID registers, XCR0, auxv words,
 * sysctl values.  x86_decode turns raw CPUID/XCR0 facts into usable feature names; it is a pure function of
 * its argument, so tests replay recorded machines through it.  cpu() is the two together plus the x86-64
 * level.  The table is generated from fatdispatch/_data/cpu_features.json (_cpu_table.h).  loads() reads JSON
 * without importing the json package, which costs a millisecond on the import path.  This file is compiled
 * with the compiler's baseline flags and must never need more than the oldest CPU of its architecture.
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
static int fd_request_amx(void)
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

/* x86() -> dict of raw CPUID leaves and XCR0 (None when XGETBV is not allowed), plus "amx_permission" where
 * it was asked and, on macOS, "translated" and "macos_avx512". */
static PyObject *facts_dict(const fd_facts *fp)
{
    const fd_facts f = *fp;
    char vendor[13];
    PyObject *result;
    int i;

    memcpy(vendor, &f.r0[1], 4);
    memcpy(vendor + 4, &f.r0[3], 4);
    memcpy(vendor + 8, &f.r0[2], 4);
    vendor[12] = 0;
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

/* ------------------------------------------------------------------ module state */

typedef struct {
#ifdef FD_X86
    PyObject *names[FD_NBITS];   /* interned feature names, in table order; made on first use (not on the
                                    import path of a cached pick, which needs none) */
    PyObject *levels;            /* x86_levels(): 4 frozensets, levels 1-4; made on first use */
#endif
    PyObject *registry;          /* {fullname: variants folder} of the registered fat modules */
    PyObject *hits;              /* {fullname: (build, path)} bound from the pick cache */
} native_state;

#ifdef FD_X86
static PyObject *names_set(native_state *st, unsigned long long mask)
{
    PyObject *set;
    int i;
    if (st->names[FD_NBITS - 1] == NULL) {
        for (i = 0; i < FD_NBITS; i++)
            if (st->names[i] == NULL && (st->names[i] = PyUnicode_InternFromString(FD_BITS[i].name)) == NULL)
                return NULL;
    }
    set = PyFrozenSet_New(NULL);
    if (set == NULL)
        return NULL;
    for (i = 0; i < FD_NBITS; i++) {
        if (((mask >> i) & 1) && PySet_Add(set, st->names[i]) < 0) {
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
    seq = PySequence_Fast(item, "a CPUID leaf must be a sequence of 4 integers");
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) == 0) {
        Py_DECREF(seq);
        return 0;
    }
    if (PySequence_Fast_GET_SIZE(seq) != 4) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "CPUID leaf %s: expected 4 registers", key);
        return -1;
    }
    for (i = 0; i < 4; i++) {
        PyObject *n = PyNumber_Index(PySequence_Fast_GET_ITEM(seq, i));
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

/* Decode facts: the usable features (*usable_out) and the masked groups, a list of
 * (why, group, xcr0_mask, features) for every group of present features that is not usable;
 * why is "osxsave", "xcr0", "amx_permission" or "rosetta". */
static PyObject *decode(native_state *st, const fd_facts *f, unsigned long long *usable_out)
{
    unsigned long long present = 0, usable;
    int i;
    PyObject *masked;

    for (i = 0; i < FD_NBITS; i++) {
        const fd_bit *b = &FD_BITS[i];
        if ((f->regs[b->leaf][b->reg] >> b->bit) & 1)
            present |= 1ULL << i;
    }
    masked = PyList_New(0);
    if (masked == NULL)
        return NULL;
    usable = present;
    for (i = 0; i < FD_NSTATES; i++) {
        const fd_state *s = &FD_STATES[i];
        unsigned long long hit = present & s->features;
        const char *why = NULL;
        if (hit == 0)
            continue;
        if (strcmp(s->group, "zmm") == 0 && f->macos_avx512)
            continue;  /* macOS enables ZMM state on first use; its sysctl says it will */
        if (!f->has_xcr0)
            why = "osxsave";
        else if ((f->xcr0 & s->xcr0_mask) != s->xcr0_mask)
            why = "xcr0";
        else if (strcmp(s->group, "amx") == 0 && f->amx_permission == 0)
            why = "amx_permission";
        if (why != NULL) {
            usable &= ~hit;
            if (add_masked(masked, st, why, s->group, s->xcr0_mask, hit) < 0)
                goto fail;
        }
    }
    if (f->translated && (usable & FD_ROSETTA_HIDDEN)) {
        unsigned long long hidden = usable & FD_ROSETTA_HIDDEN;
        usable &= ~hidden;
        if (add_masked(masked, st, "rosetta", "", 0, hidden) < 0)
            goto fail;
    }
    *usable_out = usable;
    return masked;
fail:
    Py_DECREF(masked);
    return NULL;
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
static PyObject *native_cpu(PyObject *self, PyObject *unused)
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

#ifndef FD_PROBE_ONLY  /* everything below up to the method table: the import path's helpers */

/* ------------------------------------------------------------------ the pick cache's raw facts
 *
 * The pick cache (fatdispatch/__init__.py, section 4) is checked on every import of a fat module, so the
 * facts its key is made of are gathered here in one call each rather than in a dozen Python-level calls. */

#if defined(__linux__)
#include <fcntl.h>
#include <sys/stat.h>

/* file_ids(paths) -> [mtime_ns, size, inode, ...] for every path (stat, following symlinks), or None if one
 * cannot be stat'ed. */
static int append_ll(PyObject *list, long long value)
{
    PyObject *n = PyLong_FromLongLong(value);
    int rc = n == NULL ? -1 : PyList_Append(list, n);
    Py_XDECREF(n);
    return rc;
}

static PyObject *native_file_ids(PyObject *self, PyObject *paths)
{
    PyObject *seq = PySequence_Fast(paths, "file_ids() takes a sequence of paths"), *out;
    Py_ssize_t i, n;
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    out = PyList_New(0);
    for (i = 0; out != NULL && i < n; i++) {
        PyObject *bytes = NULL;
        struct stat st;
        int rc;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &bytes)) {
            Py_CLEAR(out);
            break;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = stat(PyBytes_AS_STRING(bytes), &st);
        Py_END_ALLOW_THREADS
        Py_DECREF(bytes);
        if (rc != 0) {
            Py_DECREF(out);
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
        if (append_ll(out, (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec) < 0 ||
            append_ll(out, (long long)st.st_size) < 0 || append_ll(out, (long long)st.st_ino) < 0)
            Py_CLEAR(out);
    }
    Py_DECREF(seq);
    return out;
}

/* read_private(path, limit) -> bytes, or None when the file is missing, not a regular file, a symlink,
 * not owned by this user, writable by group or others, or larger than limit. */
static PyObject *read_private(const char *path, Py_ssize_t limit)
{
    PyObject *data;
    Py_ssize_t got = 0;
    struct stat st;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        Py_RETURN_NONE;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022) ||
        st.st_size > limit) {
        close(fd);
        Py_RETURN_NONE;
    }
    data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)st.st_size);
    if (data == NULL) {
        close(fd);
        return NULL;
    }
    while (got < (Py_ssize_t)st.st_size) {
        ssize_t r = read(fd, PyBytes_AS_STRING(data) + got, (size_t)(st.st_size - got));
        if (r <= 0)
            break;
        got += r;
    }
    close(fd);
    if (got != (Py_ssize_t)st.st_size) {
        Py_DECREF(data);
        Py_RETURN_NONE;  /* changed while read: no cache */
    }
    return data;
}

static PyObject *native_read_private(PyObject *self, PyObject *args)
{
    PyObject *bytes = NULL, *data;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O&n", PyUnicode_FSConverter, &bytes, &limit))
        return NULL;
    data = read_private(PyBytes_AS_STRING(bytes), limit);
    Py_DECREF(bytes);
    return data;
}
#endif

#if defined(FD_X86) && defined(__linux__)
/* cpu_key() -> list: the raw CPUID words x86() reads (leaf 0, leaves 1, 7, 7.1 and 0x80000001, the
 * maximum extended leaf), XCR0 (None without OSXSAVE) and the AMX permission answer (None: not asked,
 * False: refused, True: granted).  Leaf 1 EBX bits 31-24, the APIC id of the core that ran CPUID, are
 * masked: not a feature, and different on every core. */
static PyObject *native_cpu_key(PyObject *self, PyObject *unused)
{
    fd_facts f;
    PyObject *out;
    int i, k;
    fd_read(&f);
    out = PyList_New(0);
    for (i = -1; out != NULL && i < FD_NLEAVES; i++) {
        for (k = 0; k < 4; k++) {
            unsigned long long v = i < 0 ? f.r0[k] : f.regs[i][k];
            PyObject *n;
            if (i == 0 && k == 1)
                v &= 0x00FFFFFFULL;   /* leaf 1 EBX: bits 24-31 are the APIC id of the core this runs on */
            n = PyLong_FromUnsignedLongLong(v);
            if (n == NULL || PyList_Append(out, n) < 0) {
                Py_XDECREF(n);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(n);
        }
    }
    if (out != NULL) {
        PyObject *tail = Py_BuildValue("[IOO]", f.max_ext, Py_None, f.amx_permission < 0 ? Py_None
                                       : f.amx_permission ? Py_True : Py_False);
        if (tail != NULL && f.has_xcr0) {
            PyObject *x = PyLong_FromUnsignedLongLong(f.xcr0);
            if (x == NULL || PyList_SetItem(tail, 1, x) < 0)
                Py_CLEAR(tail);
        }
        if (tail == NULL || PyList_SetSlice(out, 4 + 4 * FD_NLEAVES, 4 + 4 * FD_NLEAVES, tail) < 0)
            Py_CLEAR(out);
        Py_XDECREF(tail);
    }
    return out;
}
#endif

/* ------------------------------------------------------------------ strict JSON
 *
 * loads(data: bytes | str) -> object.  RFC 8259 with Python's json semantics (objects -> dict, the last of
 * duplicate keys wins, integers of any size, floats that overflow become inf), but strict: no NaN or
 * Infinity, no control characters in strings, nothing after the value, nesting at most FD_JSON_DEPTH.
 * Errors are ValueError naming the byte offset. */

#define FD_JSON_DEPTH 512

typedef struct {
    const char *start, *p, *end;
    int depth;
} jp;

static PyObject *jp_fail(jp *j, const char *what)
{
    PyErr_Format(PyExc_ValueError, "%s at byte %zd", what, (Py_ssize_t)(j->p - j->start));
    return NULL;
}

static void jp_ws(jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static PyObject *jp_value(jp *j);

static int jp_hex4(jp *j, unsigned int *out)
{
    unsigned int v = 0;
    int i;
    if (j->end - j->p < 4)
        return -1;
    for (i = 0; i < 4; i++) {
        char c = j->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned int)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned int)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned int)(c - 'A' + 10);
        else return -1;
    }
    j->p += 4;
    *out = v;
    return 0;
}

/* A string; j->p is just past the opening quote. */
static PyObject *jp_string(jp *j)
{
    const char *run = j->p;
    PyObject *parts = NULL, *piece, *result;

    for (;;) {
        unsigned char c;
        if (j->p >= j->end)
            goto unterminated;
        c = (unsigned char)*j->p;
        if (c == '"' && parts == NULL) {  /* the common case: no escapes */
            result = PyUnicode_DecodeUTF8(run, j->p - run, "strict");
            j->p++;
            if (result == NULL)
                return jp_fail(j, "invalid UTF-8 in a string");
            return result;
        }
        if (c == '"' || c == '\\') {
            if (parts == NULL && (parts = PyList_New(0)) == NULL)
                return NULL;
            piece = PyUnicode_DecodeUTF8(run, j->p - run, "strict");
            if (piece == NULL) {
                Py_DECREF(parts);
                return jp_fail(j, "invalid UTF-8 in a string");
            }
            if (PyList_Append(parts, piece) < 0) {
                Py_DECREF(piece);
                goto error;
            }
            Py_DECREF(piece);
            if (c == '"') {
                PyObject *empty = PyUnicode_FromStringAndSize(NULL, 0);
                j->p++;
                if (empty == NULL)
                    goto error;
                result = PyUnicode_Join(empty, parts);
                Py_DECREF(empty);
                Py_DECREF(parts);
                return result;
            }
            j->p++;  /* the backslash */
            if (j->p >= j->end)
                goto unterminated;
            c = (unsigned char)*j->p++;
            {
                unsigned int cp;
                switch (c) {
                case '"': cp = '"'; break;
                case '\\': cp = '\\'; break;
                case '/': cp = '/'; break;
                case 'b': cp = '\b'; break;
                case 'f': cp = '\f'; break;
                case 'n': cp = '\n'; break;
                case 'r': cp = '\r'; break;
                case 't': cp = '\t'; break;
                case 'u':
                    if (jp_hex4(j, &cp) < 0) {
                        Py_DECREF(parts);
                        return jp_fail(j, "invalid \\u escape");
                    }
                    if (cp >= 0xD800 && cp <= 0xDBFF && j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
                        unsigned int lo;
                        const char *save = j->p;
                        j->p += 2;
                        if (jp_hex4(j, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF)
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        else
                            j->p = save;  /* a lone high surrogate, as Python's json keeps it */
                    }
                    break;
                default:
                    j->p--;
                    Py_DECREF(parts);
                    return jp_fail(j, "invalid escape");
                }
                piece = PyUnicode_FromOrdinal((int)cp);
                if (piece == NULL || PyList_Append(parts, piece) < 0) {
                    Py_XDECREF(piece);
                    goto error;
                }
                Py_DECREF(piece);
            }
            run = j->p;
            continue;
        }
        if (c < 0x20) {
            Py_XDECREF(parts);
            return jp_fail(j, "control character in a string");
        }
        j->p++;
    }
unterminated:
    Py_XDECREF(parts);
    return jp_fail(j, "unterminated string");
error:
    Py_XDECREF(parts);
    return NULL;
}

static PyObject *jp_number(jp *j)
{
    const char *s = j->p;
    int is_float = 0;
    char small[64], *buf;
    Py_ssize_t n;
    PyObject *result;

    if (j->p < j->end && *j->p == '-')
        j->p++;
    if (j->p >= j->end)
        return jp_fail(j, "expected a digit");
    if (*j->p == '0')
        j->p++;
    else if (*j->p >= '1' && *j->p <= '9')
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    else
        return jp_fail(j, "expected a value");
    if (j->p < j->end && *j->p == '.') {
        is_float = 1;
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return jp_fail(j, "expected a digit after '.'");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        is_float = 1;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return jp_fail(j, "expected a digit in the exponent");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    n = j->p - s;
    if (!is_float && n <= 18) {  /* fits a long long */
        long long v = 0;
        const char *q = s + (*s == '-');
        for (; q < j->p; q++)
            v = v * 10 + (*q - '0');
        return PyLong_FromLongLong(*s == '-' ? -v : v);
    }
    buf = n < (Py_ssize_t)sizeof(small) ? small : (char *)PyMem_Malloc((size_t)n + 1);
    if (buf == NULL)
        return PyErr_NoMemory();
    memcpy(buf, s, (size_t)n);
    buf[n] = 0;
    if (is_float) {
        double d = PyOS_string_to_double(buf, NULL, NULL);
        result = (d == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(d);
    } else {
        result = PyLong_FromString(buf, NULL, 10);  /* honours sys.set_int_max_str_digits */
    }
    if (buf != small)
        PyMem_Free(buf);
    return result;
}

static PyObject *jp_literal(jp *j, const char *word, PyObject *value)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return jp_fail(j, "expected a value");
    j->p += n;
    Py_INCREF(value);
    return value;
}

/* After '[' or '{': 1 if the container closes at once (consumed), else 0. */
static int jp_empty(jp *j, char close)
{
    jp_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 1;
    }
    return 0;
}

/* After an item: 1 for ',' (another item follows), 0 for the closing bracket, -1 (error set) otherwise. */
static int jp_next(jp *j, char close)
{
    jp_ws(j);
    if (j->p < j->end && (*j->p == ',' || *j->p == close))
        return *j->p++ == ',';
    jp_fail(j, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
    return -1;
}

static PyObject *jp_array(jp *j)
{
    PyObject *list = PyList_New(0), *v;
    int more;
    if (list == NULL || jp_empty(j, ']'))
        return list;
    do {
        v = jp_value(j);
        if (v == NULL || PyList_Append(list, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(v);
        more = jp_next(j, ']');
    } while (more == 1);
    if (more < 0)
        Py_CLEAR(list);
    return list;
}

static PyObject *jp_object(jp *j)
{
    PyObject *dict = PyDict_New(), *k, *v;
    int more;
    if (dict == NULL || jp_empty(j, '}'))
        return dict;
    do {
        jp_ws(j);
        if (j->p >= j->end || *j->p != '"') {
            Py_DECREF(dict);
            return jp_fail(j, "expected a string key");
        }
        j->p++;
        k = jp_string(j);
        if (k == NULL) {
            Py_DECREF(dict);
            return NULL;
        }
        PyUnicode_InternInPlace(&k);
        jp_ws(j);
        if (j->p >= j->end || *j->p != ':') {
            Py_DECREF(k);
            Py_DECREF(dict);
            return jp_fail(j, "expected ':'");
        }
        j->p++;
        v = jp_value(j);
        if (v == NULL || PyDict_SetItem(dict, k, v) < 0) {
            Py_DECREF(k);
            Py_XDECREF(v);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
        more = jp_next(j, '}');
    } while (more == 1);
    if (more < 0)
        Py_CLEAR(dict);
    return dict;
}

static PyObject *jp_value(jp *j)
{
    PyObject *v;
    jp_ws(j);
    if (j->p >= j->end)
        return jp_fail(j, "expected a value");
    switch (*j->p) {
    case '{':
    case '[':
        if (++j->depth > FD_JSON_DEPTH)
            return jp_fail(j, "nested deeper than 512 levels");
        j->p++;
        v = j->p[-1] == '{' ? jp_object(j) : jp_array(j);
        j->depth--;
        return v;
    case '"':
        j->p++;
        return jp_string(j);
    case 't':
        return jp_literal(j, "true", Py_True);
    case 'f':
        return jp_literal(j, "false", Py_False);
    case 'n':
        return jp_literal(j, "null", Py_None);
    default:
        return jp_number(j);
    }
}

static PyObject *native_loads(PyObject *self, PyObject *arg)
{
    jp j;
    Py_ssize_t size;
    PyObject *v;
    if (PyBytes_Check(arg)) {
        j.start = PyBytes_AS_STRING(arg);
        size = PyBytes_GET_SIZE(arg);
    } else if (PyUnicode_Check(arg)) {
        j.start = PyUnicode_AsUTF8AndSize(arg, &size);
        if (j.start == NULL)
            return NULL;  /* lone surrogates: UnicodeEncodeError, a ValueError */
    } else {
        PyErr_Format(PyExc_TypeError, "loads() takes bytes or str, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    j.p = j.start;
    j.end = j.start + size;
    j.depth = 0;
    v = jp_value(&j);
    if (v == NULL)
        return NULL;
    jp_ws(&j);
    if (j.p != j.end) {
        Py_DECREF(v);
        return jp_fail(&j, "extra data after the JSON value");
    }
    return v;
}

/* ------------------------------------------------------------------ the pick cache's lookup
 *
 * The whole check of a cached pick (fatdispatch/__init__.py, section 4) in one call: on the import path every
 * line of Python costs several times its warm price, and this runs on every import of a fat module. */

#if defined(__linux__)
#define FD_PICKS_SCHEMA 2          /* fatdispatch.PICKS_SCHEMA; test_picks checks they agree */
#define FD_PICKS_DIR "picks-v2"    /* fatdispatch.PICKS_DIR */
static const char *const FD_DRIVER_FILES[] = {   /* fatdispatch.LINUX_DRIVER_FILES: an NVIDIA driver is installed */
    "/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libnvidia-ml.so.1", NULL};

/* An attribute of an already imported module (the import system's own: always loaded), new reference. */
static PyObject *loaded_attr(const char *module, const char *name)
{
    PyObject *mods = PySys_GetObject("modules"), *mod = mods == NULL ? NULL : PyDict_GetItemString(mods, module);
    if (mod == NULL) {
        PyErr_Format(PyExc_ImportError, "%s is not loaded", module);
        return NULL;
    }
    return PyObject_GetAttrString(mod, name);
}

#if defined(FD_X86) && defined(__linux__)
extern char **environ;

/* The key a pick is cached under: [EXTENSION_SUFFIXES[0], file_ids of fatdispatch/_runtime.py,
 * fatdispatch/_cpu.py (beside this module), this module's file and the folder's manifest.json, cpu_key()];
 * None when one of those files cannot be stat'ed (a frozen application, say). */
static PyObject *make_key(PyObject *self, PyObject *variants)
{
    PyObject *own = PyModule_GetFilenameObject(self), *dir, *paths, *ids, *cpu, *suffixes, *key;
    Py_ssize_t slash;
    if (own == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    slash = PyUnicode_FindChar(own, '/', 0, PyUnicode_GET_LENGTH(own), -1);
    if (slash < 0) {
        Py_DECREF(own);
        if (slash == -2)
            return NULL;
        Py_RETURN_NONE;
    }
    dir = PyUnicode_Substring(own, 0, slash);
    paths = dir == NULL ? NULL : Py_BuildValue("(NNON)", PyUnicode_FromFormat("%U/fatdispatch/_runtime.py", dir),
                                               PyUnicode_FromFormat("%U/fatdispatch/_cpu.py", dir), own,
                                               PyUnicode_FromFormat("%U/manifest.json", variants));
    Py_XDECREF(dir);
    Py_DECREF(own);
    if (paths == NULL)
        return NULL;
    ids = native_file_ids(self, paths);
    Py_DECREF(paths);
    if (ids == NULL || ids == Py_None)
        return ids;
    suffixes = loaded_attr("_frozen_importlib_external", "EXTENSION_SUFFIXES");
    if (suffixes == NULL || !PyList_Check(suffixes) || PyList_GET_SIZE(suffixes) == 0) {
        Py_XDECREF(suffixes);
        Py_DECREF(ids);
        return NULL;
    }
    cpu = native_cpu_key(self, NULL);
    key = cpu == NULL ? NULL : Py_BuildValue("[ONN]", PyList_GET_ITEM(suffixes, 0), ids, cpu);
    if (cpu == NULL)
        Py_DECREF(ids);
    Py_DECREF(suffixes);
    return key;
}

/* pick_key(variants_dir) -> the key its pick is cached under (see make_key), or None. */
static PyObject *native_pick_key(PyObject *self, PyObject *variants)
{
    if (!PyUnicode_Check(variants)) {
        PyErr_SetString(PyExc_TypeError, "pick_key() takes the variants folder (str)");
        return NULL;
    }
    return make_key(self, variants);
}

/* 1 when entry[name] exists and equals want, 0 when not, -1 on error. */
static int item_equals(PyObject *entry, const char *name, PyObject *want)
{
    PyObject *have = PyDict_GetItemString(entry, name);
    return have == NULL ? 0 : PyObject_RichCompareBool(have, want, Py_EQ);
}

/* [mtime_ns, size, inode, device] of a regular file (lstat: a symlink is not one), or None. */
static PyObject *identity(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
        Py_RETURN_NONE;
    return Py_BuildValue("[LLKK]", (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                         (long long)st.st_size, (unsigned long long)st.st_ino, (unsigned long long)st.st_dev);
}

/* The cached pick of variants (new reference), or None (new reference), or NULL with an exception.
 *
 * None unless: no FATDISPATCH_* variable is set; the entry file ($XDG_CACHE_HOME or ~/.cache, then
 * fatdispatch/picks-v2/<device>-<inode>.json of the folder) is private to this user and holds schema 2 for this
 * very folder; its key equals make_key(); its path is a str inside the folder (no ".."), its build a str; the file
 * at path is the regular file of the recorded identity; and, for a module with CUDA builds, no NVIDIA driver is
 * installed (GPU facts decide there). */
/* The pick cache's file for a variants folder: $XDG_CACHE_HOME (or ~/.cache, the base absolute, as
 * fatdispatch._runtime.cache_root requires)/fatdispatch/picks-v2/<device>-<inode of the folder>.json, written
 * into file.  1: written; 0: none (no usable base, the folder missing, too long); -1: error set. */
static int entry_file(PyObject *variants, char *file, size_t size)
{
    const char *base = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    PyObject *vbytes = NULL;
    struct stat st;
    int n = -1;
    if (!PyUnicode_FSConverter(variants, &vbytes))
        return -1;
    if (stat(PyBytes_AS_STRING(vbytes), &st) == 0) {
        if (base != NULL && *base)
            n = base[0] == '/' ? snprintf(file, size, "%s/fatdispatch/" FD_PICKS_DIR "/%lx-%lx.json", base,
                                          (unsigned long)st.st_dev, (unsigned long)st.st_ino) : -1;
        else if (home != NULL && home[0] == '/')
            n = snprintf(file, size, "%s/.cache/fatdispatch/" FD_PICKS_DIR "/%lx-%lx.json", home,
                         (unsigned long)st.st_dev, (unsigned long)st.st_ino);
    }
    Py_DECREF(vbytes);
    return n >= 0 && (size_t)n < size;
}

/* pick_file(variants_dir) -> where its pick is cached (what lookup reads and _runtime.remember_pick writes),
 * or None. */
static PyObject *native_pick_file(PyObject *self, PyObject *variants)
{
    char file[4096];
    int rc;
    if (!PyUnicode_Check(variants)) {
        PyErr_SetString(PyExc_TypeError, "pick_file() takes the variants folder (str)");
        return NULL;
    }
    rc = entry_file(variants, file, sizeof(file));
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(file);
}

/* file_identity(path) -> [mtime_ns, size, inode, device] of a regular file, or None (see identity). */
static PyObject *native_file_identity(PyObject *self, PyObject *path)
{
    PyObject *bytes = NULL, *out;
    if (!PyUnicode_FSConverter(path, &bytes))
        return NULL;
    out = identity(PyBytes_AS_STRING(bytes));
    Py_DECREF(bytes);
    return out;
}

static PyObject *lookup(PyObject *self, PyObject *variants)
{
    PyObject *data = NULL, *entry = NULL, *key = NULL, *want = NULL, *path, *build;
    PyObject *pbytes = NULL, *prefix = NULL, *parts = NULL, *dots = NULL;
    char file[4096];
    int ok = 0, n;
    char **e;

    for (e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, "FATDISPATCH_", 12) == 0)
            Py_RETURN_NONE;   /* every FATDISPATCH_* variable takes the full path */
    n = entry_file(variants, file, sizeof(file));
    if (n < 0)
        return NULL;
    if (n == 0)
        goto done;
    data = read_private(file, 1 << 16);
    if (data == NULL || data == Py_None)
        goto done;
    entry = native_loads(self, data);
    if (entry == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError))
            PyErr_Clear();  /* a corrupt entry is a miss */
        goto done;
    }
    if (!PyDict_CheckExact(entry))
        goto done;
    {
        PyObject *sch = PyDict_GetItemString(entry, "schema");
        int overflow = 0;
        if (sch == NULL || !PyLong_CheckExact(sch) || PyLong_AsLongAndOverflow(sch, &overflow) != FD_PICKS_SCHEMA ||
            overflow)
            goto done;
    }
    if ((n = item_equals(entry, "variants", variants)) <= 0)
        goto done;
    key = make_key(self, variants);
    if (key == NULL || key == Py_None || (n = item_equals(entry, "key", key)) <= 0)
        goto done;
    path = PyDict_GetItemString(entry, "path");
    build = PyDict_GetItemString(entry, "build");
    if (path == NULL || build == NULL || !PyUnicode_CheckExact(path) || !PyUnicode_CheckExact(build))
        goto done;
    prefix = PyUnicode_FromFormat("%U/", variants);
    if (prefix == NULL || (n = (int)PyUnicode_Tailmatch(path, prefix, 0, PY_SSIZE_T_MAX, -1)) <= 0)
        goto done;
    dots = PyUnicode_FromString("/");
    parts = dots == NULL ? NULL : PyUnicode_Split(path, dots, -1);
    Py_CLEAR(dots);
    dots = PyUnicode_FromString("..");
    if (parts == NULL || dots == NULL || (n = PySequence_Contains(parts, dots)) != 0)
        goto done;
    if (!PyUnicode_FSConverter(path, &pbytes))
        goto done;
    want = identity(PyBytes_AS_STRING(pbytes));
    if (want == NULL || want == Py_None || (n = item_equals(entry, "identity", want)) <= 0)
        goto done;
    {
        PyObject *cuda = PyDict_GetItemString(entry, "cuda");
        int has_cuda = cuda == NULL ? 0 : PyObject_IsTrue(cuda), k;
        if (has_cuda < 0)
            goto done;
        for (k = 0; has_cuda && FD_DRIVER_FILES[k] != NULL; k++)
            if (access(FD_DRIVER_FILES[k], F_OK) == 0)
                goto done;   /* an NVIDIA driver: the full path asks NVML (or its own cache) */
    }
    ok = 1;
done:
    Py_XDECREF(data);
    Py_XDECREF(key);
    Py_XDECREF(want);
    Py_XDECREF(pbytes);
    Py_XDECREF(prefix);
    Py_XDECREF(parts);
    Py_XDECREF(dots);
    if (PyErr_Occurred()) {
        Py_XDECREF(entry);
        return NULL;
    }
    if (!ok) {
        Py_XDECREF(entry);
        Py_RETURN_NONE;
    }
    return entry;
}
#else
static PyObject *lookup(PyObject *self, PyObject *variants)
{
    Py_RETURN_NONE;   /* the pick cache needs Linux x86-64 */
}
#endif

/* cached_pick(variants_dir) -> the pick cache's entry for the folder, or None (see lookup). */
static PyObject *native_cached_pick(PyObject *self, PyObject *variants)
{
    if (!PyUnicode_Check(variants)) {
        PyErr_SetString(PyExc_TypeError, "cached_pick() takes the variants folder (str)");
        return NULL;
    }
    return lookup(self, variants);
}

/* ------------------------------------------------------------------ install() and the finder
 *
 * The import path of a fat package when its pick is cached, with no Python package imported: a fat package's
 * __init__ calls _fatdispatch.install(); this module itself is the meta-path finder and the loader of cached
 * picks.  Anything else (no cached pick, a failed load, discovery of fat modules) is handed to fatdispatch's
 * Python code, which shares this module's registry. */

/* fatdispatch._runtime.<name>(*args), importing fatdispatch (the full path). */
static PyObject *call_runtime(const char *name, PyObject *args)
{
    PyObject *runtime = PyImport_ImportModule("fatdispatch._runtime"), *fn, *out;
    if (runtime == NULL)
        return NULL;
    fn = PyObject_GetAttrString(runtime, name);
    Py_DECREF(runtime);
    if (fn == NULL)
        return NULL;
    out = PyObject_CallObject(fn, args);
    Py_DECREF(fn);
    return out;
}

static PyObject *os_environ(void)
{
    PyObject *os = PyImport_ImportModule("os"), *env;
    if (os == NULL)
        return NULL;
    env = PyObject_GetAttrString(os, "environ");
    Py_DECREF(os);
    return env;
}

/* register(fullname, variants_dir): one fat module; this module goes first on sys.meta_path. */
static PyObject *native_register(PyObject *self, PyObject *args)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    PyObject *name, *folder, *meta = PySys_GetObject("meta_path");
    int has;
    if (!PyArg_ParseTuple(args, "UU", &name, &folder))
        return NULL;
    if (meta == NULL || !PyList_Check(meta)) {
        PyErr_SetString(PyExc_RuntimeError, "sys.meta_path is not a list");
        return NULL;
    }
    if (PyDict_SetItem(st->registry, name, folder) < 0)
        return NULL;
    has = PySequence_Contains(meta, self);
    if (has < 0 || (has == 0 && PyList_Insert(meta, 0, self) < 0))
        return NULL;
    Py_RETURN_NONE;
}

/* install(package, modules=None): what fatdispatch.install does, without importing fatdispatch when every
 * module's <name>.variants folder is in the package; discovery (modules=None) and anything else go to
 * fatdispatch._runtime.install_slowly. */
static PyObject *native_install(PyObject *self, PyObject *args)
{
    PyObject *package, *modules = Py_None, *pkg, *paths = NULL, *seq = NULL, *found = NULL, *out = NULL;
    Py_ssize_t i, j, n, np;
    if (!PyArg_ParseTuple(args, "U|O", &package, &modules))
        return NULL;
    pkg = PyDict_GetItemWithError(PySys_GetObject("modules"), package);
    if (pkg == NULL && PyErr_Occurred())
        return NULL;
    if (pkg != NULL) {
        PyObject *p = PyObject_GetAttrString(pkg, "__path__");
        paths = p == NULL ? NULL : PySequence_List(p);   /* a list, or a namespace package's _NamespacePath */
        Py_XDECREF(p);
        if (paths == NULL)
            PyErr_Clear();
    }
    if (modules == Py_None || paths == NULL || PyList_GET_SIZE(paths) == 0)
        goto slowly;
    seq = PySequence_Fast(modules, "install() takes a list of module names");
    found = PyList_New(0);
    if (seq == NULL || found == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    np = PyList_GET_SIZE(paths);
    for (i = 0; i < n; i++) {   /* every module's folder first: registering some and failing on one is no use */
        PyObject *mod = PySequence_Fast_GET_ITEM(seq, i), *hit = NULL;
        if (!PyUnicode_Check(mod))
            goto slowly;
        for (j = 0; j < np && hit == NULL; j++) {
            PyObject *folder = PyUnicode_FromFormat("%S/%U.variants", PyList_GET_ITEM(paths, j), mod), *b = NULL;
            struct stat st;
            if (folder == NULL || !PyUnicode_FSConverter(folder, &b)) {
                Py_XDECREF(folder);
                goto done;
            }
            if (stat(PyBytes_AS_STRING(b), &st) == 0 && S_ISDIR(st.st_mode))
                hit = Py_BuildValue("(NO)", PyUnicode_FromFormat("%U.%U", package, mod), folder);
            Py_DECREF(b);
            Py_DECREF(folder);
            if (hit != NULL && PyList_Append(found, hit) < 0) {
                Py_DECREF(hit);
                goto done;
            }
            if (hit == NULL && PyErr_Occurred())
                goto done;
        }
        if (hit == NULL)
            goto slowly;   /* install_slowly says which folder is missing */
        Py_DECREF(hit);
    }
    for (i = 0; i < PyList_GET_SIZE(found); i++) {
        PyObject *r = native_register(self, PyList_GET_ITEM(found, i));
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    Py_INCREF(Py_None);
    out = Py_None;
    goto done;
slowly:
    {
        PyObject *a = Py_BuildValue("(OO)", package, modules);
        out = a == NULL ? NULL : call_runtime("install_slowly", a);
        Py_XDECREF(a);
    }
done:
    Py_XDECREF(seq);
    Py_XDECREF(found);
    Py_XDECREF(paths);
    return out;
}

/* find_spec(fullname, path=None, target=None): None for modules not registered; a spec this module loads for a
 * cached pick; else fatdispatch._runtime.find_spec_fully (the manifest, the probe, the decision). */
static PyObject *native_find_spec(PyObject *self, PyObject *args)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    PyObject *name, *path = Py_None, *target = Py_None, *folder, *entry, *spec = NULL;
    if (!PyArg_ParseTuple(args, "U|OO", &name, &path, &target))
        return NULL;
    folder = PyDict_GetItemWithError(st->registry, name);
    if (folder == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(folder);
    entry = lookup(self, folder);
    if (entry == NULL)
        PyErr_Clear();   /* a cache must never break an import: the full path decides instead */
    if (entry == NULL || entry == Py_None) {
        PyObject *env = os_environ(), *a = env == NULL ? NULL : Py_BuildValue("(OOO)", name, folder, env);
        spec = a == NULL ? NULL : call_runtime("find_spec_fully", a);
        Py_XDECREF(a);
        Py_XDECREF(env);
    } else {
        PyObject *cls = loaded_attr("_frozen_importlib", "ModuleSpec"), *a = NULL, *kw = NULL;
        if (cls != NULL) {
            a = Py_BuildValue("(OO)", name, self);
            kw = Py_BuildValue("{s:O,s:(OO)}", "origin", folder, "loader_state", folder, entry);
        }
        if (a != NULL && kw != NULL)
            spec = PyObject_Call(cls, a, kw);
        Py_XDECREF(cls);
        Py_XDECREF(a);
        Py_XDECREF(kw);
    }
    Py_XDECREF(entry);
    Py_DECREF(folder);
    return spec;
}

/* Load the extension file at path as module name with CPython's own machinery (its init runs here). */
static PyObject *load_extension(PyObject *name, PyObject *path)
{
    PyObject *loader_cls = loaded_attr("_frozen_importlib_external", "ExtensionFileLoader");
    PyObject *spec_cls = loaded_attr("_frozen_importlib", "ModuleSpec"), *imp = PyImport_ImportModule("_imp");
    PyObject *loader = NULL, *spec = NULL, *module = NULL, *r;
    if (loader_cls != NULL && spec_cls != NULL && imp != NULL)
        loader = PyObject_CallFunctionObjArgs(loader_cls, name, path, NULL);
    if (loader != NULL) {
        PyObject *a = Py_BuildValue("(OO)", name, loader), *kw = Py_BuildValue("{s:O}", "origin", path);
        spec = a == NULL || kw == NULL ? NULL : PyObject_Call(spec_cls, a, kw);
        Py_XDECREF(a);
        Py_XDECREF(kw);
    }
    if (spec != NULL)
        module = PyObject_CallMethod(imp, "create_dynamic", "O", spec);
    /* as importlib sets them before exec: pybind11 3's exec slot reads __spec__.name */
    if (module != NULL && (PyObject_SetAttrString(module, "__spec__", spec) < 0
                           || PyObject_SetAttrString(module, "__file__", path) < 0))
        Py_CLEAR(module);
    if (module != NULL) {
        r = PyObject_CallMethod(imp, "exec_dynamic", "O", module);
        if (r == NULL)
            Py_CLEAR(module);
        Py_XDECREF(r);
    }
    Py_XDECREF(loader_cls);
    Py_XDECREF(spec_cls);
    Py_XDECREF(imp);
    Py_XDECREF(loader);
    Py_XDECREF(spec);
    return module;
}

#ifdef FD_X86
#define FD_AMX_GRANTED() fd_request_amx()
#else
#define FD_AMX_GRANTED() 0
#endif

/* create_module(spec): the cached pick, loaded; on any failure fatdispatch._runtime.create_fully retries on
 * the full path (which records why and falls back to the next build). */
static PyObject *native_create_module(PyObject *self, PyObject *spec)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    PyObject *name = NULL, *state = NULL, *folder, *entry, *build, *path, *module = NULL, *amx;
    int ok = 0;
    name = PyObject_GetAttrString(spec, "name");
    state = name == NULL ? NULL : PyObject_GetAttrString(spec, "loader_state");
    if (state == NULL || !PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 2) {
        Py_XDECREF(name);
        Py_XDECREF(state);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ImportError, "_fatdispatch.create_module: not a spec of _fatdispatch.find_spec");
        return NULL;
    }
    folder = PyTuple_GET_ITEM(state, 0);
    entry = PyTuple_GET_ITEM(state, 1);
    build = PyDict_GetItemString(entry, "build");
    path = PyDict_GetItemString(entry, "path");
    amx = PyDict_GetItemString(entry, "amx");
    if (build != NULL && path != NULL && (amx == NULL || !PyObject_IsTrue(amx) || FD_AMX_GRANTED()))
        module = load_extension(name, path);
    if (module != NULL) {
        PyObject *hit = Py_BuildValue("(OO)", build, path);
        ok = hit != NULL && PyObject_SetAttrString(spec, "origin", path) == 0 &&
             PyObject_SetAttrString(spec, "has_location", Py_True) == 0 &&
             PyObject_SetAttrString(module, "__fatdispatch_variant__", build) == 0 &&
             PyDict_SetItem(st->hits, name, hit) == 0;
        Py_XDECREF(hit);
    }
    if (!ok) {
        PyObject *a;
        Py_CLEAR(module);
        PyErr_Clear();
        a = Py_BuildValue("(OO)", spec, folder);
        module = a == NULL ? NULL : call_runtime("create_fully", a);
        Py_XDECREF(a);
    } else {
        /* Log only where the application already uses logging (fatdispatch._runtime.log_decision). */
        PyObject *logging = PyDict_GetItemString(PySys_GetObject("modules"), "logging");
        if (logging != NULL) {
            PyObject *logger = PyObject_CallMethod(logging, "getLogger", "s", "fatdispatch"), *level, *on = NULL;
            level = logger == NULL ? NULL : PyObject_GetAttrString(logging, "DEBUG");
            if (level != NULL)
                on = PyObject_CallMethod(logger, "isEnabledFor", "O", level);
            if (on != NULL && PyObject_IsTrue(on)) {
                PyObject *a = Py_BuildValue("(O)", name), *r = a == NULL ? NULL : call_runtime("log_decision", a);
                Py_XDECREF(a);
                Py_XDECREF(r);
            }
            Py_XDECREF(logger);
            Py_XDECREF(level);
            Py_XDECREF(on);
            if (PyErr_Occurred())
                PyErr_Clear();   /* logging trouble never fails an import */
        }
    }
    Py_DECREF(name);
    Py_DECREF(state);
    return module;
}

static PyObject *native_exec_module(PyObject *self, PyObject *module)
{
    Py_RETURN_NONE;   /* executed in create_module */
}

static PyObject *native_invalidate_caches(PyObject *self, PyObject *unused)
{
    Py_RETURN_NONE;
}

static PyObject *native_registry(PyObject *self, PyObject *unused)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    Py_INCREF(st->registry);
    return st->registry;
}

static PyObject *native_hits(PyObject *self, PyObject *unused)
{
    native_state *st = (native_state *)PyModule_GetState(self);
    Py_INCREF(st->hits);
    return st->hits;
}
#endif /* __linux__ */

#endif /* FD_PROBE_ONLY */

static PyMethodDef native_methods[] = {
#ifdef FD_X86
    {"x86", native_x86, METH_NOARGS, "Raw CPUID leaves and XCR0."},
    {"request_amx", native_request_amx, METH_NOARGS, "Ask the kernel for AMX tile state."},
    {"x86_decode", native_x86_decode, METH_O, "(usable features, masked groups) from raw CPUID facts."},
    {"x86_levels", native_x86_levels, METH_NOARGS, "The features of the x86-64 levels 1-4."},
    {"cpu", native_cpu, METH_NOARGS, "This process's CPU, decoded (x86 and x86_decode together, with the level)."},
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
#ifndef FD_PROBE_ONLY
    {"loads", native_loads, METH_O, "Parse one strict JSON document (bytes or str)."},
#if defined(__linux__)
    {"file_ids", native_file_ids, METH_O, "[mtime_ns, size, inode, ...] of each path, or None."},
    {"read_private", native_read_private, METH_VARARGS, "A private regular file's bytes, or None."},
#endif
#if defined(FD_X86) && defined(__linux__)
    {"cpu_key", native_cpu_key, METH_NOARGS, "The raw CPUID/XCR0 words, APIC id masked."},
    {"pick_key", native_pick_key, METH_O, "The key a variants folder's pick is cached under, or None."},
    {"pick_file", native_pick_file, METH_O, "Where a variants folder's pick is cached, or None."},
    {"file_identity", native_file_identity, METH_O, "[mtime_ns, size, inode, device] of a regular file, or None."},
#endif
#if defined(__linux__)
    {"cached_pick", native_cached_pick, METH_O, "The pick cache's entry for a variants folder, or None."},
    {"install", native_install, METH_VARARGS, "install(package, modules=None): register a package's fat modules."},
    {"register", native_register, METH_VARARGS, "register(fullname, variants_dir): one fat module."},
    {"registry", native_registry, METH_NOARGS, "The registered fat modules: {fullname: variants folder}."},
    {"hits", native_hits, METH_NOARGS, "The modules bound from the pick cache: {fullname: (build, path)}."},
    {"find_spec", native_find_spec, METH_VARARGS, "Meta-path finder: registered fat modules only."},
    {"create_module", native_create_module, METH_O, "Loader of cached picks."},
    {"exec_module", native_exec_module, METH_O, "Nothing: create_module ran the extension's init."},
    {"invalidate_caches", native_invalidate_caches, METH_NOARGS, "Nothing to invalidate."},
#endif
#endif /* FD_PROBE_ONLY */
    {NULL, NULL, 0, NULL}
};

static int native_traverse(PyObject *module, visitproc visit, void *arg)
{
    native_state *st = (native_state *)PyModule_GetState(module);
    if (st == NULL)
        return 0;
#ifdef FD_X86
    {
        int i;
        for (i = 0; i < FD_NBITS; i++)
            Py_VISIT(st->names[i]);
    }
    Py_VISIT(st->levels);
#endif
    Py_VISIT(st->registry);
    Py_VISIT(st->hits);
    return 0;
}

static int native_clear(PyObject *module)
{
    native_state *st = (native_state *)PyModule_GetState(module);
    if (st == NULL)
        return 0;
#ifdef FD_X86
    {
        int i;
        for (i = 0; i < FD_NBITS; i++)
            Py_CLEAR(st->names[i]);
    }
    Py_CLEAR(st->levels);
#endif
    Py_CLEAR(st->registry);
    Py_CLEAR(st->hits);
    return 0;
}

static void native_free(void *module)
{
    native_clear((PyObject *)module);
}

#ifndef FD_PROBE_ONLY
static int native_exec(PyObject *module)
{
    native_state *st = (native_state *)PyModule_GetState(module);
    st->registry = PyDict_New();
    st->hits = PyDict_New();
    if (st->registry == NULL || st->hits == NULL)
        return -1;
#if defined(__linux__)
    {
        PyObject *drivers;
        Py_ssize_t k, n = 0;
        while (FD_DRIVER_FILES[n] != NULL)
            n++;
        drivers = PyTuple_New(n);
        for (k = 0; drivers != NULL && k < n; k++) {
            PyObject *f = PyUnicode_FromString(FD_DRIVER_FILES[k]);
            if (f == NULL)
                Py_CLEAR(drivers);
            else
                PyTuple_SET_ITEM(drivers, k, f);
        }
        if (drivers == NULL || PyModule_AddObject(module, "LINUX_DRIVER_FILES", drivers) < 0) {
            Py_XDECREF(drivers);
            return -1;
        }
    }
    Py_INCREF(Py_True);
    if (PyModule_AddObject(module, "_fatdispatch_finder", Py_True) < 0) {
        Py_DECREF(Py_True);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "PICKS_SCHEMA", FD_PICKS_SCHEMA) < 0 ||
        PyModule_AddStringConstant(module, "PICKS_DIR", FD_PICKS_DIR) < 0)
        return -1;
#endif
    return 0;
}

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, native_exec},
    {0, NULL}
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_fatdispatch",
    "fatdispatch's compiled helper: CPU probe, x86 feature decoder, pick cache, finder, strict JSON reader.",
    sizeof(native_state), native_methods, native_slots, native_traverse, native_clear, native_free,
};

PyMODINIT_FUNC PyInit__fatdispatch(void)
{
    return PyModuleDef_Init(&native_module);
}
#else
static PyModuleDef_Slot native_slots[] = {
    {0, NULL}
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_fatdispatch_cpu",
    "fatdispatch's CPU probe alone (the same code as _fatdispatch's): the cheapest probe to import.",
    sizeof(native_state), native_methods, native_slots, native_traverse, native_clear, native_free,
};

PyMODINIT_FUNC PyInit__fatdispatch_cpu(void)
{
    return PyModuleDef_Init(&native_module);
}
#endif
