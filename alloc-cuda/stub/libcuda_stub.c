/*
 * A test double of the CUDA driver (libcuda.so) backed by host memory, so the
 * CUDA backend's control flow and error paths run on machines without a GPU.
 *
 * Built by alloc-cuda-stub's build script (build.rs) with
 *   cc -shared -fPIC -Wl,-soname,libcuda.so [-DSTUB_NO_VM] -o libcuda.so
 * and loaded before cudarc looks for "libcuda.so", so cudarc binds to it.
 *
 * Model, and what it rejects as the driver would (each rejection returns the
 * driver's error code and counts one stub_violations()):
 * - `ndev` devices (stub_set_devices, 1 by default; every pair of devices is
 *   peer capable unless stub_set_peer says otherwise) sharing one capacity
 *   (stub_set_capacity); device memory, pinned host memory and mapped pages
 *   are host mmaps, so tests can read and write through the pointers;
 * - streams: handles are looked up, never dereferenced. 0 and 0x1
 *   (CU_STREAM_LEGACY) name the legacy stream; 0x2 (CU_STREAM_PER_THREAD)
 *   names the calling thread's own per-thread stream; any other handle must
 *   be a live stream from cuStreamCreate (a destroyed one is a use after
 *   release: CUDA_ERROR_INVALID_HANDLE);
 * - asynchronous work per stream: stub_launch(s) queues work that may use any
 *   memory, stub_launch_on(s, ptr, n) work that uses [ptr, ptr + n);
 *   stub_complete(s) finishes a stream's work. cuStreamQuery and cuEventQuery
 *   answer from it; cuStreamSynchronize, cuEventSynchronize and
 *   cuCtxSynchronize finish it and count stub_stalls() when they had to wait;
 * - stub_unsafe_releases(): cuMemFree, cuMemFreeHost or cuMemUnmap of memory
 *   that queued work may still use;
 * - events: live handles only (destroyed: use after release); an event
 *   recorded on a capturing stream belongs to the capture: querying it is an
 *   error (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
 * - stream capture (cuStreamBeginCapture_v2/cuStreamEndCapture): while a
 *   capture in global mode is under way, a thread whose capture mode
 *   (cuThreadExchangeStreamCaptureMode) is not relaxed may not allocate, map,
 *   unmap, ask for free memory, or query or wait for an event; nobody may synchronise the context or a capturing stream or
 *   free memory. Each such call fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
 *   and invalidates the capture (cuStreamEndCapture then fails);
 * - allocation properties (cuMemCreate, cuMemGetAllocationGranularity): pinned
 *   device memory on an existing device, no handle types; access descriptors
 *   (cuMemSetAccess): device locations that exist, valid flags, peers only
 *   where peer capable, over mapped pages only;
 * - a current context: event record, query and synchronise, stream and
 *   context synchronise fail with CUDA_ERROR_INVALID_CONTEXT without one;
 * - stub_fail(name, nth, code): the nth next call of `name` returns `code`;
 *   stub_calls(name) counts calls.
 * Built with -DSTUB_NO_VM the virtual-memory symbols are not exported.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
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
    PEER_ACCESS_UNSUPPORTED = 217,
    CAPTURE_UNSUPPORTED = 900,
    CAPTURE_INVALIDATED = 901,
    CAPTURE_IMPLICIT = 906,
    INVALID_CONTEXT = 201,
    ILLEGAL_STATE = 401,
};

#define API __attribute__((visibility("default")))
#define MAX_DEV 4

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static size_t capacity = (size_t)4 << 30;
static size_t used;
static int initialized;
static int ndev = 1;
static int no_peer[MAX_DEV][MAX_DEV];
static long violations;
static long unsafe_releases;
static long stalls;
__attribute__((unused)) static const size_t GRANULARITY = (size_t)2 << 20;

/* ---- failure injection and call counts ---- */
struct fail { char name[48]; long countdown; int code; };
static struct fail fails[32];
struct count { char name[48]; long n; };
static struct count counts[128];

static int enter(const char *name) {
    int i;
    for (i = 0; i < 128; i++) {
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
/* STUB_TRACE=1 in the environment prints each rejection. */
#define REJECT(code) do { violations++; trace_reject(__func__, __LINE__, code); LEAVE(code); } while (0)
static void trace_reject(const char *fn, int line, int code) {
    if (getenv("STUB_TRACE")) fprintf(stderr, "stub: %s (line %d) rejected with %d\n", fn, line, code);
}

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
    for (int i = 0; i < 128; i++)
        if (strcmp(counts[i].name, name) == 0) n = counts[i].n;
    pthread_mutex_unlock(&mu);
    return n;
}

API void stub_set_capacity(size_t bytes) {
    pthread_mutex_lock(&mu); capacity = bytes; pthread_mutex_unlock(&mu);
}
/* n devices (1 to 4), every pair peer capable */
API void stub_set_devices(int n) {
    pthread_mutex_lock(&mu);
    ndev = n < 1 ? 1 : n > MAX_DEV ? MAX_DEV : n;
    memset(no_peer, 0, sizeof no_peer);
    pthread_mutex_unlock(&mu);
}
API void stub_set_peer(int dev, int peer, int can) {
    pthread_mutex_lock(&mu);
    if (dev >= 0 && dev < MAX_DEV && peer >= 0 && peer < MAX_DEV) no_peer[dev][peer] = !can;
    pthread_mutex_unlock(&mu);
}
API size_t stub_used(void) {
    pthread_mutex_lock(&mu); size_t u = used; pthread_mutex_unlock(&mu); return u;
}
API long stub_violations(void) {
    pthread_mutex_lock(&mu); long v = violations; pthread_mutex_unlock(&mu); return v;
}
API long stub_unsafe_releases(void) {
    pthread_mutex_lock(&mu); long v = unsafe_releases; pthread_mutex_unlock(&mu); return v;
}
API long stub_stalls(void) {
    pthread_mutex_lock(&mu); long v = stalls; pthread_mutex_unlock(&mu); return v;
}

/* ---- streams: handles are looked up, never dereferenced ---- */
/* One launch of the `fill` kernel (see cuLaunchKernel). */
struct fill { uintptr_t out; uint32_t n, base; struct fill *next; };
/* A captured graph: its fills, replayed by cuGraphLaunch. */
struct graph { struct fill *fills; };
struct work { uint64_t seq; uintptr_t addr; size_t size; struct work *next; };
struct stream {
    uint64_t launched, completed;
    struct work *work;      /* queued work, newest first */
    int capturing;          /* 1 while a capture is under way */
    int capture_global;     /* begun in global mode */
    int invalidated;        /* an illegal call happened during the capture */
    int dead;               /* destroyed: kept so a later use is detected */
    struct fill *captured;  /* kernels launched during the capture, newest first */
    struct stream *next;
};
static struct stream legacy;
static struct stream *streams = &legacy; /* live and dead streams */
static __thread struct stream *per_thread;

/* The stream `h` names, or 0 (a violation) for a handle that is not one. */
static struct stream *lookup(void *h) {
    uintptr_t v = (uintptr_t)h;
    if (v == 0 || v == 1) return &legacy;
    if (v == 2) {
        if (!per_thread) {
            per_thread = calloc(1, sizeof *per_thread);
            per_thread->next = streams; streams = per_thread;
        }
        return per_thread;
    }
    for (struct stream *s = streams; s; s = s->next)
        if ((void *)s == h) return s->dead ? 0 : s;
    return 0;
}
static int busy(struct stream *s) { return s->completed < s->launched; }
static void finish(struct stream *s) {
    s->completed = s->launched;
    while (s->work) { struct work *w = s->work; s->work = w->next; free(w); }
}
static void finish_all(void) {
    for (struct stream *s = streams; s; s = s->next) finish(s);
}
/* Whether queued work may use [addr, addr + n). */
static int in_use(uintptr_t addr, size_t n) {
    for (struct stream *s = streams; s; s = s->next) {
        if (!busy(s)) continue;
        for (struct work *w = s->work; w; w = w->next) {
            if (w->seq <= s->completed) continue;
            if (w->size == 0 || (w->addr < addr + n && addr < w->addr + w->size)) return 1;
        }
    }
    return 0;
}

/* ---- stream capture ---- */
static __thread int capture_mode; /* 0 global, 1 thread-local, 2 relaxed */
static int global_capture(void) {
    for (struct stream *s = streams; s; s = s->next)
        if (s->capturing && s->capture_global && !s->dead) return 1;
    return 0;
}
static int any_capture(void) {
    for (struct stream *s = streams; s; s = s->next)
        if (s->capturing && !s->dead) return 1;
    return 0;
}
static void invalidate_captures(void) {
    for (struct stream *s = streams; s; s = s->next)
        if (s->capturing) s->invalidated = 1;
}
/* A potentially unsafe call (allocate, map, unmap): illegal during a global
 * capture unless this thread is relaxed. */
#define UNSAFE_DURING_CAPTURE()                                      \
    do {                                                             \
        if (global_capture() && capture_mode != 2) {                 \
            invalidate_captures(); REJECT(CAPTURE_UNSUPPORTED);      \
        }                                                            \
    } while (0)
/* A call that conflicts with any capture (synchronising, freeing). */
#define CONFLICTS_WITH_CAPTURE()                                     \
    do {                                                             \
        if (any_capture()) { invalidate_captures(); REJECT(CAPTURE_UNSUPPORTED); } \
    } while (0)

API void stub_launch(void *h) {
    pthread_mutex_lock(&mu);
    struct stream *s = lookup(h);
    if (!s) violations++;
    else {
        struct work *w = calloc(1, sizeof *w);
        w->seq = ++s->launched; w->next = s->work; s->work = w;
    }
    pthread_mutex_unlock(&mu);
}
API void stub_launch_on(void *h, uintptr_t addr, size_t n) {
    pthread_mutex_lock(&mu);
    struct stream *s = lookup(h);
    if (!s || n == 0) violations++;
    else {
        struct work *w = calloc(1, sizeof *w);
        w->seq = ++s->launched; w->addr = addr; w->size = n; w->next = s->work; s->work = w;
    }
    pthread_mutex_unlock(&mu);
}
API void stub_complete(void *h) {
    pthread_mutex_lock(&mu);
    struct stream *s = lookup(h);
    if (!s) violations++; else finish(s);
    pthread_mutex_unlock(&mu);
}
API void stub_complete_all(void) {
    pthread_mutex_lock(&mu); finish_all(); pthread_mutex_unlock(&mu);
}
API int stub_busy(void *h) {
    pthread_mutex_lock(&mu);
    struct stream *s = lookup(h);
    int b = s && busy(s);
    pthread_mutex_unlock(&mu);
    return b;
}

/* ---- regions: device/pinned allocations, reservations, handles, mappings ---- */
enum kind { DEV = 1, HOST = 2, RESERVATION = 3, HANDLE = 4, MAPPING = 5 };
struct region {
    int kind;
    int device;             /* DEV, HANDLE: the owning device */
    unsigned access;        /* MAPPING: bit d set when device d may read and write */
    uintptr_t addr;
    size_t size;
    CUmemHandle handle;
    struct region *next;
};
static struct region *regions;
__attribute__((unused)) static CUmemHandle next_handle = 1;

static struct region *find(int kind, uintptr_t addr) {
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == kind && r->addr == addr) return r;
    return 0;
}
__attribute__((unused)) static struct region *find_handle(CUmemHandle h) {
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == HANDLE && r->handle == h) return r;
    return 0;
}
static struct region *add(int kind, uintptr_t addr, size_t size, CUmemHandle h) {
    struct region *r = calloc(1, sizeof *r);
    r->kind = kind; r->addr = addr; r->size = size; r->handle = h;
    r->next = regions; regions = r;
    return r;
}
static void drop_region(struct region *gone) {
    for (struct region **p = &regions; *p; p = &(*p)->next)
        if (*p == gone) { *p = gone->next; free(gone); return; }
}
static void *map_rw(size_t n) {
    void *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? 0 : p;
}

/* Bytes of pages mapped at `addr` (0: none), and its access mask. */
API unsigned stub_access(uintptr_t addr) {
    unsigned a = 0;
    pthread_mutex_lock(&mu);
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && addr >= m->addr && addr < m->addr + m->size) a = m->access;
    pthread_mutex_unlock(&mu);
    return a;
}

/* ---- initialisation, devices, contexts ---- */
static int contexts[MAX_DEV]; /* the primary context of device d is &contexts[d] */
static __thread void *current;
static int current_device(void) {
    for (int d = 0; d < MAX_DEV; d++)
        if (current == &contexts[d]) return d;
    return -1;
}

/* Calls on events and streams, and synchronising, need a current context
 * (the driver answers CUDA_ERROR_INVALID_CONTEXT on a thread with none, as
 * PyTorch's autograd and DataLoader threads may be). */
#define NEEDS_CONTEXT() do { if (current_device() < 0) REJECT(INVALID_CONTEXT); } while (0)

/* STUB_CUINIT_RESULT=code makes cuInit fail with `code` (100: no device,
 * 34: a toolkit stubs/ library, 803: driver/library mismatch), as the GPU
 * kit's tests need; STUB_DEVICES=n sets the device count at start. */
API CUresult cuInit(unsigned flags) {
    (void)flags;
    ENTER("cuInit");
    const char *r = getenv("STUB_CUINIT_RESULT");
    if (r && atoi(r) != 0) LEAVE(atoi(r));
    const char *d = getenv("STUB_DEVICES");
    if (d && !initialized) ndev = atoi(d) < 0 ? 0 : atoi(d) > MAX_DEV ? MAX_DEV : atoi(d);
    initialized = 1;
    LEAVE(OK);
}
API CUresult cuDriverGetVersion(int *v) { *v = 12060; return OK; }
API CUresult cuDeviceGetCount(int *n) {
    ENTER("cuDeviceGetCount");
    if (!initialized) LEAVE(NOT_INITIALIZED);
    *n = ndev; LEAVE(OK);
}
API CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    ENTER("cuDeviceGet");
    if (!initialized) LEAVE(NOT_INITIALIZED);
    if (ordinal < 0 || ordinal >= ndev) LEAVE(INVALID_DEVICE);
    *d = ordinal; LEAVE(OK);
}
API CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    (void)d; strncpy(name, "stub device (host memory)", len); if (len) name[len - 1] = 0; return OK;
}
API CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
    ENTER("cuDeviceGetAttribute");
    if (d < 0 || d >= ndev) REJECT(INVALID_DEVICE);
    switch (attr) {
    case 13: /* CLOCK_RATE, kHz: 1 GHz */
        *v = 1000000;
        break;
    case 16: /* MULTIPROCESSOR_COUNT */
        *v = 4;
        break;
    case 75: /* COMPUTE_CAPABILITY_MAJOR */
        *v = 9;
        break;
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
API CUresult cuDeviceCanAccessPeer(int *can, CUdevice d, CUdevice peer) {
    ENTER("cuDeviceCanAccessPeer");
    if (d < 0 || d >= ndev || peer < 0 || peer >= ndev) REJECT(INVALID_DEVICE);
    *can = d != peer && !no_peer[d][peer];
    LEAVE(OK);
}
API CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
    ENTER("cuDevicePrimaryCtxRetain");
    if (d < 0 || d >= ndev) REJECT(INVALID_DEVICE);
    *ctx = &contexts[d]; LEAVE(OK);
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { (void)d; return OK; }
API CUresult cuCtxGetCurrent(void **ctx) { *ctx = current; return OK; }
API CUresult cuCtxSetCurrent(void *ctx) { current = ctx; return OK; }
API CUresult cuCtxGetDevice(CUdevice *d) {
    int dev = current_device();
    if (dev < 0) return INVALID_CONTEXT; /* CUDA_ERROR_INVALID_CONTEXT */
    *d = dev; return OK;
}
API CUresult cuCtxSynchronize(void) {
    ENTER("cuCtxSynchronize");
    NEEDS_CONTEXT();
    CONFLICTS_WITH_CAPTURE();
    for (struct stream *s = streams; s; s = s->next) stalls += busy(s);
    finish_all();
    LEAVE(OK);
}

API CUresult cuGetErrorString(CUresult e, const char **s) {
    switch (e) {
    case OK: *s = "no error"; break;
    case INVALID_VALUE: *s = "invalid argument"; break;
    case OUT_OF_MEMORY: *s = "out of memory"; break;
    case NOT_INITIALIZED: *s = "initialization error"; break;
    case INVALID_DEVICE: *s = "invalid device ordinal"; break;
    case INVALID_HANDLE: *s = "invalid resource handle"; break;
    case NOT_READY: *s = "device not ready"; break;
    case CAPTURE_UNSUPPORTED: *s = "operation not permitted when stream is capturing"; break;
    case CAPTURE_INVALIDATED: *s = "operation failed due to a previous error during capture"; break;
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
    struct stream *s = lookup(h);
    if (!s || s == &legacy || s == per_thread) REJECT(INVALID_HANDLE);
    /* as the driver: queued work still completes; the handle is dead now */
    s->dead = 1;
    LEAVE(OK);
}
API CUresult cuStreamQuery(void *h) {
    ENTER("cuStreamQuery");
    struct stream *s = lookup(h);
    if (!s) REJECT(INVALID_HANDLE);
    LEAVE(busy(s) ? NOT_READY : OK);
}
API CUresult cuStreamSynchronize(void *h) {
    ENTER("cuStreamSynchronize");
    NEEDS_CONTEXT();
    struct stream *s = lookup(h);
    if (!s) REJECT(INVALID_HANDLE);
    if (s->capturing) { invalidate_captures(); REJECT(CAPTURE_UNSUPPORTED); }
    stalls += busy(s);
    finish(s);
    LEAVE(OK);
}
API CUresult cuStreamWaitEvent(void *h, void *e, unsigned flags) {
    (void)e; (void)flags;
    ENTER("cuStreamWaitEvent");
    if (!lookup(h)) REJECT(INVALID_HANDLE);
    LEAVE(OK);
}
API CUresult cuStreamBeginCapture_v2(void *h, int mode) {
    ENTER("cuStreamBeginCapture_v2");
    struct stream *s = lookup(h);
    if (!s) REJECT(INVALID_HANDLE);
    if (s == &legacy || s->capturing) REJECT(CAPTURE_UNSUPPORTED);
    s->capturing = 1; s->capture_global = mode == 0; s->invalidated = 0;
    LEAVE(OK);
}
API CUresult cuStreamEndCapture(void *h, void **graph) {
    ENTER("cuStreamEndCapture");
    struct stream *s = lookup(h);
    if (!s) REJECT(INVALID_HANDLE);
    if (!s->capturing) REJECT(ILLEGAL_STATE);
    s->capturing = 0;
    struct graph *g = calloc(1, sizeof *g);
    g->fills = s->captured; s->captured = 0;
    *graph = g;
    LEAVE(s->invalidated ? CAPTURE_INVALIDATED : OK);
}
API CUresult cuStreamIsCapturing(void *h, int *status) {
    ENTER("cuStreamIsCapturing");
    struct stream *s = lookup(h);
    if (!s) REJECT(INVALID_HANDLE);
    /* the legacy stream cannot be queried while a blocking stream captures */
    if (s == &legacy && global_capture()) LEAVE(CAPTURE_IMPLICIT);
    *status = s->capturing ? (s->invalidated ? 2 : 1) : 0;
    LEAVE(OK);
}
API CUresult cuThreadExchangeStreamCaptureMode(int *mode) {
    int old = capture_mode;
    if (*mode < 0 || *mode > 2) return INVALID_VALUE;
    capture_mode = *mode; *mode = old;
    return OK;
}

struct event { struct stream *s; uint64_t seq; int recorded; int captured; int dead; struct event *next; };
static struct event *events;
static struct event *event_of(void *e) {
    for (struct event *ev = events; ev; ev = ev->next)
        if ((void *)ev == e) return ev->dead ? 0 : ev;
    return 0;
}
static int event_done(struct event *ev) { return !ev->recorded || ev->s->completed >= ev->seq; }

API CUresult cuEventCreate(void **out, unsigned flags) {
    (void)flags;
    ENTER("cuEventCreate");
    struct event *ev = calloc(1, sizeof *ev);
    ev->next = events; events = ev; *out = ev;
    LEAVE(OK);
}
API CUresult cuEventDestroy_v2(void *e) {
    ENTER("cuEventDestroy_v2");
    struct event *ev = event_of(e);
    if (!ev) REJECT(INVALID_HANDLE);
    ev->dead = 1; /* kept, so a later use is detected */
    LEAVE(OK);
}
API CUresult cuEventRecord(void *e, void *h) {
    ENTER("cuEventRecord");
    NEEDS_CONTEXT();
    struct event *ev = event_of(e);
    struct stream *s = lookup(h);
    if (!ev || !s) REJECT(INVALID_HANDLE);
    ev->s = s; ev->seq = s->launched; ev->recorded = 1; ev->captured = s->capturing;
    LEAVE(OK);
}
API CUresult cuEventQuery(void *e) {
    ENTER("cuEventQuery");
    NEEDS_CONTEXT();
    struct event *ev = event_of(e);
    if (!ev) REJECT(INVALID_HANDLE);
    if (ev->captured) { invalidate_captures(); REJECT(CAPTURE_UNSUPPORTED); }
    UNSAFE_DURING_CAPTURE();
    LEAVE(event_done(ev) ? OK : NOT_READY);
}
API CUresult cuEventSynchronize(void *e) {
    ENTER("cuEventSynchronize");
    NEEDS_CONTEXT();
    struct event *ev = event_of(e);
    if (!ev) REJECT(INVALID_HANDLE);
    if (ev->captured) { invalidate_captures(); REJECT(CAPTURE_UNSUPPORTED); }
    UNSAFE_DURING_CAPTURE();
    if (!event_done(ev)) {
        stalls++;
        ev->s->completed = ev->seq;
        /* work up to the event is done; later work stays queued */
    }
    LEAVE(OK);
}

/* ---- modules, the `fill` kernel, graphs ----
 * A module is any image; its one function is `fill(out, n, base, cycles)`
 * of the GPU tests (alloc-cuda/tests/gpu.rs), which writes out[i] = i + base
 * for i < n. The stub runs it on the host at launch and queues work on the
 * stream that uses [out, out + 4n) until the stream completes (the spin
 * takes no time here). During a capture the launch is recorded instead, and
 * cuGraphLaunch replays it. STUB_CORRUPT_FILL=1 writes one wrong value per
 * launch: a GPU test broken on purpose (the kit's FAIL path). */
static int module_token, function_token;
API CUresult cuModuleLoadData(void **module, const void *image) {
    ENTER("cuModuleLoadData");
    if (!image) REJECT(INVALID_VALUE);
    if (current_device() < 0) REJECT(INVALID_CONTEXT);
    *module = &module_token; LEAVE(OK);
}
API CUresult cuModuleGetFunction(void **f, void *module, const char *name) {
    ENTER("cuModuleGetFunction");
    if (module != &module_token) REJECT(INVALID_HANDLE);
    if (strcmp(name, "fill") != 0) LEAVE(500); /* CUDA_ERROR_NOT_FOUND */
    *f = &function_token; LEAVE(OK);
}
/* Whether `addr` lies in device memory or a mapped page. */
static int usable(uintptr_t addr) {
    for (struct region *r = regions; r; r = r->next)
        if ((r->kind == DEV || r->kind == MAPPING) && r->addr <= addr && addr < r->addr + r->size) return 1;
    return 0;
}
static void run_fill(struct stream *s, const struct fill *f) {
    uint32_t *out = (uint32_t *)f->out;
    for (uint32_t i = 0; i < f->n; i++) out[i] = i + f->base;
    const char *corrupt = getenv("STUB_CORRUPT_FILL");
    if (corrupt && atoi(corrupt) == 1 && f->n > 0) out[f->n / 2] ^= 0x5a5a;
    struct work *w = calloc(1, sizeof *w);
    w->seq = ++s->launched; w->addr = f->out; w->size = (size_t)f->n * 4;
    w->next = s->work; s->work = w;
}
API CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned shmem, void *h, void **params, void **extra) {
    (void)shmem; (void)extra;
    ENTER("cuLaunchKernel");
    NEEDS_CONTEXT();
    if (f != &function_token) REJECT(INVALID_HANDLE);
    if (!gx || !gy || !gz || !bx || !by || !bz || bx * by * bz > 1024 || !params) REJECT(INVALID_VALUE);
    struct stream *s = lookup(h);
    if (!s) REJECT(INVALID_HANDLE);
    struct fill fl = { *(uintptr_t *)params[0], *(uint32_t *)params[1], *(uint32_t *)params[2], 0 };
    if (fl.n && !(usable(fl.out) && usable(fl.out + (size_t)fl.n * 4 - 1)))
        REJECT(700); /* CUDA_ERROR_ILLEGAL_ADDRESS: not device memory */
    if (s->capturing) {
        struct fill *c = malloc(sizeof *c);
        *c = fl; c->next = s->captured; s->captured = c;
        LEAVE(OK);
    }
    run_fill(s, &fl);
    LEAVE(OK);
}
API CUresult cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long flags) {
    (void)flags;
    ENTER("cuGraphInstantiateWithFlags");
    if (!graph) REJECT(INVALID_VALUE);
    *exec = graph; LEAVE(OK);
}
API CUresult cuGraphLaunch(void *exec, void *h) {
    ENTER("cuGraphLaunch");
    NEEDS_CONTEXT();
    struct stream *s = lookup(h);
    if (!exec || !s) REJECT(INVALID_HANDLE);
    /* the fills in launch order (the list is newest first) */
    struct fill *order[256]; int n = 0;
    for (struct fill *f = ((struct graph *)exec)->fills; f && n < 256; f = f->next) order[n++] = f;
    while (n > 0) run_fill(s, order[--n]);
    LEAVE(OK);
}
API CUresult cuGraphExecDestroy(void *exec) { (void)exec; return OK; }
API CUresult cuGraphDestroy(void *graph) {
    if (!graph) return INVALID_VALUE;
    struct graph *g = graph;
    while (g->fills) { struct fill *f = g->fills; g->fills = f->next; free(f); }
    free(g);
    return OK;
}

/* ---- memory ---- */
static int fits(size_t n) { return n <= capacity - (used < capacity ? used : capacity); }

API CUresult cuMemGetInfo_v2(size_t *free_, size_t *total) {
    ENTER("cuMemGetInfo_v2");
    UNSAFE_DURING_CAPTURE();
    if (current_device() < 0) REJECT(INVALID_CONTEXT);
    *free_ = capacity > used ? capacity - used : 0; *total = capacity;
    LEAVE(OK);
}
API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    ENTER("cuMemAlloc_v2");
    UNSAFE_DURING_CAPTURE();
    int dev = current_device();
    if (dev < 0) REJECT(INVALID_CONTEXT);
    if (n == 0) LEAVE(INVALID_VALUE);
    if (!fits(n)) LEAVE(OUT_OF_MEMORY);
    void *m = map_rw(n);
    if (!m) LEAVE(OUT_OF_MEMORY);
    used += n; add(DEV, (uintptr_t)m, n, 0)->device = dev; *p = (uintptr_t)m;
    LEAVE(OK);
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    ENTER("cuMemFree_v2");
    CONFLICTS_WITH_CAPTURE();
    struct region *r = find(DEV, p);
    if (!r) REJECT(INVALID_VALUE);
    if (in_use(r->addr, r->size)) unsafe_releases++;
    munmap((void *)r->addr, r->size); used -= r->size; drop_region(r);
    LEAVE(OK);
}
/* The stream-ordered pool (the GPU benchmark's baseline): one pool per
 * device whose attributes are accepted; allocations are cuMemAlloc's. */
static int mem_pool_token;
API CUresult cuDeviceGetDefaultMemPool(void **pool, CUdevice d) {
    ENTER("cuDeviceGetDefaultMemPool");
    if (d < 0 || d >= ndev) REJECT(INVALID_DEVICE);
    *pool = &mem_pool_token; LEAVE(OK);
}
API CUresult cuMemPoolSetAttribute(void *pool, int attr, void *value) {
    (void)attr;
    ENTER("cuMemPoolSetAttribute");
    if (pool != &mem_pool_token || !value) REJECT(INVALID_VALUE);
    LEAVE(OK);
}
API CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, void *h) {
    pthread_mutex_lock(&mu);
    struct stream *s = lookup(h);
    pthread_mutex_unlock(&mu);
    if (!s) return INVALID_HANDLE;
    return cuMemAlloc_v2(p, n);
}
API CUresult cuMemFreeAsync(CUdeviceptr p, void *h) {
    pthread_mutex_lock(&mu);
    struct stream *s = lookup(h);
    pthread_mutex_unlock(&mu);
    if (!s) return INVALID_HANDLE;
    return cuMemFree_v2(p);
}
API CUresult cuMemHostAlloc(void **p, size_t n, unsigned flags) {
    (void)flags;
    ENTER("cuMemHostAlloc");
    UNSAFE_DURING_CAPTURE();
    void *m = n ? map_rw(n) : 0;
    if (!m) LEAVE(OUT_OF_MEMORY);
    add(HOST, (uintptr_t)m, n, 0); *p = m;
    LEAVE(OK);
}
API CUresult cuMemFreeHost(void *p) {
    ENTER("cuMemFreeHost");
    CONFLICTS_WITH_CAPTURE();
    struct region *r = find(HOST, (uintptr_t)p);
    if (!r) REJECT(INVALID_VALUE);
    if (in_use(r->addr, r->size)) unsafe_releases++;
    munmap(p, r->size); drop_region(r);
    LEAVE(OK);
}
/* Copies and memsets run at once (memory is host memory); the stream must be
 * a valid handle. */
API CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *h) {
    ENTER("cuMemsetD8Async");
    if (!lookup(h)) REJECT(INVALID_HANDLE);
    memset((void *)(uintptr_t)d, v, n);
    LEAVE(OK);
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *h) {
    ENTER("cuMemcpyHtoDAsync_v2");
    if (!lookup(h)) REJECT(INVALID_HANDLE);
    memcpy((void *)(uintptr_t)d, s, n);
    LEAVE(OK);
}
API CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *h) {
    ENTER("cuMemcpyDtoHAsync_v2");
    if (!lookup(h)) REJECT(INVALID_HANDLE);
    memcpy(d, (const void *)(uintptr_t)s, n);
    LEAVE(OK);
}

#ifndef STUB_NO_VM
/* CUmemAllocationProp and CUmemAccessDesc as the driver lays them out. */
struct location { int type; int id; };
struct prop {
    int type;                       /* 1: CU_MEM_ALLOCATION_TYPE_PINNED */
    int requested_handle_types;     /* 0: none */
    struct location location;       /* type 1: CU_MEM_LOCATION_TYPE_DEVICE */
    void *win32_metadata;
    unsigned char flags[8];
};
struct access_desc { struct location location; int flags; };

static int valid_prop(const struct prop *p) {
    return p && p->type == 1 && p->requested_handle_types == 0 && p->location.type == 1 &&
           p->location.id >= 0 && p->location.id < ndev && p->win32_metadata == 0;
}

API CUresult cuMemGetAllocationGranularity(size_t *g, const struct prop *prop, int option) {
    ENTER("cuMemGetAllocationGranularity");
    if (!valid_prop(prop) || (option != 0 && option != 1)) REJECT(INVALID_VALUE);
    *g = GRANULARITY;
    LEAVE(OK);
}
API CUresult cuMemAddressReserve(CUdeviceptr *p, size_t n, size_t align, CUdeviceptr addr,
                                 unsigned long long flags) {
    (void)addr;
    ENTER("cuMemAddressReserve");
    UNSAFE_DURING_CAPTURE();
    if (n == 0 || n % GRANULARITY || flags != 0) REJECT(INVALID_VALUE);
    if (align & (align - 1)) REJECT(INVALID_VALUE);
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
    CONFLICTS_WITH_CAPTURE();
    struct region *r = find(RESERVATION, p);
    if (!r || r->size != n) REJECT(INVALID_VALUE);
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->addr >= p && m->addr < p + n) REJECT(INVALID_VALUE);
    munmap((void *)r->addr, n); drop_region(r);
    LEAVE(OK);
}
API CUresult cuMemCreate(CUmemHandle *h, size_t n, const struct prop *prop, unsigned long long flags) {
    ENTER("cuMemCreate");
    UNSAFE_DURING_CAPTURE();
    if (!valid_prop(prop) || flags != 0) REJECT(INVALID_VALUE);
    if (n == 0 || n % GRANULARITY) REJECT(INVALID_VALUE);
    if (!fits(n)) LEAVE(OUT_OF_MEMORY);
    used += n; *h = next_handle++;
    add(HANDLE, 0, n, *h)->device = prop->location.id;
    LEAVE(OK);
}
API CUresult cuMemRelease(CUmemHandle h) {
    ENTER("cuMemRelease");
    struct region *r = find_handle(h);
    if (!r) REJECT(INVALID_HANDLE);
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->handle == h) REJECT(INVALID_VALUE);
    used -= r->size; drop_region(r);
    LEAVE(OK);
}
static struct region *reservation_of(uintptr_t p, size_t n) {
    for (struct region *r = regions; r; r = r->next)
        if (r->kind == RESERVATION && p >= r->addr && p + n <= r->addr + r->size) return r;
    return 0;
}
API CUresult cuMemMap(CUdeviceptr p, size_t n, size_t offset, CUmemHandle h, unsigned long long flags) {
    ENTER("cuMemMap");
    UNSAFE_DURING_CAPTURE();
    struct region *hr = find_handle(h);
    if (!hr || offset != 0 || flags != 0 || n != hr->size || !reservation_of(p, n)) REJECT(INVALID_VALUE);
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->addr < p + n && p < m->addr + m->size) REJECT(INVALID_VALUE);
    add(MAPPING, p, n, h)->device = hr->device;
    LEAVE(OK);
}
API CUresult cuMemSetAccess(CUdeviceptr p, size_t n, const struct access_desc *desc, size_t count) {
    ENTER("cuMemSetAccess");
    UNSAFE_DURING_CAPTURE();
    if (!desc || count == 0 || count > (size_t)ndev) REJECT(INVALID_VALUE);
    /* every page of the range must be mapped, all from one device */
    size_t covered = 0;
    int owner = -1;
    for (struct region *m = regions; m; m = m->next) {
        if (m->kind != MAPPING || m->addr < p || m->addr >= p + n) continue;
        if (m->addr + m->size > p + n) REJECT(INVALID_VALUE);
        if (owner >= 0 && m->device != owner) REJECT(INVALID_VALUE);
        owner = m->device; covered += m->size;
    }
    if (covered != n || owner < 0) REJECT(INVALID_VALUE);
    unsigned mask = 0;
    for (size_t i = 0; i < count; i++) {
        const struct access_desc *d = &desc[i];
        if (d->location.type != 1 || d->location.id < 0 || d->location.id >= ndev) REJECT(INVALID_DEVICE);
        if (d->flags != 0 && d->flags != 1 && d->flags != 3) REJECT(INVALID_VALUE);
        if (d->location.id != owner && no_peer[d->location.id][owner]) REJECT(PEER_ACCESS_UNSUPPORTED);
        if (d->flags == 3) mask |= 1u << d->location.id;
    }
    if (mprotect((void *)(uintptr_t)p, n, PROT_READ | PROT_WRITE)) LEAVE(INVALID_VALUE);
    for (struct region *m = regions; m; m = m->next)
        if (m->kind == MAPPING && m->addr >= p && m->addr < p + n) m->access = mask;
    LEAVE(OK);
}
API CUresult cuMemUnmap(CUdeviceptr p, size_t n) {
    ENTER("cuMemUnmap");
    UNSAFE_DURING_CAPTURE();
    struct region *m = find(MAPPING, p);
    /* as the driver: the range must be exactly one mapped range */
    if (!m || m->size != n) REJECT(INVALID_VALUE);
    /* pages never made accessible (a failed map rolled back) no work can use */
    if (m->access && in_use(p, n)) unsafe_releases++;
    madvise((void *)(uintptr_t)p, n, MADV_DONTNEED);
    mprotect((void *)(uintptr_t)p, n, PROT_NONE);
    drop_region(m);
    LEAVE(OK);
}
#endif
