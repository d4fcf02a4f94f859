/* The embedded default cluster of `hetmix train` (and `--cluster local`): this machine as two
 * unlike devices of two runtimes, each given one core: `cpu` (the cpu backend, one OpenBLAS
 * thread) and `opencl` (the opencl backend, one pocl worker thread on a CPU, or a GPU's ICD).
 * On a machine where the cuda backend opens a GPU, the default is that GPU (`cuda`) beside a
 * `cpu` device of four OpenBLAS threads, so the planner weighs one against the other.
 * When the opencl backend is not built or finds no OpenCL platform or device, the default falls
 * back to `cpu` and `cpu-half` (the cpu backend emulating a chip half as fast, slow=2: a test
 * aid, not a chip) and the caller prints why.
 * Whether opencl works is found out by opening it in a child process (with a deadline), so this
 * process never starts OpenCL's threads and the children it launches start clean; the probe
 * also builds the kernel binary cache the workers then load. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "hetmix/device.h"
#include "util/util.h"

#define HM_LOCAL_OPENCL_SPEC "opencl:threads=1"
#define HM_LOCAL_CUDA_SPEC "cuda:device=0"
#define HM_LOCAL_PROBE_TIMEOUT_MS 180000 /* a first open builds the kernels from source */

static const char hm_local_cpu_opencl[] =
    "{\"version\": 1, \"name\": \"local-cpu-opencl\",\n"
    " \"note\": \"this machine as two device runtimes, one core each: OpenBLAS (cpu) and OpenCL (opencl)\",\n"
    " \"device_types\": [\n"
    "  {\"name\": \"cpu\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11},\n"
    "   \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5},\n"
    "  {\"name\": \"opencl\", \"backend\": \"" HM_LOCAL_OPENCL_SPEC "\", \"peak_flops\": {\"fp32\": 2e10},\n"
    "   \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}],\n"
    " \"hosts\": [{\"name\": \"localhost\", \"count\": 1,\n"
    "   \"devices\": [{\"type\": \"cpu\", \"count\": 1}, {\"type\": \"opencl\", \"count\": 1}],\n"
    "   \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}\n";

/* A GPU machine: the GPU and four of the host's cores. The figures are datasheet starting
 * points (an H100/H200-class GPU's f32 peak); the profile measures both devices before planning. */
static const char hm_local_cuda_cpu[] =
    "{\"version\": 1, \"name\": \"local-cuda-cpu\",\n"
    " \"note\": \"this machine as a GPU (cuda) and four host cores (cpu)\",\n"
    " \"device_types\": [\n"
    "  {\"name\": \"cuda\", \"backend\": \"" HM_LOCAL_CUDA_SPEC "\", \"peak_flops\": {\"fp32\": 6.7e13},\n"
    "   \"memory_bytes\": 8e10, \"memory_bandwidth\": 3.3e12, \"efficiency\": 0.5},\n"
    "  {\"name\": \"cpu\", \"backend\": \"cpu:threads=4\", \"peak_flops\": {\"fp32\": 4e11},\n"
    "   \"memory_bytes\": 8e9, \"memory_bandwidth\": 2e10, \"efficiency\": 0.5}],\n"
    " \"hosts\": [{\"name\": \"localhost\", \"count\": 1,\n"
    "   \"devices\": [{\"type\": \"cuda\", \"count\": 1}, {\"type\": \"cpu\", \"count\": 1}],\n"
    "   \"host_link\": {\"bandwidth\": 2e10, \"latency\": 5e-6}}]}\n";

/* The fallback: slow=2 is an emulation (sleeps after each kernel), so both workers fit two cores. */
static const char hm_local_cpu_half[] =
    "{\"version\": 1, \"name\": \"local-mixed\",\n"
    " \"note\": \"this machine as two unlike workers: one OpenBLAS thread, and one emulating a chip half as fast\",\n"
    " \"device_types\": [\n"
    "  {\"name\": \"cpu\", \"backend\": \"cpu:threads=1\", \"peak_flops\": {\"fp32\": 1e11},\n"
    "   \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5},\n"
    "  {\"name\": \"cpu-half\", \"backend\": \"cpu:threads=1,slow=2\", \"peak_flops\": {\"fp32\": 5e10},\n"
    "   \"memory_bytes\": 4e9, \"memory_bandwidth\": 1e10, \"efficiency\": 0.5}],\n"
    " \"hosts\": [{\"name\": \"localhost\", \"count\": 1,\n"
    "   \"devices\": [{\"type\": \"cpu\", \"count\": 1}, {\"type\": \"cpu-half\", \"count\": 1}],\n"
    "   \"host_link\": {\"bandwidth\": 5e9, \"latency\": 5e-6}}]}\n";

/* Child side: opens and closes spec; the error message goes up the pipe. */
static void probe_child(const char *spec, int fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  hm_device *dev = NULL;
  if (hm_device_open(spec, &dev) != HM_OK) {
    const char *msg = hm_last_error();
    ssize_t w = write(fd, msg, strlen(msg));
    (void)w;
    _exit(1);
  }
  hm_device_close(dev);
  _exit(0);
}

/* Reads the child's message until end of file or the deadline; 0 on end of file. */
static int read_until(int fd, uint64_t deadline, char *buf, size_t cap) {
  size_t n = 0;
  for (;;) {
    const uint64_t now = hm_now_ns();
    if (now >= deadline) return -1;
    struct pollfd p = {fd, POLLIN, 0};
    const int ms = (int)((deadline - now) / 1000000u) + 1;
    const int r = poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue; /* the deadline check above ends it */
    char tmp[256];
    const ssize_t k = read(fd, tmp, sizeof tmp);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    for (ssize_t i = 0; i < k && n + 1 < cap; i++) buf[n++] = tmp[i];
  }
  buf[n] = '\0';
  return 0;
}

/* 1 when spec opens in a child process within the deadline; else 0 with the reason in why. */
static int probe_device(const char *spec, char *why, size_t cap) {
  int fd[2];
  if (pipe(fd) != 0) {
    snprintf(why, cap, "pipe: %s", strerror(errno));
    return 0;
  }
  fflush(stdout);
  fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, cap, "fork: %s", strerror(errno));
    close(fd[0]);
    close(fd[1]);
    return 0;
  }
  if (pid == 0) {
    close(fd[0]);
    probe_child(spec, fd[1]);
  }
  close(fd[1]);
  char msg[512];
  const int timed_out = read_until(fd[0], hm_deadline_after_ms(HM_LOCAL_PROBE_TIMEOUT_MS), msg, sizeof msg) != 0;
  close(fd[0]);
  if (timed_out) kill(pid, SIGKILL);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    snprintf(why, cap, "opening %s took over %d s", spec, HM_LOCAL_PROBE_TIMEOUT_MS / 1000);
    return 0;
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 1;
  snprintf(why, cap, "%s", msg[0] ? msg : WIFSIGNALED(st) ? "the probe was killed by a signal" : "the probe failed");
  return 0;
}

static int backend_built(const char *name) {
  for (int i = 0; i < hm_device_backend_count(); i++)
    if (strcmp(hm_device_backend_name(hm_device_backend_at(i)), name) == 0) return 1;
  return 0;
}

const char *hm_cli_local_cluster(char *why, size_t cap) {
  why[0] = '\0';
  if (backend_built("cuda") && probe_device(HM_LOCAL_CUDA_SPEC, why, cap)) return hm_local_cuda_cpu;
  why[0] = '\0'; /* no GPU is the common case, not a reason worth printing */
  return probe_device(HM_LOCAL_OPENCL_SPEC, why, cap) ? hm_local_cpu_opencl : hm_local_cpu_half;
}
