/* Open MPI oracle: MPI_Allreduce(MPI_SUM) of the inputs of oracle_inputs.h for every integer
 * type and count; rank 0 writes the results, type by type and count by count, to argv[1].
 * Built against Debian's Open MPI only (no hetmix code), run by test_comm_oracle. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "oracle_inputs.h"

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc < 2) {
    if (rank == 0) fprintf(stderr, "usage: oracle_mpi_allreduce <out-file>\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  static const MPI_Datatype types[HM_ORACLE_NTYPES] = {MPI_INT8_T, MPI_UINT8_T, MPI_INT32_T,
                                                       MPI_UINT32_T, MPI_INT64_T, MPI_UINT64_T};
  FILE *f = rank == 0 ? fopen(argv[1], "wb") : NULL;
  if (rank == 0 && !f) {
    perror(argv[1]);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (int t = 0; t < HM_ORACLE_NTYPES; t++)
    for (size_t k = 0; k < HM_ORACLE_NCOUNTS; k++) {
      size_t n = hm_oracle_counts[k], es = hm_oracle_size[t];
      unsigned char *in = malloc(n * es), *out = malloc(n * es);
      if (!in || !out) MPI_Abort(MPI_COMM_WORLD, 1);
      for (size_t i = 0; i < n; i++) hm_oracle_input(t, rank, i, in + i * es);
      MPI_Allreduce(in, out, (int)n, types[t], MPI_SUM, MPI_COMM_WORLD);
      if (f && fwrite(out, es, n, f) != n) MPI_Abort(MPI_COMM_WORLD, 1);
      free(in);
      free(out);
    }
  if (f && fclose(f) != 0) MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Finalize();
  return 0;
}
