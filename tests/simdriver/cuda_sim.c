/* A simulated libcuda.so.1 (the CUDA driver API) for tests: enough for "is libcuda there, which CUDA version does
 * it report" (the simulated NVML's nvmlSystemGetCudaDriverVersion_v2 asks it, as the real one does) and a few
 * device queries. It reads the same machine.json as nvml_sim.c ("nvidia": {"cuda_driver_version", "devices",
 * "cuda_errors": {call: CUresult}, "cuda_hang": call}). It does not apply CUDA_VISIBLE_DEVICES and cannot run
 * kernels: static cudart's own entry points (cuGetProcAddress...) are absent, so a CUDA build's kernels fail with
 * a driver error here, never silently. */
#include "sim_machine.h"

typedef int CUresult;   /* CUDA_SUCCESS 0, CUDA_ERROR_INVALID_VALUE 1, CUDA_ERROR_NOT_INITIALIZED 3,
                           CUDA_ERROR_NO_DEVICE 100, CUDA_ERROR_INVALID_DEVICE 101 */
typedef int CUdevice;

static int initialised;

static const jnode *nv(void) { return sim_nvidia((const void *)&nv); }

static CUresult fault(const char *call) {
    const jnode *n = nv();
    sim_maybe_hang(n, "cuda_hang", call);
    const jnode *e = j_get(j_get(n, "cuda_errors"), call);
    return e ? (CUresult)j_int(e, 999) : 0;
}

static int count(void) { return j_len(j_get(nv(), "devices")); }

CUresult cuDriverGetVersion(int *version) {
    CUresult rc = fault("cuDriverGetVersion");
    if (rc) return rc;
    if (!version) return 1;
    *version = (int)j_int(j_get(nv(), "cuda_driver_version"), 0);
    return 0;
}

CUresult cuInit(unsigned int flags) {
    CUresult rc = fault("cuInit");
    if (rc) return rc;
    if (flags) return 1;
    if (!count()) return 100;
    initialised = 1;
    return 0;
}

CUresult cuDeviceGetCount(int *n) {
    if (!initialised) return 3;
    CUresult rc = fault("cuDeviceGetCount");
    if (rc) return rc;
    if (!n) return 1;
    *n = count();
    return 0;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!initialised) return 3;
    if (!device) return 1;
    if (ordinal < 0 || ordinal >= count()) return 101;
    *device = ordinal;
    return 0;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice device) {
    if (!initialised) return 3;
    if (!value) return 1;
    if (device < 0 || device >= count()) return 101;
    const jnode *cc = j_get(j_at(j_get(nv(), "devices"), device), "compute_capability");
    if (attribute == 75) *value = (int)j_int(j_at(cc, 0), 0);       /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
    else if (attribute == 76) *value = (int)j_int(j_at(cc, 1), 0);  /* ..._MINOR */
    else return 1;
    return 0;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice device) {
    if (!initialised) return 3;
    if (!name || len <= 0) return 1;
    if (device < 0 || device >= count()) return 101;
    snprintf(name, (size_t)len, "%s", j_str(j_get(j_at(j_get(nv(), "devices"), device), "name"), ""));
    return 0;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    if (!text) return 1;
    *text = error == 0 ? "no error" : error == 3 ? "initialization error" : error == 100 ? "no CUDA-capable device is detected"
          : error == 101 ? "invalid device ordinal" : "simulated CUDA driver error";
    return 0;
}
