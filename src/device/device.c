/* The device registry and the checked entry points of include/hetmix/device.h.
 *
 * Every hm_device_* / hm_dev_* call lands here first: arguments are checked and named in
 * errors, allocations are counted against the mem= cap, kernels are timed and, for slow=F,
 * followed by a sleep of (F-1) x their time. Backends (cpu.c, ref.c) only compute. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device/device_internal.h"
#include "util/util.h"

/* ---- registry ---------------------------------------------------------------------------- */

#define HM_DEVICE_MAX_BACKENDS 16
static const hm_device_backend *hm_backends[HM_DEVICE_MAX_BACKENDS];
static int hm_backend_count;
static pthread_mutex_t hm_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t hm_builtin_once = PTHREAD_ONCE_INIT;
static char hm_backend_names_buf[256];

static hm_status hm_register_locked(const hm_device_backend *b) {
  if (!b || !b->name || !b->open) return hm_error(HM_ERR_INVALID_ARG, "device backend: missing name or open()");
  for (int i = 0; i < hm_backend_count; i++)
    if (strcmp(hm_backends[i]->name, b->name) == 0)
      return hm_error(HM_ERR_INVALID_ARG, "device backend '%s' is already registered", b->name);
  if (hm_backend_count == HM_DEVICE_MAX_BACKENDS)
    return hm_error(HM_ERR_INVALID_ARG, "too many device backends (max %d)", HM_DEVICE_MAX_BACKENDS);
  hm_backends[hm_backend_count++] = b;
  size_t used = 0;
  hm_backend_names_buf[0] = '\0';
  for (int i = 0; i < hm_backend_count; i++) {
    int w = snprintf(hm_backend_names_buf + used, sizeof hm_backend_names_buf - used, "%s%s",
                     i ? ", " : "", hm_backends[i]->name);
    if (w < 0 || (size_t)w >= sizeof hm_backend_names_buf - used) break;
    used += (size_t)w;
  }
  return HM_OK;
}

static void hm_register_builtins(void) {
  pthread_mutex_lock(&hm_registry_lock);
  hm_register_locked(&hm_device_backend_cpu);
  hm_register_locked(&hm_device_backend_ref);
#ifdef HETMIX_HAVE_OPENCL
  hm_register_locked(&hm_device_backend_opencl);
#endif
#ifdef HETMIX_HAVE_CUDA
  hm_register_locked(&hm_device_backend_cuda);
#endif
  pthread_mutex_unlock(&hm_registry_lock);
}

hm_status hm_device_register(const hm_device_backend *backend) {
  pthread_once(&hm_builtin_once, hm_register_builtins);
  pthread_mutex_lock(&hm_registry_lock);
  hm_status st = hm_register_locked(backend);
  pthread_mutex_unlock(&hm_registry_lock);
  return st;
}

int hm_device_backend_count(void) {
  pthread_once(&hm_builtin_once, hm_register_builtins);
  return hm_backend_count;
}

const hm_device_backend *hm_device_backend_at(int i) {
  pthread_once(&hm_builtin_once, hm_register_builtins);
  return (i >= 0 && i < hm_backend_count) ? hm_backends[i] : NULL;
}

const char *hm_device_backend_names(void) {
  pthread_once(&hm_builtin_once, hm_register_builtins);
  return hm_backend_names_buf;
}

/* ---- properties -------------------------------------------------------------------------- */

const char *hm_device_name(const hm_device *dev) { return dev->name; }
const char *hm_device_spec(const hm_device *dev) { return dev->spec; }
const char *hm_device_backend_name(const hm_device_backend *b) { return b->name; }
const char *hm_device_backend_description(const hm_device_backend *b) { return b->description; }
hm_device_kind hm_device_get_kind(const hm_device *dev) { return dev->kind; }
int hm_device_is_host(const hm_device *dev) { return dev->kind == HM_DEVICE_HOST; }
hm_dtype hm_device_dtype(const hm_device *dev) { return dev->dtype; }
size_t hm_device_elem_size(const hm_device *dev) { return dev->dtype_size; }
int hm_device_threads(const hm_device *dev) { return dev->threads; }
double hm_device_slow(const hm_device *dev) { return dev->slow; }
uint64_t hm_device_slow_debt_ns(const hm_device *dev) { return dev->slow_debt_ns; }
void hm_device_get_stats(const hm_device *dev, hm_device_stats *out) { *out = dev->stats; }
void hm_device_set_peak(hm_device *dev, size_t peak) {
  dev->stats.bytes_peak = peak > dev->stats.bytes_allocated ? peak : dev->stats.bytes_allocated;
}

/* ---- spec parsing --------------------------------------------------------------------------- */

#define HM_SPEC_KEYS "threads, slow, dtype, mem, device, platform"

static hm_status hm_parse_long(const char *key, const char *val, long lo, long hi, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(val, &end, 10);
  if (errno || end == val || *end || v < lo || v > hi)
    return hm_error(HM_ERR_INVALID_ARG, "device option %s=%s: expected an integer in [%ld, %ld]",
                    key, val, lo, hi);
  *out = v;
  return HM_OK;
}

static hm_status hm_parse_bytes(const char *key, const char *val, size_t *out) {
  static const struct { const char *suffix; double mult; } units[] = {
      {"", 1}, {"B", 1}, {"K", 1024.0}, {"KB", 1024.0}, {"KiB", 1024.0},
      {"M", 1048576.0}, {"MB", 1048576.0}, {"MiB", 1048576.0},
      {"G", 1073741824.0}, {"GB", 1073741824.0}, {"GiB", 1073741824.0}};
  char *end = NULL;
  errno = 0;
  double v = strtod(val, &end);
  double mult = 0;
  if (end != val)
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
      if (strcmp(end, units[i].suffix) == 0) mult = units[i].mult;
  if (errno || mult == 0 || !(v >= 1) || v * mult > 1e18)
    return hm_error(HM_ERR_INVALID_ARG,
                    "device option %s=%s: expected a positive size such as 512M or 2G", key, val);
  *out = (size_t)(v * mult);
  return HM_OK;
}

hm_status hm_device_parse_spec(const char *spec, char *name, size_t name_cap,
                               hm_device_options *opt) {
  if (!spec || !name || !opt) return hm_error(HM_ERR_INVALID_ARG, "device spec: NULL argument");
  memset(opt, 0, sizeof *opt);
  opt->slow = 1.0;
  opt->dtype = HM_FLOAT32;
  const char *colon = strchr(spec, ':');
  size_t nlen = colon ? (size_t)(colon - spec) : strlen(spec);
  if (nlen == 0) return hm_error(HM_ERR_INVALID_ARG, "device spec '%s': missing backend name", spec);
  if (nlen >= name_cap) return hm_error(HM_ERR_INVALID_ARG, "device spec '%s': backend name too long", spec);
  memcpy(name, spec, nlen);
  name[nlen] = '\0';
  if (!colon) return HM_OK;

  char buf[256];
  if (hm_strcpy(buf, sizeof buf, colon + 1) != 0)
    return hm_error(HM_ERR_INVALID_ARG, "device spec '%s': options too long", spec);
  char *save = NULL;
  for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(item, '=');
    if (!eq || eq == item || !eq[1])
      return hm_error(HM_ERR_INVALID_ARG,
                      "device spec '%s': option '%s' is not key=value (known keys: " HM_SPEC_KEYS ")",
                      spec, item);
    *eq = '\0';
    const char *key = item, *val = eq + 1;
    long l = 0;
    if (strcmp(key, "threads") == 0) {
      HM_TRY(hm_parse_long(key, val, 0, 1024, &l));
      opt->threads = (int)l;
    } else if (strcmp(key, "device") == 0) {
      HM_TRY(hm_parse_long(key, val, 0, 1024, &l));
      opt->index = (int)l;
    } else if (strcmp(key, "platform") == 0) {
      HM_TRY(hm_parse_long(key, val, 0, 64, &l));
      opt->platform = (int)l;
    } else if (strcmp(key, "slow") == 0) {
      char *end = NULL;
      double v = strtod(val, &end);
      if (end == val || *end || !isfinite(v) || v < 1.0 || v > 1000.0)
        return hm_error(HM_ERR_INVALID_ARG,
                        "device option slow=%s: expected a number in [1, 1000] (2 = half speed)", val);
      opt->slow = v;
    } else if (strcmp(key, "dtype") == 0) {
      if (strcmp(val, "f32") == 0 || strcmp(val, "float32") == 0) opt->dtype = HM_FLOAT32;
      else if (strcmp(val, "f64") == 0 || strcmp(val, "float64") == 0) opt->dtype = HM_FLOAT64;
      else return hm_error(HM_ERR_INVALID_ARG, "device option dtype=%s: expected f32 or f64", val);
    } else if (strcmp(key, "mem") == 0) {
      HM_TRY(hm_parse_bytes(key, val, &opt->mem_limit));
    } else {
      return hm_error(HM_ERR_INVALID_ARG, "device spec '%s': unknown option '%s' (known: " HM_SPEC_KEYS ")",
                      spec, key);
    }
  }
  return HM_OK;
}

/* ---- open / close, allocation accounting ------------------------------------------------- */

typedef struct hm_alloc_rec {
  void *ptr;
  size_t bytes;
  int host; /* 1: pinned host staging (alloc_host), 0: device memory */
} hm_alloc_rec;

/* The public struct plus what only this file needs (live allocations for free()'s accounting). */
typedef struct hm_device_full {
  hm_device dev;
  hm_alloc_rec *allocs;
  size_t nallocs, cap_allocs;
} hm_device_full;

hm_status hm_device_open(const char *spec, hm_device **out) {
  if (!out) return hm_error(HM_ERR_INVALID_ARG, "hm_device_open: out is NULL");
  *out = NULL;
  char name[64];
  hm_device_options opt;
  HM_TRY(hm_device_parse_spec(spec, name, sizeof name, &opt));
  const hm_device_backend *be = NULL;
  for (int i = 0; i < hm_device_backend_count(); i++)
    if (strcmp(hm_device_backend_at(i)->name, name) == 0) be = hm_device_backend_at(i);
  if (!be)
    return hm_error(HM_ERR_NOT_FOUND, "unknown device backend '%s' (known: %s)", name,
                    hm_device_backend_names());

  hm_device_full *full = hm_calloc(1, sizeof *full, "device");
  if (!full) return HM_ERR_NOMEM;
  hm_device *dev = &full->dev;
  dev->name = be->name;
  hm_strcpy(dev->spec, sizeof dev->spec, spec);
  dev->dtype = opt.dtype;
  dev->dtype_size = hm_dtype_size(opt.dtype);
  dev->slow = opt.slow;
  dev->threads = opt.threads;
  hm_status st = be->open(dev, &opt);
  if (st != HM_OK) {
    free(full);
    return hm_error_context(st, "device '%s': ", spec);
  }
  size_t total = 0, freeb = 0;
  st = dev->ops->mem_info(dev, &total, &freeb);
  if (st != HM_OK) {
    dev->ops->close(dev);
    free(full);
    return hm_error_context(st, "device '%s': ", spec);
  }
  dev->mem_limit = (opt.mem_limit && opt.mem_limit < total) ? opt.mem_limit : total;
  *out = dev;
  return HM_OK;
}

void hm_device_close(hm_device *dev) {
  if (!dev) return;
  hm_device_full *full = (hm_device_full *)dev;
  for (size_t i = 0; i < full->nallocs; i++) {
    if (full->allocs[i].host) dev->ops->free_host(dev, full->allocs[i].ptr);
    else dev->ops->free(dev, full->allocs[i].ptr);
  }
  free(full->allocs);
  dev->ops->close(dev);
  free(full);
}

#define HM_CHECK_DEV(dev, op)                                                            \
  do {                                                                                   \
    if (!(dev)) return hm_error(HM_ERR_INVALID_ARG, "%s: device is NULL", op);           \
  } while (0)
#define HM_CHECK_PTR(p, op)                                                              \
  do {                                                                                   \
    if (!(p)) return hm_error(HM_ERR_INVALID_ARG, "%s: %s is NULL", op, #p);             \
  } while (0)

static hm_status hm_alloc_table_room(hm_device_full *full) {
  if (full->nallocs < full->cap_allocs) return HM_OK;
  size_t cap = full->cap_allocs ? 2 * full->cap_allocs : 64;
  hm_alloc_rec *a = realloc(full->allocs, cap * sizeof *a);
  if (!a) return hm_error(HM_ERR_NOMEM, "device %s: allocation table", full->dev.spec);
  full->allocs = a;
  full->cap_allocs = cap;
  return HM_OK;
}

/* Removes ptr's record of the given kind; 0 when it is not one of this device's. */
static int hm_alloc_forget(hm_device_full *full, void *ptr, int host, size_t *bytes) {
  /* newest first: buffers are usually freed in reverse order of allocation */
  for (size_t i = full->nallocs; i-- > 0;)
    if (full->allocs[i].ptr == ptr && full->allocs[i].host == host) {
      *bytes = full->allocs[i].bytes;
      full->allocs[i] = full->allocs[--full->nallocs];
      return 1;
    }
  return 0;
}

hm_status hm_device_alloc(hm_device *dev, void **ptr, size_t bytes, const char *what) {
  HM_CHECK_DEV(dev, "hm_device_alloc");
  HM_CHECK_PTR(ptr, "hm_device_alloc");
  *ptr = NULL;
  if (!what) what = "buffer";
  hm_device_full *full = (hm_device_full *)dev;
  size_t used = dev->stats.bytes_allocated;
  if (bytes > dev->mem_limit || used > dev->mem_limit - bytes)
    return hm_error(HM_ERR_NO_FIT,
                    "device %s: %s needs %.1f MiB but only %.1f MiB of %.1f MiB are left "
                    "(%.1f MiB allocated)", dev->spec, what, bytes / 1048576.0,
                    (dev->mem_limit - used) / 1048576.0, dev->mem_limit / 1048576.0,
                    used / 1048576.0);
  size_t total = 0, freeb = 0;
  hm_status st = dev->ops->mem_info(dev, &total, &freeb);
  if (st != HM_OK) return hm_error_context(st, "device %s: %s: ", dev->spec, what);
  if (bytes > freeb)
    return hm_error(HM_ERR_NO_FIT, "device %s: %s needs %.1f MiB but the device has only %.1f MiB "
                    "free", dev->spec, what, bytes / 1048576.0, freeb / 1048576.0);
  HM_TRY(hm_alloc_table_room(full));
  st = dev->ops->alloc(dev, ptr, bytes);
  if (st != HM_OK) return hm_error_context(st, "device %s: %s (%zu bytes): ", dev->spec, what, bytes);
  full->allocs[full->nallocs++] = (hm_alloc_rec){*ptr, bytes, 0};
  dev->stats.bytes_allocated += bytes;
  if (dev->stats.bytes_allocated > dev->stats.bytes_peak)
    dev->stats.bytes_peak = dev->stats.bytes_allocated;
  return HM_OK;
}

void hm_device_free(hm_device *dev, void *ptr) {
  if (!dev || !ptr) return;
  size_t bytes = 0;
  if (!hm_alloc_forget((hm_device_full *)dev, ptr, 0, &bytes))
    return; /* not ours: ignoring it is safer than freeing foreign memory */
  dev->stats.bytes_allocated -= bytes;
  dev->ops->free(dev, ptr);
}

void *hm_device_offset(const hm_device *dev, void *base, size_t n) {
  return (char *)base + n * dev->dtype_size; /* address arithmetic only, never a dereference */
}

hm_status hm_device_alloc_host(hm_device *dev, void **ptr, size_t bytes, const char *what) {
  HM_CHECK_DEV(dev, "hm_device_alloc_host");
  HM_CHECK_PTR(ptr, "hm_device_alloc_host");
  *ptr = NULL;
  hm_device_full *full = (hm_device_full *)dev;
  HM_TRY(hm_alloc_table_room(full));
  hm_status st = dev->ops->alloc_host(dev, ptr, bytes ? bytes : 1);
  if (st != HM_OK)
    return hm_error_context(st, "device %s: host staging for %s (%zu bytes): ", dev->spec,
                            what ? what : "a buffer", bytes);
  full->allocs[full->nallocs++] = (hm_alloc_rec){*ptr, bytes, 1};
  return HM_OK;
}

void hm_device_free_host(hm_device *dev, void *ptr) {
  size_t bytes = 0;
  if (dev && ptr && hm_alloc_forget((hm_device_full *)dev, ptr, 1, &bytes)) dev->ops->free_host(dev, ptr);
}

hm_status hm_device_copy_h2d(hm_device *dev, void *dst, const void *src, size_t bytes) {
  HM_CHECK_DEV(dev, "hm_device_copy_h2d");
  if (!bytes) return HM_OK;
  HM_CHECK_PTR(dst, "hm_device_copy_h2d");
  HM_CHECK_PTR(src, "hm_device_copy_h2d");
  return dev->ops->copy_h2d(dev, dst, src, bytes);
}
hm_status hm_device_copy_d2h(hm_device *dev, void *dst, const void *src, size_t bytes) {
  HM_CHECK_DEV(dev, "hm_device_copy_d2h");
  if (!bytes) return HM_OK;
  HM_CHECK_PTR(dst, "hm_device_copy_d2h");
  HM_CHECK_PTR(src, "hm_device_copy_d2h");
  return dev->ops->copy_d2h(dev, dst, src, bytes);
}
hm_status hm_device_copy_d2d(hm_device *dev, void *dst, const void *src, size_t bytes) {
  HM_CHECK_DEV(dev, "hm_device_copy_d2d");
  if (!bytes) return HM_OK;
  HM_CHECK_PTR(dst, "hm_device_copy_d2d");
  HM_CHECK_PTR(src, "hm_device_copy_d2d");
  return dev->ops->copy_d2d(dev, dst, src, bytes);
}
hm_status hm_device_zero(hm_device *dev, void *ptr, size_t bytes) {
  HM_CHECK_DEV(dev, "hm_device_zero");
  if (!bytes) return HM_OK;
  HM_CHECK_PTR(ptr, "hm_device_zero");
  return dev->ops->zero(dev, ptr, bytes);
}
hm_status hm_device_copy_from_f32(hm_device *dev, void *dst, const float *src, size_t n) {
  HM_CHECK_DEV(dev, "hm_device_copy_from_f32");
  if (!n) return HM_OK;
  HM_CHECK_PTR(dst, "hm_device_copy_from_f32");
  HM_CHECK_PTR(src, "hm_device_copy_from_f32");
  return dev->ops->copy_from_f32(dev, dst, src, n);
}
hm_status hm_device_copy_to_f32(hm_device *dev, float *dst, const void *src, size_t n) {
  HM_CHECK_DEV(dev, "hm_device_copy_to_f32");
  if (!n) return HM_OK;
  HM_CHECK_PTR(dst, "hm_device_copy_to_f32");
  HM_CHECK_PTR(src, "hm_device_copy_to_f32");
  return dev->ops->copy_to_f32(dev, dst, src, n);
}
hm_status hm_device_synchronize(hm_device *dev) {
  HM_CHECK_DEV(dev, "hm_device_synchronize");
  return dev->ops->synchronize(dev);
}
hm_status hm_device_mem_info(hm_device *dev, size_t *total, size_t *free_bytes) {
  HM_CHECK_DEV(dev, "hm_device_mem_info");
  size_t t = 0, f = 0;
  HM_TRY(dev->ops->mem_info(dev, &t, &f));
  size_t cap_left = dev->mem_limit - dev->stats.bytes_allocated;
  if (total) *total = dev->mem_limit < t ? dev->mem_limit : t;
  if (free_bytes) *free_bytes = cap_left < f ? cap_left : f;
  return HM_OK;
}

/* ---- kernel wrappers: checks, timing, slow-chip emulation --------------------------------- */

/* Sleeping in slices under ~0.2 ms costs more in scheduler overshoot than it emulates, so
 * short kernels accumulate a debt that is paid once it is large enough. */
#define HM_SLOW_MIN_SLEEP_NS 200000ull

static void hm_slow_pay(hm_device *dev, uint64_t kernel_ns) {
  dev->slow_debt_ns += (uint64_t)((dev->slow - 1.0) * (double)kernel_ns);
  if (dev->slow_debt_ns < HM_SLOW_MIN_SLEEP_NS) return;
  uint64_t t0 = hm_now_ns();
  struct timespec ts = {(time_t)(dev->slow_debt_ns / 1000000000ull),
                        (long)(dev->slow_debt_ns % 1000000000ull)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  uint64_t slept = hm_now_ns() - t0;
  dev->stats.slow_sleep_ns += slept;
  dev->slow_debt_ns = slept >= dev->slow_debt_ns ? 0 : dev->slow_debt_ns - slept;
}

static hm_status hm_kernel_done(hm_device *dev, const char *op, uint64_t t0, hm_status st) {
  if (st != HM_OK) return hm_error_context(st, "device %s: %s: ", dev->spec, op);
  if (dev->slow > 1.0) {
    /* an asynchronous device must finish the kernel before its time means anything */
    st = dev->ops->synchronize(dev);
    if (st != HM_OK) return hm_error_context(st, "device %s: %s: ", dev->spec, op);
  }
  uint64_t dt = hm_now_ns() - t0;
  dev->stats.kernel_calls++;
  dev->stats.kernel_ns += dt;
  if (dev->slow > 1.0) hm_slow_pay(dev, dt);
  return HM_OK;
}

#define HM_RUN_KERNEL(dev, op, call)              \
  do {                                            \
    uint64_t hm_t0_ = hm_now_ns();                \
    hm_status hm_st_ = (call);                    \
    return hm_kernel_done(dev, op, hm_t0_, hm_st_); \
  } while (0)

#define HM_CHECK_POS(x, op)                                                              \
  do {                                                                                   \
    if ((x) <= 0) return hm_error(HM_ERR_INVALID_ARG, "%s: %s = %d must be positive", op, #x, (int)(x)); \
  } while (0)

hm_status hm_dev_encoder_forward(hm_device *dev, void *out, const int32_t *inp, const void *wte,
                                 const void *wpe, int B, int T, int C) {
  const char *op = "encoder_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp, op); HM_CHECK_PTR(wte, op);
  HM_CHECK_PTR(wpe, op); HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(C, op);
  HM_RUN_KERNEL(dev, op, dev->ops->encoder_forward(dev, out, inp, wte, wpe, B, T, C));
}

hm_status hm_dev_encoder_backward(hm_device *dev, void *dwte, void *dwpe, const void *dout,
                                  const int32_t *inp, int B, int T, int C) {
  const char *op = "encoder_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dwte, op); HM_CHECK_PTR(dwpe, op); HM_CHECK_PTR(dout, op);
  HM_CHECK_PTR(inp, op); HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(C, op);
  HM_RUN_KERNEL(dev, op, dev->ops->encoder_backward(dev, dwte, dwpe, dout, inp, B, T, C));
}

hm_status hm_dev_layernorm_forward(hm_device *dev, void *out, void *mean, void *rstd,
                                   const void *inp, const void *weight, const void *bias, int N,
                                   int C) {
  const char *op = "layernorm_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(mean, op); HM_CHECK_PTR(rstd, op);
  HM_CHECK_PTR(inp, op); HM_CHECK_PTR(weight, op); HM_CHECK_PTR(bias, op);
  HM_CHECK_POS(N, op); HM_CHECK_POS(C, op);
  HM_RUN_KERNEL(dev, op, dev->ops->layernorm_forward(dev, out, mean, rstd, inp, weight, bias, N, C));
}

hm_status hm_dev_layernorm_backward(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                    const void *dout, const void *inp, const void *weight,
                                    const void *mean, const void *rstd, int N, int C) {
  const char *op = "layernorm_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dinp, op); HM_CHECK_PTR(dweight, op); HM_CHECK_PTR(dbias, op);
  HM_CHECK_PTR(dout, op); HM_CHECK_PTR(inp, op); HM_CHECK_PTR(weight, op); HM_CHECK_PTR(mean, op);
  HM_CHECK_PTR(rstd, op); HM_CHECK_POS(N, op); HM_CHECK_POS(C, op);
  HM_RUN_KERNEL(dev, op, dev->ops->layernorm_backward(dev, dinp, dweight, dbias, dout, inp, weight,
                                                      mean, rstd, N, C));
}

hm_status hm_dev_matmul_forward(hm_device *dev, void *out, const void *inp, const void *weight,
                                const void *bias, int N, int C, int OC) {
  const char *op = "matmul_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp, op); HM_CHECK_PTR(weight, op);
  HM_CHECK_POS(N, op); HM_CHECK_POS(C, op); HM_CHECK_POS(OC, op);
  HM_RUN_KERNEL(dev, op, dev->ops->matmul_forward(dev, out, inp, weight, bias, N, C, OC));
}

hm_status hm_dev_matmul_backward(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                 const void *dout, const void *inp, const void *weight, int N,
                                 int C, int OC) {
  const char *op = "matmul_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dweight, op); HM_CHECK_PTR(dout, op); HM_CHECK_PTR(inp, op);
  HM_CHECK_PTR(weight, op); HM_CHECK_POS(N, op); HM_CHECK_POS(C, op); HM_CHECK_POS(OC, op);
  HM_RUN_KERNEL(dev, op, dev->ops->matmul_backward(dev, dinp, dweight, dbias, dout, inp, weight,
                                                   N, C, OC));
}

static hm_status hm_check_heads(const char *op, int C, int NH) {
  if (NH <= 0 || C % NH != 0)
    return hm_error(HM_ERR_INVALID_ARG, "%s: C = %d is not a positive multiple of NH = %d", op, C, NH);
  return HM_OK;
}

size_t hm_dev_attention_saved_elems(hm_device *dev, int B, int T, int C, int NH) {
  if (!dev || B <= 0 || T <= 0 || C <= 0 || NH <= 0) return 0;
  return dev->ops->attention_saved_elems(dev, B, T, C, NH);
}

hm_status hm_dev_attention_forward(hm_device *dev, void *out, void *saved, const void *qkv,
                                   int B, int T, int C, int NH) {
  const char *op = "attention_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(saved, op); HM_CHECK_PTR(qkv, op);
  HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(C, op);
  HM_TRY(hm_check_heads(op, C, NH));
  HM_RUN_KERNEL(dev, op, dev->ops->attention_forward(dev, out, saved, qkv, B, T, C, NH));
}

hm_status hm_dev_attention_backward(hm_device *dev, void *dqkv, const void *dout,
                                    const void *qkv, const void *saved, int B, int T, int C,
                                    int NH) {
  const char *op = "attention_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dqkv, op); HM_CHECK_PTR(dout, op); HM_CHECK_PTR(qkv, op);
  HM_CHECK_PTR(saved, op); HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(C, op);
  HM_TRY(hm_check_heads(op, C, NH));
  HM_RUN_KERNEL(dev, op, dev->ops->attention_backward(dev, dqkv, dout, qkv, saved, B, T, C, NH));
}

hm_status hm_dev_gelu_forward(hm_device *dev, void *out, const void *inp, size_t n) {
  const char *op = "gelu_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp, op);
  HM_RUN_KERNEL(dev, op, dev->ops->gelu_forward(dev, out, inp, n));
}

hm_status hm_dev_gelu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout,
                               size_t n) {
  const char *op = "gelu_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dinp, op); HM_CHECK_PTR(inp, op); HM_CHECK_PTR(dout, op);
  HM_RUN_KERNEL(dev, op, dev->ops->gelu_backward(dev, dinp, inp, dout, n));
}

/* A backend without Llama's kernels (an entry left NULL) says so instead of crashing. */
#define HM_NEED_OP(dev, op, entry)                                                                 \
  do {                                                                                             \
    if (!(dev)->ops->entry)                                                                        \
      return hm_error(HM_ERR_UNSUPPORTED, "device %s: backend %s has no %s kernel", (dev)->spec,   \
                      (dev)->name, op);                                                            \
  } while (0)

hm_status hm_dev_rmsnorm_forward(hm_device *dev, void *out, void *rstd, const void *inp, const void *weight, int N,
                                 int C) {
  const char *op = "rmsnorm_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(rstd, op); HM_CHECK_PTR(inp, op);
  HM_CHECK_PTR(weight, op); HM_CHECK_POS(N, op); HM_CHECK_POS(C, op); HM_NEED_OP(dev, op, rmsnorm_forward);
  HM_RUN_KERNEL(dev, op, dev->ops->rmsnorm_forward(dev, out, rstd, inp, weight, N, C));
}

hm_status hm_dev_rmsnorm_backward(hm_device *dev, void *dinp, void *dweight, const void *dout, const void *inp,
                                  const void *weight, const void *rstd, int N, int C) {
  const char *op = "rmsnorm_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dinp, op); HM_CHECK_PTR(dweight, op); HM_CHECK_PTR(dout, op);
  HM_CHECK_PTR(inp, op); HM_CHECK_PTR(weight, op); HM_CHECK_PTR(rstd, op); HM_CHECK_POS(N, op);
  HM_CHECK_POS(C, op); HM_NEED_OP(dev, op, rmsnorm_backward);
  HM_RUN_KERNEL(dev, op, dev->ops->rmsnorm_backward(dev, dinp, dweight, dout, inp, weight, rstd, N, C));
}

static hm_status hm_check_rope(const char *op, int B, int T, int H, int hd, int stride) {
  HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(H, op); HM_CHECK_POS(hd, op);
  if (hd % 2 != 0) return hm_error(HM_ERR_INVALID_ARG, "%s: head size hd = %d must be even", op, hd);
  if ((long long)H * hd > stride)
    return hm_error(HM_ERR_INVALID_ARG, "%s: H*hd = %lld exceeds the row stride %d", op, (long long)H * hd, stride);
  return HM_OK;
}

hm_status hm_dev_rope_forward(hm_device *dev, void *x, int B, int T, int H, int hd, int stride) {
  const char *op = "rope_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(x, op); HM_TRY(hm_check_rope(op, B, T, H, hd, stride));
  HM_NEED_OP(dev, op, rope);
  HM_RUN_KERNEL(dev, op, dev->ops->rope(dev, x, B, T, H, hd, stride, 1));
}

hm_status hm_dev_rope_backward(hm_device *dev, void *dx, int B, int T, int H, int hd, int stride) {
  const char *op = "rope_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dx, op); HM_TRY(hm_check_rope(op, B, T, H, hd, stride));
  HM_NEED_OP(dev, op, rope);
  HM_RUN_KERNEL(dev, op, dev->ops->rope(dev, dx, B, T, H, hd, stride, -1));
}

hm_status hm_dev_swiglu_forward(hm_device *dev, void *out, const void *inp, int N, int F) {
  const char *op = "swiglu_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp, op); HM_CHECK_POS(N, op); HM_CHECK_POS(F, op);
  HM_NEED_OP(dev, op, swiglu_forward);
  HM_RUN_KERNEL(dev, op, dev->ops->swiglu_forward(dev, out, inp, N, F));
}

hm_status hm_dev_swiglu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout, int N, int F) {
  const char *op = "swiglu_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dinp, op); HM_CHECK_PTR(inp, op); HM_CHECK_PTR(dout, op);
  HM_CHECK_POS(N, op); HM_CHECK_POS(F, op); HM_NEED_OP(dev, op, swiglu_backward);
  HM_RUN_KERNEL(dev, op, dev->ops->swiglu_backward(dev, dinp, inp, dout, N, F));
}

static hm_status hm_check_kv(const char *op, int N, int C, int NH, int KVH) {
  HM_CHECK_POS(N, op); HM_CHECK_POS(C, op); HM_CHECK_POS(KVH, op);
  HM_TRY(hm_check_heads(op, C, NH));
  if (NH % KVH != 0) return hm_error(HM_ERR_INVALID_ARG, "%s: KVH = %d does not divide NH = %d", op, KVH, NH);
  return HM_OK;
}

hm_status hm_dev_repeat_kv_forward(hm_device *dev, void *out, const void *inp, int N, int C, int NH, int KVH) {
  const char *op = "repeat_kv_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp, op); HM_TRY(hm_check_kv(op, N, C, NH, KVH));
  HM_NEED_OP(dev, op, repeat_kv_forward);
  HM_RUN_KERNEL(dev, op, dev->ops->repeat_kv_forward(dev, out, inp, N, C, NH, KVH));
}

hm_status hm_dev_repeat_kv_backward(hm_device *dev, void *dinp, const void *dout, int N, int C, int NH, int KVH) {
  const char *op = "repeat_kv_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dinp, op); HM_CHECK_PTR(dout, op); HM_TRY(hm_check_kv(op, N, C, NH, KVH));
  HM_NEED_OP(dev, op, repeat_kv_backward);
  HM_RUN_KERNEL(dev, op, dev->ops->repeat_kv_backward(dev, dinp, dout, N, C, NH, KVH));
}

hm_status hm_dev_residual_forward(hm_device *dev, void *out, const void *inp1, const void *inp2,
                                  size_t n) {
  const char *op = "residual_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp1, op); HM_CHECK_PTR(inp2, op);
  HM_RUN_KERNEL(dev, op, dev->ops->residual_forward(dev, out, inp1, inp2, n));
}

hm_status hm_dev_residual_backward(hm_device *dev, void *dinp1, void *dinp2, const void *dout,
                                   size_t n) {
  const char *op = "residual_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dout, op);
  HM_RUN_KERNEL(dev, op, dev->ops->residual_backward(dev, dinp1, dinp2, dout, n));
}

hm_status hm_dev_softmax_forward(hm_device *dev, void *probs, const void *logits, int N, int V,
                                 int Vp) {
  const char *op = "softmax_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(probs, op); HM_CHECK_PTR(logits, op);
  HM_CHECK_POS(N, op); HM_CHECK_POS(V, op);
  if (Vp < V) return hm_error(HM_ERR_INVALID_ARG, "%s: padded vocabulary Vp = %d < V = %d", op, Vp, V);
  HM_RUN_KERNEL(dev, op, dev->ops->softmax_forward(dev, probs, logits, N, V, Vp));
}

hm_status hm_dev_crossentropy_forward_backward(hm_device *dev, void *losses, void *dlogits,
                                               const void *logits, const int32_t *targets,
                                               double dloss, int N, int V, int Vp) {
  const char *op = "crossentropy_forward_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(losses, op); HM_CHECK_PTR(logits, op);
  HM_CHECK_PTR(targets, op); HM_CHECK_POS(N, op); HM_CHECK_POS(V, op);
  if (Vp < V) return hm_error(HM_ERR_INVALID_ARG, "%s: padded vocabulary Vp = %d < V = %d", op, Vp, V);
  if (!isfinite(dloss)) return hm_error(HM_ERR_INVALID_ARG, "%s: dloss is not finite", op);
  HM_RUN_KERNEL(dev, op, dev->ops->crossentropy_forward_backward(dev, losses, dlogits, logits,
                                                                 targets, dloss, N, V, Vp));
}

#define HM_CHECK_OPTIONAL(dev, entry, op)                                                        \
  do {                                                                                           \
    if (!(dev)->ops->entry)                                                                      \
      return hm_error(HM_ERR_UNSUPPORTED, "%s: backend %s has no such kernel (it is needed by "    \
                      "tensor parallelism's vocabulary-parallel head)", op, (dev)->name);        \
  } while (0)

hm_status hm_dev_rowmax(hm_device *dev, void *rowmax, const void *logits, int N, int V) {
  const char *op = "rowmax";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(rowmax, op); HM_CHECK_PTR(logits, op);
  HM_CHECK_POS(N, op); HM_CHECK_POS(V, op); HM_CHECK_OPTIONAL(dev, rowmax, op);
  HM_RUN_KERNEL(dev, op, dev->ops->rowmax(dev, rowmax, logits, N, V));
}

hm_status hm_dev_crossentropy_shard_forward(hm_device *dev, void *stats, const void *logits,
                                            const void *rowmax, const int32_t *targets, int lo,
                                            int N, int V) {
  const char *op = "crossentropy_shard_forward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(stats, op); HM_CHECK_PTR(logits, op); HM_CHECK_PTR(rowmax, op);
  HM_CHECK_PTR(targets, op); HM_CHECK_POS(N, op); HM_CHECK_POS(V, op);
  if (lo < 0) return hm_error(HM_ERR_INVALID_ARG, "%s: first column lo = %d must be >= 0", op, lo);
  HM_CHECK_OPTIONAL(dev, crossentropy_shard_forward, op);
  HM_RUN_KERNEL(dev, op, dev->ops->crossentropy_shard_forward(dev, stats, logits, rowmax, targets, lo, N, V));
}

hm_status hm_dev_crossentropy_shard_backward(hm_device *dev, void *dlogits, const void *logits,
                                             const void *rowmax, const void *sumexp,
                                             const int32_t *targets, int lo, double dloss, int N,
                                             int V) {
  const char *op = "crossentropy_shard_backward";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dlogits, op); HM_CHECK_PTR(logits, op); HM_CHECK_PTR(rowmax, op);
  HM_CHECK_PTR(sumexp, op); HM_CHECK_PTR(targets, op); HM_CHECK_POS(N, op); HM_CHECK_POS(V, op);
  if (lo < 0) return hm_error(HM_ERR_INVALID_ARG, "%s: first column lo = %d must be >= 0", op, lo);
  if (!isfinite(dloss)) return hm_error(HM_ERR_INVALID_ARG, "%s: dloss is not finite", op);
  HM_CHECK_OPTIONAL(dev, crossentropy_shard_backward, op);
  HM_RUN_KERNEL(dev, op, dev->ops->crossentropy_shard_backward(dev, dlogits, logits, rowmax, sumexp, targets,
                                                               lo, dloss, N, V));
}

hm_status hm_dev_adamw_update(hm_device *dev, void *params, const void *grads, void *m, void *v,
                              size_t n, double lr, double beta1, double beta2, double eps,
                              double weight_decay, double grad_scale, int t) {
  const char *op = "adamw_update";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(params, op); HM_CHECK_PTR(grads, op); HM_CHECK_PTR(m, op);
  HM_CHECK_PTR(v, op);
  if (t < 1) return hm_error(HM_ERR_INVALID_ARG, "%s: step t = %d must be >= 1", op, t);
  if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
    return hm_error(HM_ERR_INVALID_ARG, "%s: betas (%g, %g) must be in [0, 1)", op, beta1, beta2);
  if (!isfinite(lr) || !(eps > 0) || !isfinite(weight_decay) || !isfinite(grad_scale))
    return hm_error(HM_ERR_INVALID_ARG, "%s: lr %g, eps %g, weight_decay %g, grad_scale %g: "
                    "need finite values and eps > 0", op, lr, eps, weight_decay, grad_scale);
  HM_RUN_KERNEL(dev, op, dev->ops->adamw_update(dev, params, grads, m, v, n, lr, beta1, beta2, eps,
                                                weight_decay, grad_scale, t));
}

hm_status hm_dev_sum(hm_device *dev, double *out_host, const void *x, size_t n) {
  const char *op = "sum";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out_host, op); HM_CHECK_PTR(x, op);
  HM_RUN_KERNEL(dev, op, dev->ops->sum(dev, out_host, x, n));
}

hm_status hm_dev_sumsq(hm_device *dev, double *out_host, const void *x, size_t n) {
  const char *op = "sumsq";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out_host, op); HM_CHECK_PTR(x, op);
  HM_RUN_KERNEL(dev, op, dev->ops->sumsq(dev, out_host, x, n));
}

hm_status hm_dev_scale(hm_device *dev, void *x, double s, size_t n) {
  const char *op = "scale";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(x, op);
  HM_RUN_KERNEL(dev, op, dev->ops->scale(dev, x, s, n));
}

/* ---- bf16 mixed precision ---- */

#define HM_NEED_BF16(dev, op)                                                                      \
  do {                                                                                             \
    if (!hm_device_supports_bf16(dev))                                                             \
      return hm_error(HM_ERR_UNSUPPORTED,                                                          \
                      "device %s: %s: backend %s has no bf16 mixed-precision kernels%s (use "      \
                      "--precision fp32, or the cpu or ref backend)",                              \
                      (dev)->spec, op, (dev)->name,                                                \
                      (dev)->dtype != HM_FLOAT32 ? " for a dtype other than f32" : "");            \
  } while (0)

int hm_device_supports_bf16(const hm_device *dev) {
  return dev && dev->dtype == HM_FLOAT32 && dev->ops->to_bf16 && dev->ops->matmul_forward_bf16 &&
         dev->ops->matmul_backward_bf16 && dev->ops->attention_forward_bf16 &&
         dev->ops->attention_backward_bf16;
}

void *hm_device_offset_bytes(const hm_device *dev, void *base, size_t bytes) {
  (void)dev;
  return (char *)base + bytes; /* address arithmetic only, never a dereference */
}

hm_status hm_dev_to_bf16(hm_device *dev, void *dst, const void *src, size_t n) {
  const char *op = "to_bf16";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dst, op); HM_CHECK_PTR(src, op); HM_NEED_BF16(dev, op);
  HM_RUN_KERNEL(dev, op, dev->ops->to_bf16(dev, dst, src, n));
}

hm_status hm_dev_matmul_forward_bf16(hm_device *dev, void *out, const void *inp, const void *weight,
                                     const void *bias, int N, int C, int OC) {
  const char *op = "matmul_forward_bf16";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(inp, op); HM_CHECK_PTR(weight, op);
  HM_CHECK_POS(N, op); HM_CHECK_POS(C, op); HM_CHECK_POS(OC, op); HM_NEED_BF16(dev, op);
  HM_RUN_KERNEL(dev, op, dev->ops->matmul_forward_bf16(dev, out, inp, weight, bias, N, C, OC));
}

hm_status hm_dev_matmul_backward_bf16(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                      const void *dout, const void *inp, const void *weight, int N,
                                      int C, int OC) {
  const char *op = "matmul_backward_bf16";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dweight, op); HM_CHECK_PTR(dout, op); HM_CHECK_PTR(inp, op);
  HM_CHECK_PTR(weight, op); HM_CHECK_POS(N, op); HM_CHECK_POS(C, op); HM_CHECK_POS(OC, op);
  HM_NEED_BF16(dev, op);
  HM_RUN_KERNEL(dev, op, dev->ops->matmul_backward_bf16(dev, dinp, dweight, dbias, dout, inp, weight,
                                                        N, C, OC));
}

size_t hm_dev_attention_bf16_saved_elems(int B, int T, int C, int NH) {
  (void)C;
  return (size_t)B * NH * T;
}

hm_status hm_dev_attention_forward_bf16(hm_device *dev, void *out, void *saved, const void *qkv,
                                        int B, int T, int C, int NH) {
  const char *op = "attention_forward_bf16";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(out, op); HM_CHECK_PTR(saved, op); HM_CHECK_PTR(qkv, op);
  HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(C, op);
  HM_TRY(hm_check_heads(op, C, NH));
  HM_NEED_BF16(dev, op);
  HM_RUN_KERNEL(dev, op, dev->ops->attention_forward_bf16(dev, out, saved, qkv, B, T, C, NH));
}

hm_status hm_dev_attention_backward_bf16(hm_device *dev, void *dqkv, const void *dout,
                                         const void *qkv, const void *saved, int B, int T, int C,
                                         int NH) {
  const char *op = "attention_backward_bf16";
  HM_CHECK_DEV(dev, op); HM_CHECK_PTR(dqkv, op); HM_CHECK_PTR(dout, op); HM_CHECK_PTR(qkv, op);
  HM_CHECK_PTR(saved, op); HM_CHECK_POS(B, op); HM_CHECK_POS(T, op); HM_CHECK_POS(C, op);
  HM_TRY(hm_check_heads(op, C, NH));
  HM_NEED_BF16(dev, op);
  HM_RUN_KERNEL(dev, op, dev->ops->attention_backward_bf16(dev, dqkv, dout, qkv, saved, B, T, C, NH));
}
