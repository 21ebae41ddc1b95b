/* _fatdispatch_cpu: the CPU probe of _fatdispatch and nothing else (no pick cache, finder or JSON reader), for
 * callers that only want to know what this CPU can run: ``import _fatdispatch_cpu; _fatdispatch_cpu.cpu()``.
 * The same source, compiled without the import path's parts: it loads faster (fewer symbols to bind). */
#define FD_PROBE_ONLY 1
#include "_fatdispatch.c"
