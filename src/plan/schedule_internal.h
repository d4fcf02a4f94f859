/* Interleaved 1F1B behind the hm_schedule_1f1b_* calls (schedule_interleaved.c). Not public. */
#ifndef HETMIX_PLAN_SCHEDULE_INTERNAL_H
#define HETMIX_PLAN_SCHEDULE_INTERNAL_H

#include "hetmix/plan.h"

/* cfg->nchunks > 1; cfg->nstages, nmicro >= 1 and stage_layers non-NULL already checked. */
hm_status hm_schedule_ilv_check(const hm_schedule_config *cfg);
int64_t hm_schedule_ilv_nops(const hm_schedule_config *cfg, int s);
hm_op hm_schedule_ilv_op(const hm_schedule_config *cfg, int s, int64_t i);

#endif
