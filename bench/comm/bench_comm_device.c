/* hmcomm with device buffers against host buffers, side by side: allreduce (f32 sum, out of
 * place) and sendrecv (ping-pong between ranks 0 and 1) busbw from 64 KiB to 64 MiB, on
 * forked local ranks that each open one device and register it with hm_comm_register_device.
 * Beside them, the device's copy bound: the bandwidth of a d2h plus an h2d copy of the same bytes
 * between the device and pinned host memory (blocking copies, measured on rank 0), which a staged
 * call cannot beat when its copies do not overlap each other (one in-order queue).
 *
 *   bench_comm_device [--device opencl:threads=1] [--ranks 2] [-b 65536] [-e 67108864] [-f 4]
 *                     [--rounds 3]
 *
 * busbw as nccl-tests: allreduce size/time x 2(n-1)/n; sendrecv size/time (one way). Each figure
 * is rank 0's mean time per call over the timed iterations (after warm-up, the ranks released
 * together by a barrier), the best of --rounds rounds that alternate host and device buffers. The staging chunk and ring come from HETMIX_STAGE_CHUNK/SLOTS; on a host-unified device
 * (pocl) the device buffers are mapped, and HETMIX_STAGE_MAP=0 measures the staging pipeline. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hetmix/comm.h"
#include "hetmix/device.h"

#define MAX_SIZES 32

typedef struct opts {
  const char *device;
  int nranks;
  size_t begin, end;
  int factor;
  int rounds;
} opts;

typedef struct figures {
  double ar_host, ar_dev, sr_host, sr_dev, copy; /* seconds per call; copy: d2h + h2d */
  int ok;                                        /* the device allreduce's result was right */
} figures;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int iters_for(size_t bytes) {
  size_t it = ((size_t)128 << 20) / bytes;
  return it < 3 ? 3 : it > 100 ? 100 : (int)it;
}

static int fail(const char *what, hm_status st) {
  fprintf(stderr, "bench_comm_device: %s: %s: %s\n", what, hm_status_name(st), hm_last_error());
  return 1;
}
#define TRY(what, expr)                        \
  do {                                         \
    hm_status st_ = (expr);                    \
    if (st_ != HM_OK) return fail(what, st_);  \
  } while (0)

/* Seconds per allreduce of count floats from sb to rb (device or host addresses alike). */
static int time_allreduce(hm_comm_t c, const void *sb, void *rb, size_t count, int iters, double *out) {
  for (int w = 0; w < 2; w++) TRY("allreduce (warm-up)", hm_comm_allreduce(c, sb, rb, count, HM_FLOAT32, HM_SUM));
  TRY("barrier", hm_comm_barrier(c));
  double t0 = now_s();
  for (int i = 0; i < iters; i++) TRY("allreduce", hm_comm_allreduce(c, sb, rb, count, HM_FLOAT32, HM_SUM));
  *out = (now_s() - t0) / iters;
  return 0;
}

/* Seconds per one-way message: rank 0 and 1 play ping-pong with buf; other ranks idle. */
static int time_sendrecv(hm_comm_t c, void *buf, size_t count, int iters, double *out) {
  int r = hm_comm_rank(c);
  *out = 0;
  TRY("barrier", hm_comm_barrier(c));
  double t0 = 0;
  for (int i = -2; i < iters; i++) {
    if (i == 0) t0 = now_s();
    if (r == 0) {
      TRY("send", hm_comm_send(c, buf, count, HM_FLOAT32, 1));
      TRY("recv", hm_comm_recv(c, buf, count, HM_FLOAT32, 1));
    } else if (r == 1) {
      TRY("recv", hm_comm_recv(c, buf, count, HM_FLOAT32, 0));
      TRY("send", hm_comm_send(c, buf, count, HM_FLOAT32, 0));
    }
  }
  *out = (now_s() - t0) / (2.0 * iters);
  return 0;
}

/* Seconds of a blocking d2h plus a blocking h2d of bytes (best of 3 after a warm-up). */
static int time_copies(hm_device *dev, void *d, void *pinned, size_t bytes, double *out) {
  double best = 1e30;
  for (int k = 0; k < 4; k++) {
    double t0 = now_s();
    TRY("copy_d2h", hm_device_copy_d2h(dev, pinned, d, bytes));
    TRY("copy_h2d", hm_device_copy_h2d(dev, d, pinned, bytes));
    double t = now_s() - t0;
    if (k && t < best) best = t;
  }
  *out = best;
  return 0;
}

static int check_allreduce(hm_device *dev, const void *drb, float *host, size_t count, int n) {
  if (hm_device_copy_d2h(dev, host, drb, count * sizeof(float)) != HM_OK) return 0;
  for (size_t i = 0; i < count; i++) {
    float want = 0;
    for (int q = 0; q < n; q++) want += (float)((i + (size_t)q) % 16);
    if (host[i] != want) return 0;
  }
  return 1;
}

static void keep_min(double *best, double t) {
  if (*best <= 0 || t < *best) *best = t;
}

/* rounds rounds, host then device in each; every figure keeps its best round (the machine is
 * shared: the best round is the one least disturbed). */
static int run_size(hm_comm_t c, hm_device *dev, int rounds, size_t bytes, char *d_s, char *d_r, float *h_s, float *h_r,
                    void *pinned, figures *f) {
  size_t count = bytes / sizeof(float);
  int it = iters_for(bytes), n = hm_comm_size(c), r = hm_comm_rank(c);
  for (size_t i = 0; i < count; i++) h_s[i] = (float)((i + (size_t)r) % 16);
  TRY("copy_h2d", hm_device_copy_h2d(dev, d_s, h_s, bytes));
  memset(f, 0, sizeof *f);
  f->ok = 1;
  for (int round = 0; round < rounds; round++) {
    double t;
    TRY("register (host)", hm_comm_register_device(c, NULL));
    if (time_allreduce(c, h_s, h_r, count, it, &t)) return 1;
    keep_min(&f->ar_host, t);
    if (time_sendrecv(c, h_r, count, it, &t)) return 1;
    keep_min(&f->sr_host, t);
    TRY("register (device)", hm_comm_register_device(c, dev));
    if (time_allreduce(c, d_s, d_r, count, it, &t)) return 1;
    keep_min(&f->ar_dev, t);
    f->ok &= check_allreduce(dev, d_r, h_r, count, n);
    if (time_sendrecv(c, d_r, count, it, &t)) return 1;
    keep_min(&f->sr_dev, t);
    if (time_copies(dev, d_r, pinned, bytes, &t)) return 1;
    keep_min(&f->copy, t);
  }
  return 0;
}

static void print_table(const char *title, const opts *o, const char *path, const size_t *sizes, int ns,
                        const figures *f, int allreduce) {
  double fac = allreduce ? 2.0 * (o->nranks - 1) / o->nranks : 1.0;
  printf("\n# %s, %d ranks; device %s (%s) vs host buffers\n", title, o->nranks, o->device, path);
  printf("# busbw GB/s; ratio = device / host; copy = size / (d2h + h2d time), the copy engine's bound%s\n",
         allreduce ? " (x 2(n-1)/n as busbw)" : "");
  printf("#%11s %11s %11s %10s %10s %7s %10s %s\n", "size(B)", "host(us)", "device(us)", "host", "device",
         "ratio", "copy", allreduce ? "check" : "");
  for (int k = 0; k < ns; k++) {
    double th = allreduce ? f[k].ar_host : f[k].sr_host, td = allreduce ? f[k].ar_dev : f[k].sr_dev;
    double bh = (double)sizes[k] / th * fac / 1e9, bd = (double)sizes[k] / td * fac / 1e9;
    double bc = (double)sizes[k] / f[k].copy * fac / 1e9;
    printf("%12zu %11.1f %11.1f %10.3f %10.3f %7.2f %10.3f %s\n", sizes[k], th * 1e6, td * 1e6, bh, bd,
           bd / bh, bc, allreduce ? (f[k].ok ? "ok" : "WRONG") : "");
  }
}

static int rank_main(const opts *o, const hm_unique_id *id, int rank) {
  hm_comm_t c = NULL;
  TRY("init", hm_comm_init_rank(&c, o->nranks, id, rank, NULL));
  hm_device *dev = NULL;
  TRY("device", hm_device_open(o->device, &dev));
  char *d_s = NULL, *d_r = NULL;
  void *pinned = NULL;
  float *h_s = malloc(o->end), *h_r = malloc(o->end);
  if (!h_s || !h_r) return fail("host buffers", HM_ERR_NOMEM);
  TRY("device buffer", hm_device_alloc(dev, (void **)&d_s, o->end, "send"));
  TRY("device buffer", hm_device_alloc(dev, (void **)&d_r, o->end, "recv"));
  TRY("pinned buffer", hm_device_alloc_host(dev, &pinned, o->end, "copy bound"));
  size_t sizes[MAX_SIZES];
  figures f[MAX_SIZES];
  int ns = 0;
  for (size_t b = o->begin; b <= o->end && ns < MAX_SIZES; b *= (size_t)o->factor) {
    sizes[ns] = b;
    if (run_size(c, dev, o->rounds, b, d_s, d_r, h_s, h_r, pinned, &f[ns])) return 1;
    ns++;
  }
  TRY("register (host)", hm_comm_register_device(c, NULL));
  if (rank == 0) {
    const char *map = getenv("HETMIX_STAGE_MAP");
    const char *path = hm_device_is_host(dev) ? "host device: in place"
                       : hm_device_host_unified(dev) && !(map && strcmp(map, "0") == 0)
                           ? "host-unified: buffers mapped, zero copy"
                           : "staged through pinned slots";
    print_table("allreduce f32 sum", o, path, sizes, ns, f, 1);
    print_table("sendrecv f32 (ping-pong, one way)", o, path, sizes, ns, f, 0);
    fflush(stdout);
  }
  hm_comm_destroy(c);
  hm_device_close(dev);
  free(h_s), free(h_r);
  return 0;
}

static int parse(int argc, char **argv, opts *o) {
  *o = (opts){"opencl:threads=1", 2, 64 << 10, 64 << 20, 4, 3};
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--device")) o->device = v;
    else if (!strcmp(k, "--ranks")) o->nranks = atoi(v);
    else if (!strcmp(k, "-b")) o->begin = strtoull(v, NULL, 10);
    else if (!strcmp(k, "-e")) o->end = strtoull(v, NULL, 10);
    else if (!strcmp(k, "-f")) o->factor = atoi(v);
    else if (!strcmp(k, "--rounds")) o->rounds = atoi(v);
    else {
      fprintf(stderr, "bench_comm_device: unknown option %s (see the comment at the top of the source)\n", k);
      return 1;
    }
  }
  if (o->nranks < 2 || o->nranks > 16 || o->begin < 64 || o->end < o->begin || o->factor < 2 || o->rounds < 1) {
    fprintf(stderr, "bench_comm_device: need 2..16 ranks, 64 <= -b <= -e, -f >= 2, --rounds >= 1\n");
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  opts o;
  if (parse(argc, argv, &o)) return 2;
  hm_unique_id id;
  if (hm_get_unique_id(&id) != HM_OK) return fail("unique id", hm_get_unique_id(&id));
  pid_t pids[16];
  for (int r = 0; r < o.nranks; r++) {
    pids[r] = fork();
    if (pids[r] == 0) _exit(rank_main(&o, &id, r));
    if (pids[r] < 0) return fail("fork", HM_ERR_INTERNAL);
  }
  int bad = 0;
  double deadline = now_s() + 1800; /* the whole run: 30 minutes at most */
  for (int r = 0; r < o.nranks; r++) {
    int ws = 0;
    for (;;) {
      pid_t p = waitpid(pids[r], &ws, WNOHANG);
      if (p == pids[r]) break;
      if (now_s() > deadline) {
        for (int q = 0; q < o.nranks; q++) kill(pids[q], SIGKILL);
        fprintf(stderr, "bench_comm_device: ranks still running after 30 minutes: killed\n");
        return 1;
      }
      usleep(20000);
    }
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) bad++;
  }
  return bad ? 1 : 0;
}
