/* The values `hetmix bench comm` reduces and moves (src/cli/cmd_bench.c), whether or not -c
 * checks them, and that its Open MPI peer (bench/comm/mpi_allreduce_bench.c) reduces too, so
 * both sides of a comparison work on the same data. Small integers: exact in every dtype, and
 * their sums over n ranks too (hm_bench_value_limit). Drawn from a hash of the element index,
 * so no pattern repeats along the buffer: a block or segment placed at the wrong offset
 * cannot hold the right values by period. Not a public header. */
#ifndef HETMIX_UTIL_BENCH_VALUES_H
#define HETMIX_UTIL_BENCH_VALUES_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/comm.h"

/* splitmix64's finalizer: consecutive inputs give unrelated outputs. */
static inline uint64_t hm_bench_hash(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Largest per-rank input such that n of them still sum exactly in dt (at most 255). */
static inline int hm_bench_value_limit(hm_dtype dt, int n) {
  int lim = dt == HM_INT8 ? 127 : dt == HM_UINT8 ? 255 : dt == HM_BFLOAT16 ? 256
          : dt == HM_FLOAT16 ? 2048 : 1 << 20;
  int m = lim / (n > 0 ? n : 1);
  return m < 1 ? 1 : m > 255 ? 255 : m;
}

/* Rank r's input at element i of a reduction: 0..lim; for prod 1 or 2, with a 2 from at most
 * one rank in 8 (no overflow). */
static inline double hm_bench_red_input(hm_redop op, int r, size_t i, int lim) {
  uint64_t h = hm_bench_hash(i);
  if (op == HM_PROD) return ((h + (uint64_t)r) % 8) == 0 ? 2 : 1;
  return (double)(hm_bench_hash(h + (uint64_t)r) % (uint64_t)(lim + 1));
}

/* Rank r's element i of the block for rank p (broadcast, gathers, scatter, alltoall, send). */
static inline double hm_bench_mov_input(int r, int p, size_t i) {
  return (double)((hm_bench_hash(i) % 97 + (uint64_t)r * 131 + (uint64_t)p * 17) % 97);
}

#endif
