/* Helpers for the runtime's multi-process tests: temp directories, running a command with a
 * deadline, reading small files, and asking /proc whether a process is still running.
 * Header-only so each test executable stays one source file plus this. */
#ifndef HM_TEST_PROC_HELPERS_H
#define HM_TEST_PROC_HELPERS_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline double hm_t_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A fresh directory under /tmp; path written into buf. */
static inline int hm_t_mkdtemp(char *buf, size_t cap, const char *tag) {
  snprintf(buf, cap, "/tmp/hm-%s-XXXXXX", tag);
  return mkdtemp(buf) ? 0 : -1;
}

static inline void hm_t_rmtree(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  int rc = system(cmd);
  (void)rc;
}

/* Reads a whole small file into buf (NUL-terminated); -1 when it does not exist. */
static inline int hm_t_read_file(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  buf[n] = '\0';
  fclose(f);
  return 0;
}

/* Value of NAME in an `env` dump ("NAME=value" lines); 0 when found. */
static inline int hm_t_env_value(const char *dump, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  const char *p = dump;
  while (p && *p) {
    if (strncmp(p, name, nl) == 0 && p[nl] == '=') {
      const char *v = p + nl + 1;
      const char *e = strchr(v, '\n');
      size_t n = e ? (size_t)(e - v) : strlen(v);
      if (n >= cap) n = cap - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return 0;
    }
    p = strchr(p, '\n');
    if (p) p++;
  }
  return -1;
}

/* Starts argv with stdout/stderr to files (NULL keeps ours); returns the pid. */
static inline pid_t hm_t_spawn(char *const argv[], const char *out_path, const char *err_path) {
  pid_t pid = fork();
  if (pid == 0) {
    if (out_path) {
      int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) dup2(fd, 1);
    }
    if (err_path) {
      int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) dup2(fd, 2);
    }
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

/* Waits for pid up to timeout_s; returns its wait status, or -1 after killing it on timeout. */
static inline int hm_t_wait(pid_t pid, double timeout_s) {
  double end = hm_t_now() + timeout_s;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0) return -1;
    if (hm_t_now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    usleep(5000);
  }
}

/* Waits until path exists, up to timeout_s; 0 when it does. */
static inline int hm_t_wait_file(const char *path, double timeout_s) {
  double end = hm_t_now() + timeout_s;
  struct stat sb;
  while (stat(path, &sb) != 0 || sb.st_size == 0) {
    if (hm_t_now() > end) return -1;
    usleep(5000);
  }
  return 0;
}

/* 1 while pid is a live process (exists and is not a zombie). */
static inline int hm_t_pid_running(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if (hm_t_read_file(path, buf, sizeof buf) != 0) return 0;
  const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
  return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

/* Waits up to timeout_s for pid to stop running; 0 when it has. */
static inline int hm_t_wait_gone(pid_t pid, double timeout_s) {
  double end = hm_t_now() + timeout_s;
  while (hm_t_pid_running(pid)) {
    if (hm_t_now() > end) return -1;
    usleep(5000);
  }
  return 0;
}

/* Reads an integer (a pid) from a file; -1 when missing. */
static inline long hm_t_read_long(const char *path) {
  char buf[64];
  if (hm_t_read_file(path, buf, sizeof buf) != 0) return -1;
  return strtol(buf, NULL, 10);
}

#endif
