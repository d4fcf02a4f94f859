/* The opencl backend's program: opencl_kernels.cl (embedded at build time) built once per
 * device and cached as a binary under $XDG_CACHE_HOME/hetmix/opencl (or ~/.cache/...).
 *
 * Cache entries are never trusted blindly. The key is the source's hash, the build options,
 * the platform version, the device name and the driver version; the file name is the key's
 * hash, and the file holds a header (magic, key length, binary length, binary hash) followed
 * by the key and the binary. A file that is not a regular file, has the wrong size, another
 * key or a binary whose hash differs, or that the driver rejects, is ignored and the program
 * is built from source. Writes go to an exclusive temporary file (O_CREAT|O_EXCL, never
 * following a link) that is renamed over the entry, so readers see an old or a new complete
 * file. Writing the cache is best effort: failing to write it never fails the device. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device/opencl_internal.h"
#include "opencl_kernels_cl.h" /* generated: hm_cl_source[] */
#include "util/util.h"

static const char *const hm_cl_kernel_names[HM_CLK_COUNT] = {
    "encoder_forward",   "encoder_backward_wte", "encoder_backward_wpe", "layernorm_forward",
    "layernorm_backward_dinp", "layernorm_backward_dwb", "bias_fill", "bias_backward",
    "attention_probs",   "attention_out",        "attention_dpre",       "attention_dq",
    "attention_dkv",     "gelu_forward",         "gelu_backward",        "residual_forward",
    "accumulate",        "softmax_forward",      "crossentropy",         "adamw",
    "partial_sums",      "scale",                "rmsnorm_forward",      "rmsnorm_backward_dinp",
    "rmsnorm_backward_dw", "rope",               "swiglu_forward",       "swiglu_backward",
    "repeat_kv_forward", "repeat_kv_backward"};

/* No fast-math style options: results must match the reference to the tested bounds. */
static const char hm_cl_build_options[] = "-cl-std=CL1.2";

#define HM_CL_MAGIC "HMCLBIN1"
#define HM_CL_MAX_BINARY (256ull << 20) /* a larger entry is not ours: never read into memory */
typedef struct hm_cl_header {
  char magic[8];
  uint64_t key_len, bin_len, bin_hash;
} hm_cl_header;

static uint64_t hm_fnv64(const void *data, size_t n, uint64_t h) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
#define HM_FNV_SEED 1469598103934665603ull

hm_status hm_cl_cache_dir(char *buf, size_t cap) {
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  int n;
  if (xdg && xdg[0] == '/') n = snprintf(buf, cap, "%s/hetmix/opencl", xdg);
  else if (home && home[0] == '/') n = snprintf(buf, cap, "%s/.cache/hetmix/opencl", home);
  else return hm_error(HM_ERR_NOT_FOUND, "opencl: neither XDG_CACHE_HOME nor HOME is an absolute path");
  if (n < 0 || (size_t)n >= cap) return hm_error(HM_ERR_INVALID_ARG, "opencl: cache folder path too long");
  return HM_OK;
}

/* mkdir -p with mode 0700 for what it creates. */
static int hm_mkdirs(char *path) {
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int r = mkdir(path, 0700);
    *p = '/';
    if (r != 0 && errno != EEXIST) return -1;
  }
  return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

static void hm_cl_key(const hm_cl_impl *impl, char *key, size_t cap) {
  uint64_t src = hm_fnv64(hm_cl_source, strlen(hm_cl_source), HM_FNV_SEED);
  snprintf(key, cap, "hetmix-opencl 1\nsource %016llx\noptions %s\nplatform %s\ndevice %s\ndriver %s\n",
           (unsigned long long)src, hm_cl_build_options, impl->platform_version, impl->device_name,
           impl->driver_version);
}

static int hm_cl_entry_path(const char *key, char *path, size_t cap) {
  char dir[3072];
  if (hm_cl_cache_dir(dir, sizeof dir) != HM_OK) {
    hm_clear_error();
    return -1;
  }
  int n = snprintf(path, cap, "%s/%016llx.bin", dir, (unsigned long long)hm_fnv64(key, strlen(key), HM_FNV_SEED));
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int hm_read_all(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* The binary of a valid entry for key (caller frees), or NULL. */
static unsigned char *hm_cl_cache_read(const char *path, const char *key, size_t *len) {
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat sb;
  hm_cl_header h;
  unsigned char *bin = NULL;
  char *k = NULL;
  size_t klen = strlen(key);
  int ok = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && hm_read_all(fd, &h, sizeof h) == 0 &&
           memcmp(h.magic, HM_CL_MAGIC, 8) == 0 && h.key_len == klen && h.bin_len > 0 &&
           h.bin_len <= HM_CL_MAX_BINARY && (uint64_t)sb.st_size == sizeof h + h.key_len + h.bin_len;
  if (ok) {
    k = malloc(klen);
    bin = malloc((size_t)h.bin_len);
    ok = k && bin && hm_read_all(fd, k, klen) == 0 && memcmp(k, key, klen) == 0 &&
         hm_read_all(fd, bin, (size_t)h.bin_len) == 0 &&
         hm_fnv64(bin, (size_t)h.bin_len, HM_FNV_SEED) == h.bin_hash;
  }
  close(fd);
  free(k);
  if (!ok) {
    free(bin);
    return NULL;
  }
  *len = (size_t)h.bin_len;
  return bin;
}

static int hm_write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Writes the entry through an exclusive temporary file and a rename (best effort). */
static void hm_cl_cache_write(const char *path, const char *key, const unsigned char *bin, size_t len) {
  char dir[4096], tmp[4200];
  hm_strcpy(dir, sizeof dir, path);
  char *slash = strrchr(dir, '/');
  if (!slash) return;
  *slash = '\0';
  if (hm_mkdirs(dir) != 0) return;
  static unsigned counter;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u.%llx", path, (long)getpid(), __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED),
           (unsigned long long)hm_now_ns());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return;
  hm_cl_header h;
  memcpy(h.magic, HM_CL_MAGIC, 8);
  h.key_len = strlen(key);
  h.bin_len = len;
  h.bin_hash = hm_fnv64(bin, len, HM_FNV_SEED);
  int ok = hm_write_all(fd, &h, sizeof h) == 0 && hm_write_all(fd, key, strlen(key)) == 0 &&
           hm_write_all(fd, bin, len) == 0 && fsync(fd) == 0;
  if (close(fd) != 0) ok = 0;
  if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

static hm_status hm_cl_build_log(hm_cl_impl *impl, cl_int err) {
  char log[2048] = "";
  clGetProgramBuildInfo(impl->program, impl->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
  log[sizeof log - 1] = '\0';
  return hm_error(HM_ERR_INTERNAL, "opencl: building the kernels for %s failed (%s): %.1500s",
                  impl->device_name, hm_cl_errstr(err), log);
}

static hm_status hm_cl_from_source(hm_cl_impl *impl) {
  const char *src = hm_cl_source;
  cl_int err = CL_SUCCESS;
  impl->program = clCreateProgramWithSource(impl->ctx, 1, &src, NULL, &err);
  if (err != CL_SUCCESS) return hm_cl_fail(err, "clCreateProgramWithSource");
  err = clBuildProgram(impl->program, 1, &impl->device, hm_cl_build_options, NULL, NULL);
  if (err != CL_SUCCESS) return hm_cl_build_log(impl, err);
  return HM_OK;
}

/* 0 when the cached binary built; otherwise the program is released and -1 returned. */
static int hm_cl_from_binary(hm_cl_impl *impl, const unsigned char *bin, size_t len) {
  cl_int err = CL_SUCCESS, bin_status = CL_SUCCESS;
  impl->program = clCreateProgramWithBinary(impl->ctx, 1, &impl->device, &len, &bin, &bin_status, &err);
  if (err == CL_SUCCESS && bin_status == CL_SUCCESS)
    err = clBuildProgram(impl->program, 1, &impl->device, hm_cl_build_options, NULL, NULL);
  if (err == CL_SUCCESS && bin_status == CL_SUCCESS) return 0;
  if (impl->program) clReleaseProgram(impl->program);
  impl->program = NULL;
  return -1;
}

static void hm_cl_store(hm_cl_impl *impl, const char *path, const char *key) {
  size_t len = 0;
  if (clGetProgramInfo(impl->program, CL_PROGRAM_BINARY_SIZES, sizeof len, &len, NULL) != CL_SUCCESS || !len)
    return;
  unsigned char *bin = malloc(len);
  if (!bin) return;
  if (clGetProgramInfo(impl->program, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS)
    hm_cl_cache_write(path, key, bin, len);
  free(bin);
}

static hm_status hm_cl_make_kernels(hm_cl_impl *impl) {
  for (int i = 0; i < HM_CLK_COUNT; i++) {
    cl_int err = CL_SUCCESS;
    impl->kernels[i] = clCreateKernel(impl->program, hm_cl_kernel_names[i], &err);
    if (err != CL_SUCCESS) return hm_cl_fail(err, hm_cl_kernel_names[i]);
  }
  return HM_OK;
}

hm_status hm_cl_program_load(hm_cl_impl *impl) {
  char key[1024], path[4096];
  hm_cl_key(impl, key, sizeof key);
  int have_path = hm_cl_entry_path(key, path, sizeof path) == 0;
  size_t len = 0;
  unsigned char *bin = have_path ? hm_cl_cache_read(path, key, &len) : NULL;
  impl->program_cached = bin && hm_cl_from_binary(impl, bin, len) == 0;
  free(bin);
  if (!impl->program_cached) {
    HM_TRY(hm_cl_from_source(impl));
    if (have_path) hm_cl_store(impl, path, key);
  }
  return hm_cl_make_kernels(impl);
}
