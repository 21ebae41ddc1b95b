/* A simulated libnvidia-ml.so.1 for tests, compiled against NVIDIA's own nvml.h (PyPI nvidia-nvml-dev).
 *
 * It answers the NVML calls fatdispatch's ctypes binding and nvidia-ml-py make while probing, from the machine
 * description machine.json next to this library (see sim_machine.h and tests/simdriver/__init__.py):
 *
 *   "nvidia": {"driver_version": "580.65.06", "cuda_driver_version": 13000,
 *              "nvml_errors": {"nvmlInit": 9, ...},     call name (or its unversioned name) -> nvmlReturn_t
 *              "nvml_hang": "nvmlInit_v2",             a call (or a list of calls) that never returns
 *              "devices": [{"name", "uuid", "compute_capability": [9, 0], "pci_bus_id", "pci_device_id",
 *                           "mig_mode": 1 | 0 | null (null: MIG not supported), "max_mig_devices",
 *                           "mig": [{"uuid": "MIG-...", "gi": 1, "ci": 0}], "errors": {call: code}}]}
 *
 * As the real library does, nvmlSystemGetCudaDriverVersion_v2 asks libcuda.so.1 (cuDriverGetVersion) and fails
 * with NVML_ERROR_LIBRARY_NOT_FOUND where it cannot be loaded; the unversioned call then reports a version anyway.
 * Every call checks the initialisation count (NVML_ERROR_UNINITIALIZED) and argument pointers. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include "nvml.h"
#include "sim_machine.h"

#define MAX_DEVS 64
#define MAX_MIGS 16
#define MAGIC_GPU 0x47505521u
#define MAGIC_MIG 0x4d494721u

struct nvmlDevice_st {
    unsigned magic;
    int index;          /* physical index, or MIG slot */
    int parent;         /* MIG: parent's index */
    const jnode *desc;  /* device or MIG description */
};

static struct nvmlDevice_st devs[MAX_DEVS];
static struct nvmlDevice_st migs[MAX_DEVS][MAX_MIGS];
static int ndevs;
static int init_count;

static const jnode *nv(void) { return sim_nvidia((const void *)&nv); }

static int name_matches(const char *key, const char *call) {
    size_t k = strlen(key);
    if (strncmp(key, call, k)) return 0;
    const char *rest = call + k;
    return !*rest || !strcmp(rest, "_v2") || !strcmp(rest, "_v3") || !strcmp(rest, "WithFlags");
}

static nvmlReturn_t fault_in(const jnode *errors, const char *call) {
    if (!errors || errors->kind != J_OBJ) return NVML_SUCCESS;
    for (const jnode *m = errors->child; m; m = m->next)
        if (m->key && name_matches(m->key, call)) return (nvmlReturn_t)j_int(m, NVML_ERROR_UNKNOWN);
    return NVML_SUCCESS;
}

/* The injected fault for a system-level call (after a hang, if one is described). */
static nvmlReturn_t fault(const char *call) {
    const jnode *n = nv();
    sim_maybe_hang(n, "nvml_hang", call);
    return fault_in(j_get(n, "nvml_errors"), call);
}

#define CHECK_INIT() do { if (init_count <= 0) return NVML_ERROR_UNINITIALIZED; } while (0)
#define FAULT(call) do { nvmlReturn_t rc_ = fault(call); if (rc_) return rc_; } while (0)

static nvmlReturn_t dev_check(nvmlDevice_t d, const char *call, int allow_mig) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t rc = fault(call);
    if (rc) return rc;
    if (!d || (d->magic != MAGIC_GPU && d->magic != MAGIC_MIG)) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->magic == MAGIC_MIG && !allow_mig) return NVML_ERROR_NOT_SUPPORTED;
    const jnode *owner = d->magic == MAGIC_MIG ? devs[d->parent].desc : d->desc;
    return fault_in(j_get(owner, "errors"), call);
}

static nvmlReturn_t copy_string(const char *value, char *buf, unsigned int length) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t do_init(const char *call) {
    const jnode *n = nv();
    if (!sim_machine((const void *)&nv)) return NVML_ERROR_UNKNOWN;
    if (!n || n->kind != J_OBJ) return NVML_ERROR_DRIVER_NOT_LOADED;  /* a machine without an NVIDIA driver */
    FAULT(call);
    const jnode *list = j_get(n, "devices");
    ndevs = j_len(list) < MAX_DEVS ? j_len(list) : MAX_DEVS;
    for (int i = 0; i < ndevs; i++) {
        devs[i] = (struct nvmlDevice_st){MAGIC_GPU, i, -1, j_at(list, i)};
        const jnode *ml = j_get(devs[i].desc, "mig");
        for (int k = 0; k < j_len(ml) && k < MAX_MIGS; k++) migs[i][k] = (struct nvmlDevice_st){MAGIC_MIG, k, i, j_at(ml, k)};
    }
    init_count++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit(void) { return do_init("nvmlInit"); }
nvmlReturn_t nvmlInit_v2(void) { return do_init("nvmlInit_v2"); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return do_init("nvmlInitWithFlags"); }

nvmlReturn_t nvmlShutdown(void) {
    CHECK_INIT();
    FAULT("nvmlShutdown");
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    CHECK_INIT();
    FAULT("nvmlSystemGetDriverVersion");
    return copy_string(j_str(j_get(nv(), "driver_version"), ""), version, length);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    CHECK_INIT();
    FAULT("nvmlSystemGetNVMLVersion");
    char text[96];
    snprintf(text, sizeof text, "%ld.%s", j_int(j_get(nv(), "cuda_driver_version"), 0) / 1000,
             j_str(j_get(nv(), "driver_version"), ""));
    return copy_string(text, version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    CHECK_INIT();
    FAULT("nvmlSystemGetCudaDriverVersion");
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = (int)j_int(j_get(nv(), "cuda_driver_version"), 0);  /* without libcuda: "a known supported version" */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    CHECK_INIT();
    FAULT("nvmlSystemGetCudaDriverVersion_v2");
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cuda) return NVML_ERROR_LIBRARY_NOT_FOUND;
    int (*get)(int *) = (int (*)(int *))dlsym(cuda, "cuDriverGetVersion");
    if (!get) { dlclose(cuda); return NVML_ERROR_FUNCTION_NOT_FOUND; }
    int rc = get(v);
    dlclose(cuda);
    return rc == 0 ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

static nvmlReturn_t get_count(const char *call, unsigned int *count) {
    CHECK_INIT();
    FAULT(call);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)ndevs;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *c) { return get_count("nvmlDeviceGetCount", c); }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *c) { return get_count("nvmlDeviceGetCount_v2", c); }

static nvmlReturn_t by_index(const char *call, unsigned int index, nvmlDevice_t *device) {
    CHECK_INIT();
    FAULT(call);
    if (!device || index >= (unsigned)ndevs) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = fault_in(j_get(devs[index].desc, "errors"), call);
    if (rc) return rc;
    *device = &devs[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) { return by_index("nvmlDeviceGetHandleByIndex", i, d); }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) { return by_index("nvmlDeviceGetHandleByIndex_v2", i, d); }

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    CHECK_INIT();
    FAULT("nvmlDeviceGetHandleByUUID");
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < ndevs; i++) {
        if (!strcmp(j_str(j_get(devs[i].desc, "uuid"), ""), uuid)) { *device = &devs[i]; return NVML_SUCCESS; }
        for (int k = 0; k < MAX_MIGS && migs[i][k].magic; k++)
            if (!strcmp(j_str(j_get(migs[i][k].desc, "uuid"), ""), uuid)) { *device = &migs[i][k]; return NVML_SUCCESS; }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetIndex", 0);
    if (rc) return rc;
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)d->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetUUID", 1);
    return rc ? rc : copy_string(j_str(j_get(d->desc, "uuid"), ""), uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetName", 1);
    if (rc) return rc;
    const jnode *desc = d->magic == MAGIC_MIG ? devs[d->parent].desc : d->desc;
    char text[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    if (d->magic == MAGIC_MIG)
        snprintf(text, sizeof text, "%s MIG %s", j_str(j_get(desc, "name"), ""), j_str(j_get(d->desc, "profile"), "1g"));
    else
        snprintf(text, sizeof text, "%s", j_str(j_get(desc, "name"), ""));
    return copy_string(text, name, length);
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetCudaComputeCapability", 1);
    if (rc) return rc;
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    const jnode *desc = d->magic == MAGIC_MIG ? devs[d->parent].desc : d->desc;
    const jnode *cc = j_get(desc, "compute_capability");
    *major = (int)j_int(j_at(cc, 0), 0);
    *minor = (int)j_int(j_at(cc, 1), 0);
    return NVML_SUCCESS;
}

static void fill_pci(const jnode *desc, int index, nvmlPciInfo_t *pci) {
    memset(pci, 0, sizeof *pci);
    char fallback[32];
    snprintf(fallback, sizeof fallback, "00000000:%02X:00.0", index + 1);
    const char *id = j_str(j_get(desc, "pci_bus_id"), fallback);
    unsigned domain = 0, bus = 0, device = 0, function = 0;
    sscanf(id, "%x:%x:%x.%x", &domain, &bus, &device, &function);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = device;
    pci->pciDeviceId = (unsigned)j_int(j_get(desc, "pci_device_id"), 0x10DE);
    snprintf(pci->busId, sizeof pci->busId, NVML_DEVICE_PCI_BUS_ID_FMT, domain, bus, device);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT, domain, bus, device);
}

static nvmlReturn_t pci_info(const char *call, nvmlDevice_t d, nvmlPciInfo_t *pci) {
    nvmlReturn_t rc = dev_check(d, call, 0);
    if (rc) return rc;
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(d->desc, d->index, pci);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_info("nvmlDeviceGetPciInfo", d, p); }
nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_info("nvmlDeviceGetPciInfo_v2", d, p); }
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_info("nvmlDeviceGetPciInfo_v3", d, p); }

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetMigMode", 0);
    if (rc) return rc;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    const jnode *mode = j_get(d->desc, "mig_mode");
    if (!mode || mode->kind == J_NULL) return NVML_ERROR_NOT_SUPPORTED;
    *current = (unsigned)j_int(mode, 0);
    *pending = (unsigned)j_int(j_get(d->desc, "mig_mode_pending"), (long)*current);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetMaxMigDeviceCount", 0);
    if (rc) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    const jnode *mode = j_get(d->desc, "mig_mode");
    *count = mode && mode->kind != J_NULL ? (unsigned)j_int(j_get(d->desc, "max_mig_devices"), 7) : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index, nvmlDevice_t *mig) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceGetMigDeviceHandleByIndex", 0);
    if (rc) return rc;
    if (!mig || index >= MAX_MIGS) return NVML_ERROR_INVALID_ARGUMENT;
    if (j_int(j_get(d->desc, "mig_mode"), 0) != 1 || !migs[d->index][index].magic) return NVML_ERROR_NOT_FOUND;
    *mig = &migs[d->index][index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig, nvmlDevice_t *device) {
    nvmlReturn_t rc = dev_check(mig, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", 1);
    if (rc) return rc;
    if (!device || mig->magic != MAGIC_MIG) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devs[mig->parent];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned int *is_mig) {
    nvmlReturn_t rc = dev_check(d, "nvmlDeviceIsMigDeviceHandle", 1);
    if (rc) return rc;
    if (!is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = d->magic == MAGIC_MIG;
    return NVML_SUCCESS;
}

static nvmlReturn_t instance_id(nvmlDevice_t d, const char *call, const char *key, unsigned int *id) {
    nvmlReturn_t rc = dev_check(d, call, 1);
    if (rc) return rc;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->magic != MAGIC_MIG) return NVML_ERROR_NOT_SUPPORTED;
    *id = (unsigned)j_int(j_get(d->desc, key), 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id) { return instance_id(d, "nvmlDeviceGetGpuInstanceId", "gi", id); }
nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id) { return instance_id(d, "nvmlDeviceGetComputeInstanceId", "ci", id); }
