/* Self-calibration of a profile from a training run's measured stage times
 * (hm_profile_calibrate, include/hetmix/plan.h). */
#include <stdlib.h>
#include <string.h>

#include "hetmix/plan.h"
#include "util/util.h"

hm_status hm_profile_calibrate(const hm_plan_inputs *in, const hm_plan *plan, int cls, const double *fwd,
                               const double *bwd, hm_profile *out, double (*scale)[2]) {
  if (!in || !in->profile || !plan || !fwd || !bwd || !out)
    return hm_error(HM_ERR_INVALID_ARG, "calibrate: needs the plan, its profile and the measured stage times");
  if (cls < 0 || cls >= plan->nclasses)
    return hm_error(HM_ERR_INVALID_ARG, "calibrate: no class %d (the plan has %d)", cls, plan->nclasses);
  const hm_plan_class *pc = &plan->classes[cls];
  double meas[HM_PLAN_MAX_TYPES][2] = {{0}}, pred[HM_PLAN_MAX_TYPES][2] = {{0}};
  for (int s = 0; s < pc->nstages; s++) {
    const hm_plan_stage *st = &pc->stages[s];
    if (!(fwd[s] > 0) || !(bwd[s] > 0))
      return hm_error(HM_ERR_INVALID_ARG, "calibrate: stage %d has no measured forward and backward time", s);
    if (st->tp != 1 || st->type < 0 || st->type >= HM_PLAN_MAX_TYPES) continue;
    meas[st->type][0] += fwd[s], meas[st->type][1] += bwd[s];
    pred[st->type][0] += st->fwd, pred[st->type][1] += st->bwd;
  }
  const hm_profile *pr = in->profile;
  hm_profile cp = *pr;
  cp.layers = hm_malloc((size_t)(pr->nlayers > 0 ? pr->nlayers : 1) * sizeof *cp.layers, "calibrated profile");
  cp.links = hm_malloc((size_t)(pr->nlinks > 0 ? pr->nlinks : 1) * sizeof *cp.links, "calibrated profile");
  cp.staging = hm_malloc((size_t)(pr->nstaging > 0 ? pr->nstaging : 1) * sizeof *cp.staging, "calibrated profile");
  if (!cp.layers || !cp.links || !cp.staging) {
    free(cp.layers), free(cp.links), free(cp.staging);
    return HM_ERR_NOMEM;
  }
  if (pr->nlayers > 0) memcpy(cp.layers, pr->layers, (size_t)pr->nlayers * sizeof *cp.layers);
  if (pr->nlinks > 0) memcpy(cp.links, pr->links, (size_t)pr->nlinks * sizeof *cp.links);
  if (pr->nstaging > 0) memcpy(cp.staging, pr->staging, (size_t)pr->nstaging * sizeof *cp.staging);
  cp.cap_layers = pr->nlayers, cp.cap_links = pr->nlinks, cp.cap_staging = pr->nstaging;
  for (int k = 0; k < HM_PLAN_MAX_TYPES; k++) {
    if (scale) scale[k][0] = scale[k][1] = 0;
    if (!(pred[k][0] > 0) || !(pred[k][1] > 0)) continue;
    const double f = meas[k][0] / pred[k][0], b = meas[k][1] / pred[k][1];
    int n = 0;
    for (int i = 0; i < cp.nlayers; i++)
      if (cp.layers[i].type == k) {
        cp.layers[i].fwd_s *= f, cp.layers[i].bwd_s *= b;
        cp.layers[i].from_run = 1;
        n++;
      }
    if (n && scale) scale[k][0] = f, scale[k][1] = b;
  }
  *out = cp;
  return HM_OK;
}
