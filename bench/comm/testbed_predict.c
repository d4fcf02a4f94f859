/* The cost model's allreduce times for a testbed (bench/comm/testbed_allreduce.sh): the flat
 * ring over the link between pools and the hierarchical allreduce, from include/hetmix/cost.h,
 * the functions hmcomm's tuner uses.
 *   testbed_predict POOLS PER_POOL PER_HOST POOL_BW POOL_LAT POOL_BURST CROSS_BW CROSS_LAT CROSS_BURST SIZE...
 * (bytes/s, seconds, bytes: the link classes as hetmix profile --netns measured them)
 * prints "size ring_s hier_s pick" per size (bytes); pick: the algorithm hmcomm's tuner runs there
 * (src/comm/coll.c: the hierarchy against the best flat algorithm over the link between pools). */
#include <stdio.h>
#include <stdlib.h>

#include "hetmix/cost.h"

int main(int argc, char **argv) {
  if (argc < 11) {
    fprintf(stderr, "usage: testbed_predict POOLS PER_POOL PER_HOST POOL_BW POOL_LAT POOL_BURST CROSS_BW CROSS_LAT "
                    "CROSS_BURST SIZE...\n");
    return 2;
  }
  const int pools = atoi(argv[1]), per_pool = atoi(argv[2]), per_host = atoi(argv[3]);
  /* reduce_bw as hmcomm's transports assume it (src/comm/transport) */
  const hm_link pool = {atof(argv[4]), atof(argv[5]), 6e9, atof(argv[6])},
                cross = {atof(argv[7]), atof(argv[8]), 6e9, atof(argv[9])};
  if (pools < 1 || per_pool < 1 || per_host < 1 || !(pool.bandwidth > 0) || !(cross.bandwidth > 0) ||
      !(pool.burst >= 0) || !(cross.burst >= 0)) {
    fprintf(stderr, "testbed_predict: counts must be >= 1, bandwidths > 0 and bursts >= 0\n");
    return 2;
  }
  for (int i = 10; i < argc; i++) {
    double b = atof(argv[i]), flat_t;
    hm_coll_algo flat = hm_cost_best_algo(HM_COLL_ALLREDUCE, pools * per_pool, b, &cross, &flat_t);
    double hier = hm_cost_hier(HM_COLL_ALLREDUCE, pools, per_pool, per_host, b, &pool, &cross);
    printf("%.0f %.9g %.9g %s\n", b, hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, pools * per_pool, b, &cross),
           hier, hm_coll_algo_name(hier >= 0 && hier < flat_t ? HM_ALGO_HIER : flat));
  }
  return 0;
}
