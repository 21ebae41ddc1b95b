// fatdemo's CUDA kernel: bits set in a XOR b (or in a), one 64-bit word per thread per step.
// The CUDA runtime is linked statically; libcuda.so.1 is loaded by it at the first call, so the
// module imports on machines without a driver (fatdispatch never picks it there).
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

static __global__ void count_kernel(const unsigned long long *a, const unsigned long long *b, size_t words,
                                    int xor_mode, unsigned long long *out)
{
    unsigned long long local = 0;
    size_t stride = (size_t)blockDim.x * gridDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += stride)
        local += __popcll(xor_mode ? (a[i] ^ b[i]) : a[i]);
    for (int offset = 16; offset > 0; offset /= 2)
        local += __shfl_down_sync(0xffffffffu, local, offset);
    if ((threadIdx.x & 31) == 0)
        atomicAdd(out, local);
}

static int fail(cudaError_t e, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s (%d)", what, cudaGetErrorString(e), (int)e);
    return (int)e;
}

extern "C" int fatdemo_cuda_hamming(const unsigned char *a, const unsigned char *b, size_t n, int xor_mode,
                                    unsigned long long *out, char *err, size_t errlen)
{
    size_t words = n / 8, tail = n % 8;
    unsigned long long *da = NULL, *db = NULL, *dout = NULL, result = 0;
    cudaError_t e;
    *out = 0;
    if (words > 0) {
        if ((e = cudaMalloc(&da, words * 8)) != cudaSuccess) return fail(e, "cudaMalloc", err, errlen);
        if (xor_mode && (e = cudaMalloc(&db, words * 8)) != cudaSuccess) { cudaFree(da); return fail(e, "cudaMalloc", err, errlen); }
        if ((e = cudaMalloc(&dout, 8)) != cudaSuccess) goto done;
        if ((e = cudaMemset(dout, 0, 8)) != cudaSuccess) goto done;
        if ((e = cudaMemcpy(da, a, words * 8, cudaMemcpyHostToDevice)) != cudaSuccess) goto done;
        if (xor_mode && (e = cudaMemcpy(db, b, words * 8, cudaMemcpyHostToDevice)) != cudaSuccess) goto done;
        {
            int threads = 256;
            size_t blocks = (words + threads - 1) / threads;
            if (blocks > 4096) blocks = 4096;
            count_kernel<<<(unsigned)blocks, threads>>>(da, db, words, xor_mode, dout);
        }
        if ((e = cudaGetLastError()) != cudaSuccess) goto done;
        if ((e = cudaMemcpy(&result, dout, 8, cudaMemcpyDeviceToHost)) != cudaSuccess) goto done;
    }
    e = cudaSuccess;
done:
    if (da) cudaFree(da);
    if (db) cudaFree(db);
    if (dout) cudaFree(dout);
    if (e != cudaSuccess) return fail(e, "kernel", err, errlen);
    for (size_t i = n - tail; i < n; i++)
        result += (unsigned long long)__builtin_popcount((unsigned)(xor_mode ? (a[i] ^ b[i]) : a[i]));
    *out = result;
    return 0;
}

extern "C" int fatdemo_cuda_device(char *name, size_t len, int *major, int *minor, char *err, size_t errlen)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, 0);
    if (e != cudaSuccess) return fail(e, "cudaGetDeviceProperties", err, errlen);
    snprintf(name, len, "%s", p.name);
    *major = p.major;
    *minor = p.minor;
    return 0;
}
