/* The uncertainty of a plan's prediction from its profile's measured spread (hm_plan_spread). */
#include <stdlib.h>
#include <string.h>

#include "hetmix/plan.h"
#include "util/util.h"

hm_status hm_plan_spread(const hm_plan_inputs *in, const hm_plan *p, double *rel) {
  if (!in || !p || !rel) return hm_error(HM_ERR_INVALID_ARG, "hm_plan_spread: NULL argument");
  *rel = 0;
  const hm_profile *pr = in->profile;
  int any = 0;
  for (int i = 0; pr && i < pr->nlayers; i++) any |= pr->layers[i].spread > 0;
  if (!any || !(p->step_time > 0)) return HM_OK;
  /* the same profile with every measured figure at the upper end of its spread */
  hm_profile hi = *pr;
  hi.layers = hm_malloc((size_t)pr->nlayers * sizeof *hi.layers, "profile copy");
  if (!hi.layers) return HM_ERR_NOMEM;
  memcpy(hi.layers, pr->layers, (size_t)pr->nlayers * sizeof *hi.layers);
  for (int i = 0; i < hi.nlayers; i++) {
    hi.layers[i].fwd_s *= 1 + hi.layers[i].spread;
    hi.layers[i].bwd_s *= 1 + hi.layers[i].spread;
  }
  hm_plan_inputs in_hi = *in;
  in_hi.profile = &hi;
  hm_plan q = *p;
  hm_status st = hm_plan_predict(&in_hi, &q, NULL);
  free(hi.layers);
  if (st == HM_OK) *rel = q.step_time / p->step_time - 1;
  return st;
}
