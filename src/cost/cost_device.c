/* The device terms of the cost model (cost.h, "device buffers"): staging copies and where a
 * device buffer's reduction is cheaper, host or device. */
#include <math.h>

#include "hetmix/cost.h"

static double per_byte(double bw) { return bw > 0 ? 1.0 / bw : 0.0; }

double hm_cost_staging(const hm_device_xfer *d, double bytes) {
  if (!(d->d2h_bw > 0) && !(d->h2d_bw > 0)) return 0.0;
  return 2 * d->copy_latency + bytes * (per_byte(d->d2h_bw) + per_byte(d->h2d_bw));
}

double hm_cost_staged_send(const hm_device_xfer *from, const hm_device_xfer *to, double bytes) {
  double t = 0;
  if (from->d2h_bw > 0) t += from->copy_latency + bytes / from->d2h_bw;
  if (to->h2d_bw > 0) t += to->copy_latency + bytes / to->h2d_bw;
  return t;
}

double hm_cost_allreduce_at(hm_reduce_site site, const hm_device_xfer *d, int nranks, double bytes,
                            const hm_link *link) {
  if (nranks <= 1) return 0.0;
  const double n = nranks, seg = bytes / n;
  hm_link l = *link;
  if (site == HM_REDUCE_ON_HOST) {
    l.reduce_bw = d->host_reduce_bw;
    double wire = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, nranks, bytes, &l);
    double copies = d->mapped > 0 ? 0.0 : hm_cost_staging(d, bytes);
    return fmax(wire, copies);
  }
  if (!(d->dev_reduce_bw > 0)) return INFINITY;
  l.reduce_bw = 0;
  double wire = hm_cost_collective(HM_COLL_ALLREDUCE, HM_ALGO_RING, nranks, bytes, &l);
  double copies = 2 * (n - 1) * hm_cost_staging(d, seg);
  double kernels = (n - 1) * (d->kernel_latency + seg / d->dev_reduce_bw);
  return wire + copies + kernels;
}

hm_reduce_site hm_cost_reduce_site(const hm_device_xfer *terms, int nterms, int nranks, double bytes,
                                   const hm_link *link, double *t_host, double *t_dev) {
  double th = 0, td = 0;
  for (int r = 0; r < nterms; r++) {
    th = fmax(th, hm_cost_allreduce_at(HM_REDUCE_ON_HOST, &terms[r], nranks, bytes, link));
    td = fmax(td, hm_cost_allreduce_at(HM_REDUCE_ON_DEVICE, &terms[r], nranks, bytes, link));
  }
  if (t_host) *t_host = th;
  if (t_dev) *t_dev = td;
  return nterms > 0 && td < th ? HM_REDUCE_ON_DEVICE : HM_REDUCE_ON_HOST;
}
