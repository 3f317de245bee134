/* A stand-in libnvidia-ml.so.1 for the GPU-use tests (tests/integration/test_samples.py): the NVML entry points nvidia-ml-py
 * calls when gridpilot samples a GPU, with answers the test controls through the environment. No real GPU here.
 *
 *   FAKE_NVML_GPU    the one PCI bus id it knows (any other is NVML_ERROR_NOT_FOUND)
 *   FAKE_NVML_UTIL   GPU utilisation in percent
 *   FAKE_NVML_USED   memory used, bytes (total is 16 GiB)
 *   FAKE_NVML_PROCS  compute processes: "pid:bytes,pid:bytes"
 *   FAKE_NVML_INIT   an NVML return code nvmlInit answers with (default 0, success)
 * Read at every call (getenv), so the test can change them between samples. Signatures: NVIDIA's nvml.h.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

enum { OK = 0, UNINITIALIZED = 1, INVALID_ARGUMENT = 2, NOT_FOUND = 6, INSUFFICIENT_SIZE = 7 };

static int initialised;
static struct nvmlDevice_st { int unused; } the_gpu;

static unsigned long long env_u64(const char *name, unsigned long long dflt) {
    const char *v = getenv(name);
    return v ? strtoull(v, NULL, 10) : dflt;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t r = (nvmlReturn_t)env_u64("FAKE_NVML_INIT", 0);
    if (r == OK) initialised = 1;
    return r;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) { initialised = 0; return OK; }

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NOT_FOUND: return "Not Found";
    case UNINITIALIZED: return "Uninitialized";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device) {
    const char *mine = getenv("FAKE_NVML_GPU");
    if (!initialised) return UNINITIALIZED;
    if (!bus_id || !device) return INVALID_ARGUMENT;
    if (!mine || strcasecmp(bus_id, mine) != 0) return NOT_FOUND;
    *device = &the_gpu;
    return OK;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    if (!initialised) return UNINITIALIZED;
    if (d != &the_gpu || !u) return INVALID_ARGUMENT;
    u->gpu = (unsigned int)env_u64("FAKE_NVML_UTIL", 0);
    u->memory = u->gpu / 2;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    if (!initialised) return UNINITIALIZED;
    if (d != &the_gpu || !m) return INVALID_ARGUMENT;
    m->total = 16ULL << 30;
    m->used = env_u64("FAKE_NVML_USED", 0);
    m->free = m->total - m->used;
    return OK;
}

/* The two-call protocol: with too small a buffer, the count needed and INSUFFICIENT_SIZE; SUCCESS with count 0
 * when there are none. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *out) {
    if (!initialised) return UNINITIALIZED;
    if (d != &the_gpu || !count) return INVALID_ARGUMENT;
    const char *spec = getenv("FAKE_NVML_PROCS");
    nvmlProcessInfo_t procs[64];
    unsigned int n = 0;
    while (spec && *spec && n < 64) {
        char *end;
        procs[n].pid = (unsigned int)strtoul(spec, &end, 10);
        procs[n].usedGpuMemory = (*end == ':') ? strtoull(end + 1, &end, 10) : 0;
        procs[n].gpuInstanceId = procs[n].computeInstanceId = 0xFFFFFFFF;
        n++;
        spec = (*end == ',') ? end + 1 : end;
    }
    if (n == 0) { *count = 0; return OK; }
    if (!out || *count < n) { *count = n; return INSUFFICIENT_SIZE; }
    memcpy(out, procs, n * sizeof procs[0]);
    *count = n;
    return OK;
}
