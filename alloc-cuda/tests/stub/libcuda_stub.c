/*
 * A test double of the CUDA driver (libcuda.so) backed by host memory, so the
 * CUDA backend's control flow and error paths run on machines without a GPU.
 *
 * Built by the tests (tests/common/mod.rs) with
 *   cc -shared -fPIC -Wl,-soname,libcuda.so [-DSTUB_NO_VM] -o libcuda.so
 * and loaded before cudarc looks for "libcuda.so", so cudarc binds to it.
 *
 * Model:
 * - one device (ordinal 0) of `capacity` bytes (stub_set_capacity);
 * - device memory, pinned host memory and mapped pages are host mmaps, so
 *   tests can read and write through the pointers;
 * - streams have a launch counter and a completion counter: stub_launch()
 *   adds unfinished work, stub_complete() finishes it; an event recorded on a
 *   stream completes when the stream's work up to the record completes;
 *   cuStreamSynchronize/cuEventSynchronize/cuCtxSynchronize finish work;
 * - stub_fail(name, nth, code): the nth next call of `name` returns `code`;
 * - stub_unsynced_unmaps(): cuMemUnmap calls of accessible pages while a
 *   stream had unfinished work; stub_violations(): calls that named a range, handle or pointer the
 *   driver would reject (not mapped, not allocated, still mapped).
 * Built with -DSTUB_NO_VM the virtual-memory symbols are not exported.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemHandle;

enum {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_HANDLE = 400,
    NOT_READY = 600,
};

#define API __attribute__((visibility("default")))

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static size_t capacity = (size_t)4 << 30;
static size_t used;
static int initialized;
static long violations;
static long unsynced_unmaps;
static const size_t GRANULARITY = (size_t)2 << 20;

/* ---- failure injection and call counts ---- */
struct fail { char name[48]; long countdown; int code; };
static struct fail fails[32];
struct count { char name[48]; long n; };
static struct count counts[96];

static int enter(const char *name) {
    int i;
    for (i = 0; i < 96; i++) {
        if (counts[i].name[0] == 0) { strncpy(counts[i].name, name, 47); counts[i].n = 1; break; }
        if (strcmp(counts[i].name, name) == 0) { counts[i].n++; break; }
    }
    int code = OK;
    for (i = 0; i < 32; i++) {
        if (fails[i].countdown > 0 && strcmp(fails[i].name, name) == 0) {
            if (--fails[i].countdown == 0) code = fails[i].code;
        }
    }
    return code;
}

#define ENTER(name)                                  \
    pthread_mutex_lock(&mu);                         \
    do {                                             \
        int e_ = enter(name);                        \
        if (e_ != OK) { pthread_mutex_unlock(&mu); return e_; } \
    } while (0)
#define LEAVE(code) do { pthread_mutex_unlock(&mu); return (code); } while (0)

API void stub_fail(const char *name, long nth, int code) {
    pthread_mutex_lock(&mu);
    for (int i = 0; i < 32; i++) {
        if (fails[i].countdown <= 0) {
            strncpy(fails[i].name, name, 47);
            fails[i].name[47] = 0;
            fails[i].countdown = nth;
            fails[i].code = code;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
}

API long stub_calls(const char *name) {
    long n = 0;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < 96; i++)
        if (strcmp(counts[i].name, name) == 0) n = counts[i].n;
    pthread_mutex_unlock(&mu);
    return n;
}

API void stub_set_capacity(size_t bytes) {
    pthread_mutex_lock(&mu); capacity = bytes; pthread_mutex_unlock(&mu);
}
API size_t stub_used(void) {
    pthread_mutex_lock(&mu); size_t u = used; pthread_mutex_unlock(&mu); return u;
}
API long stub_unsynced_unmaps(void) {
    pthread_mutex_lock(&mu); long v = unsynced_unmaps; pthread_mutex_unlock(&mu); return v;
}
API long stub_violations(void) {
    pthread_mutex_lock(&mu); long v = violations; pthread_mutex_unlock(&mu); return v;
}

/* ---- streams and events ---- */
struct stream { uint64_t launched, completed; struct stream *next; };
static struct stream legacy; /* the NULL stream */
static struct stream *streams = &legacy;
struct event { struct stream *s; uint64_t seq; int recorded; };

static struct stream *S(void *h) { return h ? (struct stream *)h : &legacy; }
static int any_pending(void) {
    for (struct stream *s = streams; s; s = s->next)
        if (s->completed < s->launched) return 1;
    return 0;
}
static void finish_all(void) {
    for (struct stream *s = streams; s; s = s->next) s->completed = s->launched;
}

API void stub_launch(void *stream) {
    pthread_mutex_lock(&mu); S(stream)->launched++; pthread_mutex_unlock(&mu);
}
API void stub_complete(void *stream) {
    pthread_mutex_lock(&mu); S(stream)->completed = S(stream)->launched; pthread_mutex_unlock(&mu);
}
API void stub_complete_all(void) {
    pthread_mutex_lock(&mu); finish_all(); pthread_mutex_unlock(&mu);
}

/* ---- regions: device/pinned allocations, reservations, handles, mappings ---- */
enum kind { DEV = 1, HOST = 2, RESERVATION = 3, HANDLE = 4, MAPPING = 5 };
struct region { int kind; int accessible; uintptr_t addr; size_t size; CUmemHandle handle; struct region *next; };
static struct region *regions;
static CUmemHandle next_handle = 1;

static struct region *find(int kind, uintptr_t addr) {
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == kind && r->addr == addr) return r;
    return 0;
}
static struct region *find_handle(CUmemHandle h) {
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == HANDLE && r->handle == h) return r;
    return 0;
}
static void add(int kind, uintptr_t addr, size_t size, CUmemHandle h) {
    struct region *r = calloc(1, sizeof *r);
    r->kind = kind; r->addr = addr; r->size = size; r->handle = h;
    r->next = regions; regions = r;
}
static void drop_region(struct region *gone) {
    for (struct region **p = &regions; *p; p = &(*p)->next)
        if (*p == gone) { *p = gone->next; free(gone); return; }
}
static void *map_rw(size_t n) {
    void *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? 0 : p;
}

/* ---- initialisation, devices, contexts ---- */
static int the_context = 1;

API CUresult cuInit(unsigned flags) { (void)flags; ENTER("cuInit"); initialized = 1; LEAVE(OK); }
API CUresult cuDriverGetVersion(int *v) { *v = 12060; return OK; }
API CUresult cuDeviceGetCount(int *n) { ENTER("cuDeviceGetCount"); *n = 1; LEAVE(OK); }
API CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    ENTER("cuDeviceGet");
    if (!initialized) LEAVE(NOT_INITIALIZED);
    if (ordinal != 0) LEAVE(INVALID_DEVICE);
    *d = 0; LEAVE(OK);
}
API CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    (void)d; strncpy(name, "stub device (host memory)", len); if (len) name[len - 1] = 0; return OK;
}
API CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
    (void)d;
    ENTER("cuDeviceGetAttribute");
    switch (attr) {
    case 102: /* VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED */
#ifdef STUB_NO_VM
        *v = 0;
#else
        *v = 1;
#endif
        break;
    default: *v = 0;
    }
    LEAVE(OK);
}
API CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
    (void)d; ENTER("cuDevicePrimaryCtxRetain"); *ctx = &the_context; LEAVE(OK);
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { (void)d; return OK; }
static __thread void *current;
API CUresult cuCtxGetCurrent(void **ctx) { *ctx = current; return OK; }
API CUresult cuCtxSetCurrent(void *ctx) { current = ctx; return OK; }
API CUresult cuCtxSynchronize(void) { ENTER("cuCtxSynchronize"); finish_all(); LEAVE(OK); }

API CUresult cuGetErrorString(CUresult e, const char **s) {
    switch (e) {
    case OK: *s = "no error"; break;
    case INVALID_VALUE: *s = "invalid argument"; break;
    case OUT_OF_MEMORY: *s = "out of memory"; break;
    case NOT_INITIALIZED: *s = "initialization error"; break;
    case INVALID_DEVICE: *s = "invalid device ordinal"; break;
    case NOT_READY: *s = "device not ready"; break;
    default: *s = "stub driver error"; break;
    }
    return OK;
}
API CUresult cuGetErrorName(CUresult e, const char **s) { return cuGetErrorString(e, s); }

/* ---- streams and events ---- */
API CUresult cuStreamCreate(void **out, unsigned flags) {
    (void)flags;
    ENTER("cuStreamCreate");
    struct stream *s = calloc(1, sizeof *s);
    s->next = streams; streams = s; *out = s;
    LEAVE(OK);
}
API CUresult cuStreamDestroy_v2(void *h) {
    ENTER("cuStreamDestroy_v2");
    for (struct stream **p = &streams; *p; p = &(*p)->next)
        if (*p == h) { *p = ((struct stream *)h)->next; free(h); LEAVE(OK); }
    LEAVE(INVALID_HANDLE);
}
API CUresult cuStreamSynchronize(void *h) {
    ENTER("cuStreamSynchronize"); S(h)->completed = S(h)->launched; LEAVE(OK);
}
API CUresult cuStreamWaitEvent(void *h, void *e, unsigned flags) {
    (void)h; (void)e; (void)flags; return OK;
}
API CUresult cuEventCreate(void **out, unsigned flags) {
    (void)flags;
    ENTER("cuEventCreate");
    *out = calloc(1, sizeof(struct event));
    LEAVE(OK);
}
API CUresult cuEventDestroy_v2(void *e) { ENTER("cuEventDestroy_v2"); free(e); LEAVE(OK); }
API CUresult cuEventRecord(void *e, void *h) {
    ENTER("cuEventRecord");
    struct event *ev = e;
    ev->s = S(h); ev->seq = S(h)->launched; ev->recorded = 1;
    LEAVE(OK);
}
API CUresult cuEventQuery(void *e) {
    ENTER("cuEventQuery");
    struct event *ev = e;
    LEAVE(!ev->recorded || ev->s->completed >= ev->seq ? OK : NOT_READY);
}
API CUresult cuEventSynchronize(void *e) {
    ENTER("cuEventSynchronize");
    struct event *ev = e;
    if (ev->recorded && ev->s->completed < ev->seq) ev->s->completed = ev->seq;
    LEAVE(OK);
}

/* ---- memory ---- */
API CUresult cuMemGetInfo_v2(size_t *free_, size_t *total) {
    ENTER("cuMemGetInfo_v2");
    *free_ = capacity > used ? capacity - used : 0; *total = capacity;
    LEAVE(OK);
}
API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    ENTER("cuMemAlloc_v2");
    if (n == 0) LEAVE(INVALID_VALUE);
    if (n > capacity - (used < capacity ? used : capacity)) LEAVE(OUT_OF_MEMORY);
    void *m = map_rw(n);
    if (!m) LEAVE(OUT_OF_MEMORY);
    used += n; add(DEV, (uintptr_t)m, n, 0); *p = (uintptr_t)m;
    LEAVE(OK);
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    ENTER("cuMemFree_v2");
    struct region *r = find(DEV, p);
    if (!r) { violations++; LEAVE(INVALID_VALUE); }
    finish_all(); /* cuMemFree synchronises the device */
    munmap((void *)r->addr, r->size); used -= r->size; drop_region(r);
    LEAVE(OK);
}
API CUresult cuMemHostAlloc(void **p, size_t n, unsigned flags) {
    (void)flags;
    ENTER("cuMemHostAlloc");
    void *m = n ? map_rw(n) : 0;
    if (!m) LEAVE(OUT_OF_MEMORY);
    add(HOST, (uintptr_t)m, n, 0); *p = m;
    LEAVE(OK);
}
API CUresult cuMemFreeHost(void *p) {
    ENTER("cuMemFreeHost");
    struct region *r = find(HOST, (uintptr_t)p);
    if (!r) { violations++; LEAVE(INVALID_VALUE); }
    finish_all();
    munmap(p, r->size); drop_region(r);
    LEAVE(OK);
}
/* synchronous copies: memory is host memory */
API CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *h) {
    (void)h; memset((void *)(uintptr_t)d, v, n); return OK;
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *h) {
    (void)h; memcpy((void *)(uintptr_t)d, s, n); return OK;
}
API CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *h) {
    (void)h; memcpy(d, (const void *)(uintptr_t)s, n); return OK;
}

#ifndef STUB_NO_VM
API CUresult cuMemGetAllocationGranularity(size_t *g, const void *prop, int option) {
    (void)prop; (void)option; ENTER("cuMemGetAllocationGranularity"); *g = GRANULARITY; LEAVE(OK);
}
API CUresult cuMemAddressReserve(CUdeviceptr *p, size_t n, size_t align, CUdeviceptr addr,
                                 unsigned long long flags) {
    (void)addr; (void)flags;
    ENTER("cuMemAddressReserve");
    if (n == 0 || n % GRANULARITY) LEAVE(INVALID_VALUE);
    if (align < GRANULARITY) align = GRANULARITY;
    size_t over = n + align;
    void *m = mmap(0, over, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) LEAVE(OUT_OF_MEMORY);
    uintptr_t raw = (uintptr_t)m, start = (raw + align - 1) & ~(uintptr_t)(align - 1);
    if (start > raw) munmap(m, start - raw);
    if (raw + over > start + n) munmap((void *)(start + n), raw + over - (start + n));
    add(RESERVATION, start, n, 0); *p = start;
    LEAVE(OK);
}
API CUresult cuMemAddressFree(CUdeviceptr p, size_t n) {
    ENTER("cuMemAddressFree");
    struct region *r = find(RESERVATION, p);
    if (!r || r->size != n) { violations++; LEAVE(INVALID_VALUE); }
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->addr >= p && m->addr < p + n) { violations++; LEAVE(INVALID_VALUE); }
    munmap((void *)r->addr, n); drop_region(r);
    LEAVE(OK);
}
API CUresult cuMemCreate(CUmemHandle *h, size_t n, const void *prop, unsigned long long flags) {
    (void)prop; (void)flags;
    ENTER("cuMemCreate");
    if (n == 0 || n % GRANULARITY) LEAVE(INVALID_VALUE);
    if (n > capacity - (used < capacity ? used : capacity)) LEAVE(OUT_OF_MEMORY);
    used += n; *h = next_handle++; add(HANDLE, 0, n, *h);
    LEAVE(OK);
}
API CUresult cuMemRelease(CUmemHandle h) {
    ENTER("cuMemRelease");
    struct region *r = find_handle(h);
    if (!r) { violations++; LEAVE(INVALID_HANDLE); }
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->handle == h) { violations++; LEAVE(INVALID_VALUE); }
    used -= r->size; drop_region(r);
    LEAVE(OK);
}
static struct region *reservation_of(uintptr_t p, size_t n) {
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == RESERVATION && p >= r->addr && p + n <= r->addr + r->size) return r;
    return 0;
}
API CUresult cuMemMap(CUdeviceptr p, size_t n, size_t offset, CUmemHandle h, unsigned long long flags) {
    (void)flags;
    ENTER("cuMemMap");
    struct region *hr = find_handle(h);
    if (!hr || offset != 0 || n != hr->size || !reservation_of(p, n)) { violations++; LEAVE(INVALID_VALUE); }
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->addr < p + n && p < m->addr + m->size) { violations++; LEAVE(INVALID_VALUE); }
    add(MAPPING, p, n, h);
    LEAVE(OK);
}
API CUresult cuMemSetAccess(CUdeviceptr p, size_t n, const void *desc, size_t count) {
    (void)desc; (void)count;
    ENTER("cuMemSetAccess");
    if (mprotect((void *)(uintptr_t)p, n, PROT_READ | PROT_WRITE)) LEAVE(INVALID_VALUE);
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->addr >= p && m->addr < p + n) m->accessible = 1;
    LEAVE(OK);
}
API CUresult cuMemUnmap(CUdeviceptr p, size_t n) {
    ENTER("cuMemUnmap");
    struct region *m = find(MAPPING, p);
    /* as the driver: the range must be exactly one mapped range */
    if (!m || m->size != n) { violations++; LEAVE(INVALID_VALUE); }
    /* pages never made accessible (a failed map rolled back) no work can use */
    if (m->accessible && any_pending()) unsynced_unmaps++;
    madvise((void *)(uintptr_t)p, n, MADV_DONTNEED);
    mprotect((void *)(uintptr_t)p, n, PROT_NONE);
    drop_region(m);
    LEAVE(OK);
}
#endif
