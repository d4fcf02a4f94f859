/* The peer run of hmcomm's allreduce benchmark: MPI_Allreduce (f32, sum) timed exactly as
 * `hetmix bench comm allreduce` times hm_comm_allreduce (same sizes, warmup, barrier, timed
 * iterations, time averaged over ranks, busbw = algbw x 2(n-1)/n), out of place, on the same
 * values (src/util/bench_values.h). Built against
 * Debian's Open MPI; bench/comm/compare_mpi.sh prints both side by side.
 *   mpirun -np 2 mpi_allreduce_bench [-b 8] [-e 64M] [-f 2] [-n 20] [-w 5] */
#define _GNU_SOURCE /* madvise, MADV_HUGEPAGE */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util/bench_values.h"

static size_t parse_size(const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (*end == 'K' || *end == 'k') v *= 1024;
  if (*end == 'M' || *end == 'm') v *= 1024.0 * 1024;
  if (*end == 'G' || *end == 'g') v *= 1024.0 * 1024 * 1024;
  return (size_t)v;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  size_t minb = 8, maxb = 64u << 20;
  double factor = 2;
  int iters = 20, warmup = 5, huge = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "-b")) minb = parse_size(argv[i + 1]);
    else if (!strcmp(argv[i], "-e")) maxb = parse_size(argv[i + 1]);
    else if (!strcmp(argv[i], "-f")) factor = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "-n")) iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "-w")) warmup = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--hugepages")) huge = atoi(argv[i + 1]);
    else {
      if (rank == 0) fprintf(stderr, "mpi_allreduce_bench: unknown option %s\n", argv[i]);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  if (factor <= 1) factor = 2;
  if (iters < 1) iters = 1;
  /* --hugepages 1: 2 MiB-aligned buffers advised for transparent huge pages, as hetmix bench
   * comm --hugepages allocates them (the comparison gives both sides the same memory) */
  const size_t al = huge ? (2u << 20) : 4096, cap = (maxb + al - 1) / al * al;
  float *s = aligned_alloc(al, cap);
  float *r = aligned_alloc(al, cap);
  if (!s || !r) MPI_Abort(MPI_COMM_WORLD, 1);
  if (huge) {
    madvise(s, cap, MADV_HUGEPAGE);
    madvise(r, cap, MADV_HUGEPAGE);
  }
  memset(s, 0, maxb);
  memset(r, 0, maxb);
  /* the values hetmix bench comm reduces (with or without -c) */
  const int lim = hm_bench_value_limit(HM_FLOAT32, n);
  for (size_t i = 0; i < maxb / 4; i++) s[i] = (float)hm_bench_red_input(HM_SUM, rank, i, lim);
  if (rank == 0) {
    printf("# MPI_Allreduce f32 sum, %d ranks, out of place\n", n);
    printf("# %10s %12s %8s %6s %6s %8s %7s %7s\n", "size", "count", "type", "redop", "root",
           "time", "algbw", "busbw");
    printf("# %10s %12s %8s %6s %6s %8s %7s %7s\n", "(B)", "(elements)", "", "", "", "(us)",
           "(GB/s)", "(GB/s)");
  }
  for (size_t size = minb; size <= maxb;) {
    int count = (int)(size / 4);
    for (int w = 0; w < warmup; w++) MPI_Allreduce(s, r, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int it = 0; it < iters; it++) MPI_Allreduce(s, r, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double dt = (MPI_Wtime() - t0) / iters, tsum = 0;
    MPI_Allreduce(&dt, &tsum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double t = tsum / n, bytes = (double)count * 4;
    double algbw = t > 0 ? bytes / t * 1e-9 : 0, busbw = algbw * 2.0 * (n - 1) / n;
    if (rank == 0) {
      printf("  %10.0f %12d %8s %6s %6d %8.2f %7.2f %7.2f\n", bytes, count, "f32", "sum", -1,
             t * 1e6, algbw, busbw);
      fflush(stdout);
    }
    size_t next = (size_t)((double)size * factor);
    size = next > size ? next : size + 1;
  }
  free(s);
  free(r);
  MPI_Finalize();
  return 0;
}
