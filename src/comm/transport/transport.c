/* Which transport a pair of ranks talks through, and the link figures of a job for the tuner.
 * Both follow from the shared rank table only, so every rank decides alike. */
#include "comm/transport/transport.h"

/* Same host and both with a shared-memory segment (transport=tcp creates none): shared memory;
 * otherwise TCP. */
const hm_transport *hm_transport_select(const hm_rank_info *a, const hm_rank_info *b) {
  if (a->host_key == b->host_key && a->has_shm && b->has_shm) return &hm_transport_shm;
  return &hm_transport_tcp;
}

void hm_transport_job_link(const hm_rank_info *info, int n, hm_link *out) {
  hm_transport_shm.link(out); /* a job without pairs: the fastest figures */
  for (int r = 1; r < n; r++)
    for (int q = 0; q < r; q++) {
      hm_link l;
      hm_transport_select(&info[q], &info[r])->link(&l);
      if (l.bandwidth < out->bandwidth) *out = l;
    }
}
