/* fatdemo._core: Hamming distance and popcount over packed bits.
 *
 * One source, compiled once per variant.  The kernel is chosen by the
 * instruction-set macros the variant's flags define, so each build's speed
 * depends on its instruction set:
 *   baseline (x86-64):  SWAR bit counting (x86-64 v1 has no POPCNT)
 *   x86-64-v2:          the POPCNT instruction, four accumulators
 *   x86-64-v3:          AVX2 nibble lookup (VPSHUFB) + VPSADBW, 64 bytes a step
 *   x86-64-v4:          the same with AVX-512BW, 128 bytes a step
 *   CUDA builds:        the GPU (__popcll, warp reduction), see _core_cuda.cu
 * It accepts any contiguous buffer (bytes, bytearray, array.array, memoryview,
 * NumPy arrays) and needs no NumPy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512BW__)
#include <immintrin.h>
#endif

#ifndef FATDISPATCH_VARIANT
#define FATDISPATCH_VARIANT "plain"
#endif

#ifdef FATDISPATCH_CUDA
int fatdemo_cuda_hamming(const unsigned char *a, const unsigned char *b, size_t n, int xor_mode,
                         unsigned long long *out, char *err, size_t errlen);
int fatdemo_cuda_device(char *name, size_t len, int *major, int *minor, char *err, size_t errlen);
#endif

/* The instruction-set macros this build was compiled with: proof of which code is inside. */
static const char *const isa_macros[] = {
#ifdef __SSE2__
    "__SSE2__",
#endif
#ifdef __SSE3__
    "__SSE3__",
#endif
#ifdef __SSSE3__
    "__SSSE3__",
#endif
#ifdef __SSE4_1__
    "__SSE4_1__",
#endif
#ifdef __SSE4_2__
    "__SSE4_2__",
#endif
#ifdef __POPCNT__
    "__POPCNT__",
#endif
#ifdef __AVX__
    "__AVX__",
#endif
#ifdef __AVX2__
    "__AVX2__",
#endif
#ifdef __FMA__
    "__FMA__",
#endif
#ifdef __BMI2__
    "__BMI2__",
#endif
#ifdef __AVX512F__
    "__AVX512F__",
#endif
#ifdef __AVX512BW__
    "__AVX512BW__",
#endif
#ifdef __AVX512VL__
    "__AVX512VL__",
#endif
#ifdef __AVX512VPOPCNTDQ__
    "__AVX512VPOPCNTDQ__",
#endif
#if defined(__aarch64__) /* aarch64 */
#ifdef __ARM_NEON
    "__ARM_NEON",
#endif
#ifdef __ARM_FEATURE_DOTPROD
    "__ARM_FEATURE_DOTPROD",
#endif
#ifdef __ARM_FEATURE_SVE
    "__ARM_FEATURE_SVE",
#endif
#ifdef __ARM_FEATURE_SVE2
    "__ARM_FEATURE_SVE2",
#endif
#endif /* aarch64 */
    NULL
};

/* ---------------------------------------------------------------- aarch64 (kept apart from the x86 code)
 *   baseline (armv8-a):  NEON CNT per byte, pairwise widening adds, 64 bytes a step
 *   armv8.2-dotprod:     NEON CNT, byte counts summed with UDOT, 64 bytes a step
 *   armv8.2-sve:         SVE CNT on 64-bit lanes, predicated loads (no scalar tail), one vector a step
 * fd_arm_bulk() counts the bits of the first bytes and returns how many it consumed; count_bits() finishes. */
#if defined(__aarch64__)
#include <arm_neon.h>
#if defined(__ARM_FEATURE_SVE)
#include <arm_sve.h>
#define KERNEL "sve-cnt"
#elif defined(__ARM_FEATURE_DOTPROD)
#define KERNEL "neon-cnt-udot"
#else
#define KERNEL "neon-cnt"
#endif
#define FD_ARM_KERNEL 1

static size_t fd_arm_bulk(const unsigned char *a, const unsigned char *b, size_t n, int xor_mode, uint64_t *total)
{
#if defined(__ARM_FEATURE_SVE)
    const svbool_t all = svptrue_b64();
    svuint64_t acc = svdup_n_u64(0);
    for (uint64_t i = 0; i < n; i += svcntb()) {
        svbool_t pg = svwhilelt_b8_u64(i, n);
        svuint8_t x = svld1_u8(pg, a + i); /* inactive bytes read as 0 and count nothing */
        if (xor_mode)
            x = sveor_u8_z(pg, x, svld1_u8(pg, b + i));
        acc = svadd_u64_x(all, acc, svcnt_u64_x(all, svreinterpret_u64_u8(x)));
    }
    *total += svaddv_u64(all, acc);
    return n;
#else
    size_t i = 0;
    while (i + 64 <= n) {
        size_t steps = (n - i) / 64;
#if defined(__ARM_FEATURE_DOTPROD)
        const uint8x16_t ones = vdupq_n_u8(1);
        uint32x4_t acc = vdupq_n_u32(0);          /* each step adds <= 128 to a lane */
        if (steps > ((size_t)1 << 24))
            steps = (size_t)1 << 24;
#else
        uint16x8_t acc = vdupq_n_u16(0);          /* each step adds <= 64 to a lane */
        if (steps > 1023)
            steps = 1023;
#endif
        for (size_t k = 0; k < steps; k++, i += 64) {
            uint8x16_t x0 = vld1q_u8(a + i), x1 = vld1q_u8(a + i + 16);
            uint8x16_t x2 = vld1q_u8(a + i + 32), x3 = vld1q_u8(a + i + 48);
            if (xor_mode) {
                x0 = veorq_u8(x0, vld1q_u8(b + i));
                x1 = veorq_u8(x1, vld1q_u8(b + i + 16));
                x2 = veorq_u8(x2, vld1q_u8(b + i + 32));
                x3 = veorq_u8(x3, vld1q_u8(b + i + 48));
            }
            uint8x16_t c = vaddq_u8(vaddq_u8(vcntq_u8(x0), vcntq_u8(x1)), vaddq_u8(vcntq_u8(x2), vcntq_u8(x3)));
#if defined(__ARM_FEATURE_DOTPROD)
            acc = vdotq_u32(acc, c, ones);
#else
            acc = vpadalq_u8(acc, c);
#endif
        }
#if defined(__ARM_FEATURE_DOTPROD)
        *total += vaddlvq_u32(acc);
#else
        *total += vaddlvq_u16(acc);
#endif
    }
    return i;
#endif
}
#endif /* __aarch64__ */
/* ---------------------------------------------------------------- end of aarch64 */

#if defined(KERNEL)  /* set by the aarch64 block above */
#elif defined(__AVX512BW__)
#define KERNEL "avx512bw-vpshufb"
#elif defined(__AVX2__)
#define KERNEL "avx2-vpshufb"
#elif defined(__POPCNT__)
#define KERNEL "popcnt"
#else
#define KERNEL "swar"
#endif

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t pop64(uint64_t x)
{
#if defined(__POPCNT__)
    return (uint64_t)__builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
#endif
}

/* Bits set in a XOR b (xor_mode) or in a alone. */
static uint64_t count_bits(const unsigned char *a, const unsigned char *b, size_t n, int xor_mode)
{
    uint64_t total = 0;
    size_t i = 0;
#if defined(FD_ARM_KERNEL)
    i = fd_arm_bulk(a, b, n, xor_mode, &total);  /* the aarch64 block above */
#elif defined(__AVX512BW__)
    {
        const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
        const __m512i low = _mm512_set1_epi8(0x0f);
        __m512i acc = _mm512_setzero_si512();
        for (; i + 128 <= n; i += 128) {
            __m512i x0 = _mm512_loadu_si512((const void *)(a + i));
            __m512i x1 = _mm512_loadu_si512((const void *)(a + i + 64));
            if (xor_mode) {
                x0 = _mm512_xor_si512(x0, _mm512_loadu_si512((const void *)(b + i)));
                x1 = _mm512_xor_si512(x1, _mm512_loadu_si512((const void *)(b + i + 64)));
            }
            __m512i c0 = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(x0, low)),
                                         _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(x0, 4), low)));
            __m512i c1 = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(x1, low)),
                                         _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(x1, 4), low)));
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_add_epi8(c0, c1), _mm512_setzero_si512()));
        }
        total += (uint64_t)_mm512_reduce_add_epi64(acc);
    }
#elif defined(__AVX2__)
    {
        const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        const __m256i low = _mm256_set1_epi8(0x0f);
        __m256i acc = _mm256_setzero_si256();
        for (; i + 64 <= n; i += 64) {
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(a + i));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a + i + 32));
            if (xor_mode) {
                x0 = _mm256_xor_si256(x0, _mm256_loadu_si256((const __m256i *)(b + i)));
                x1 = _mm256_xor_si256(x1, _mm256_loadu_si256((const __m256i *)(b + i + 32)));
            }
            __m256i c0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x0, low)),
                                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x0, 4), low)));
            __m256i c1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x1, low)),
                                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x1, 4), low)));
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_add_epi8(c0, c1), _mm256_setzero_si256()));
        }
        total += (uint64_t)_mm256_extract_epi64(acc, 0) + (uint64_t)_mm256_extract_epi64(acc, 1)
               + (uint64_t)_mm256_extract_epi64(acc, 2) + (uint64_t)_mm256_extract_epi64(acc, 3);
    }
#else
    {
        uint64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (; i + 32 <= n; i += 32) {
            uint64_t w0 = load64(a + i), w1 = load64(a + i + 8), w2 = load64(a + i + 16), w3 = load64(a + i + 24);
            if (xor_mode) {
                w0 ^= load64(b + i); w1 ^= load64(b + i + 8); w2 ^= load64(b + i + 16); w3 ^= load64(b + i + 24);
            }
            t0 += pop64(w0); t1 += pop64(w1); t2 += pop64(w2); t3 += pop64(w3);
        }
        total += t0 + t1 + t2 + t3;
    }
#endif
    for (; i + 8 <= n; i += 8)
        total += pop64(xor_mode ? load64(a + i) ^ load64(b + i) : load64(a + i));
    for (; i < n; i++)
        total += pop64((uint64_t)(xor_mode ? (unsigned char)(a[i] ^ b[i]) : a[i]));
    return total;
}

static int get_bytes(PyObject *obj, Py_buffer *view, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous buffer (bytes, bytearray, array.array, "
                     "memoryview, numpy array), not %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

static PyObject *run(PyObject *a_obj, PyObject *b_obj)
{
    Py_buffer a, b;
    uint64_t result = 0;
    int xor_mode = b_obj != NULL;
    if (get_bytes(a_obj, &a, "a") != 0)
        return NULL;
    if (xor_mode) {
        if (get_bytes(b_obj, &b, "b") != 0) {
            PyBuffer_Release(&a);
            return NULL;
        }
        if (a.len != b.len) {
            PyErr_Format(PyExc_ValueError, "buffers differ in size: %zd and %zd bytes", a.len, b.len);
            PyBuffer_Release(&a);
            PyBuffer_Release(&b);
            return NULL;
        }
    }
#ifdef FATDISPATCH_CUDA
    {
        char err[256] = {0};
        unsigned long long out = 0;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = fatdemo_cuda_hamming((const unsigned char *)a.buf, xor_mode ? (const unsigned char *)b.buf : NULL,
                                  (size_t)a.len, xor_mode, &out, err, sizeof(err));
        Py_END_ALLOW_THREADS
        result = out;
        if (rc != 0) {
            PyBuffer_Release(&a);
            if (xor_mode)
                PyBuffer_Release(&b);
            PyErr_Format(PyExc_RuntimeError, "CUDA: %s", err);
            return NULL;
        }
    }
#else
    Py_BEGIN_ALLOW_THREADS
    result = count_bits((const unsigned char *)a.buf, xor_mode ? (const unsigned char *)b.buf : NULL,
                        (size_t)a.len, xor_mode);
    Py_END_ALLOW_THREADS
#endif
    PyBuffer_Release(&a);
    if (xor_mode)
        PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(result);
}

static PyObject *hamming(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "hamming(a, b) takes two buffers");
        return NULL;
    }
    return run(args[0], args[1]);
}

static PyObject *popcount(PyObject *self, PyObject *arg)
{
    return run(arg, NULL);
}

static PyObject *noop(PyObject *self, PyObject *unused)
{
    Py_RETURN_NONE;
}

static PyObject *build_info(PyObject *self, PyObject *unused)
{
    PyObject *macros = PyList_New(0), *d;
    if (macros == NULL)
        return NULL;
    for (const char *const *m = isa_macros; *m; m++) {
        PyObject *s = PyUnicode_FromString(*m);
        if (s == NULL || PyList_Append(macros, s) != 0) {
            Py_XDECREF(s);
            Py_DECREF(macros);
            return NULL;
        }
        Py_DECREF(s);
    }
#ifdef FATDISPATCH_CUDA
    d = Py_BuildValue("{s:s,s:s,s:N,s:O}", "variant", FATDISPATCH_VARIANT, "kernel", "cuda", "isa_macros", macros,
                      "cuda", Py_True);
#else
    d = Py_BuildValue("{s:s,s:s,s:N,s:O}", "variant", FATDISPATCH_VARIANT, "kernel", KERNEL, "isa_macros", macros,
                      "cuda", Py_False);
#endif
    return d;
}

#ifdef FATDISPATCH_CUDA
static PyObject *cuda_device(PyObject *self, PyObject *unused)
{
    char name[256] = {0}, err[256] = {0};
    int major = 0, minor = 0, rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fatdemo_cuda_device(name, sizeof(name), &major, &minor, err, sizeof(err));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_Format(PyExc_RuntimeError, "CUDA: %s", err);
        return NULL;
    }
    return Py_BuildValue("{s:s,s:(ii)}", "name", name, "compute_capability", major, minor);
}
#endif

/* ==== floating-point kernel (fatdispatch issue 15: the same results from every build) ==================
 * dot(a, b): the sum of a[i] * b[i] over two equal-size buffers of float64, added in index order.  Where a
 * build has FMA (x86-64-v3/v4) and the compiler may contract, `s += a[i] * b[i]` becomes one fused multiply-add
 * (one rounding instead of two) and the sum differs in its last bits from the baseline build's.  fatdispatch
 * compiles every build with -ffp-contract=off unless the packager opts in (fp-contract = true), so every build
 * returns the same bits; tests/test_audit.py checks both. */
static double dot_kernel(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static PyObject *dot(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer a, b;
    double s;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "dot(a, b) takes two buffers of float64");
        return NULL;
    }
    if (get_bytes(args[0], &a, "a") != 0)
        return NULL;
    if (get_bytes(args[1], &b, "b") != 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    if (a.len != b.len || a.len % (Py_ssize_t)sizeof(double) != 0) {
        PyErr_Format(PyExc_ValueError, "dot needs two buffers of float64 of one size, got %zd and %zd bytes",
                     a.len, b.len);
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    s = dot_kernel((const double *)a.buf, (const double *)b.buf, (size_t)a.len / sizeof(double));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyFloat_FromDouble(s);
}

#define FATDEMO_FP_METHODS \
    {"dot", (PyCFunction)(void (*)(void))dot, METH_FASTCALL, \
     "dot(a, b) -> float: sum of a[i]*b[i] over two float64 buffers, in index order (same bits in every build)."},
/* ==== end of the floating-point kernel ================================================================== */

static PyMethodDef methods[] = {
    {"hamming", (PyCFunction)(void (*)(void))hamming, METH_FASTCALL,
     "hamming(a, b) -> int: the number of bits that differ between two equal-size buffers."},
    {"popcount", popcount, METH_O, "popcount(a) -> int: the number of bits set in a buffer."},
    {"noop", noop, METH_NOARGS, "Does nothing (for measuring call overhead)."},
    {"build_info", build_info, METH_NOARGS, "The build's variant name, kernel and instruction-set macros."},
    FATDEMO_FP_METHODS
#ifdef FATDISPATCH_CUDA
    {"cuda_device", cuda_device, METH_NOARGS, "Name and compute capability of CUDA device 0 (initialises CUDA)."},
#endif
    {NULL, NULL, 0, NULL}
};

static PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_core", "fatdemo's kernels (one build of several; see fatdemo.variant()).", 0,
    methods, slots,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&module);
}
