/* The profile's staging entries (spec_profile_staging.c), read, written and resolved with the
 * rest of the profile by spec_profile.c. Internal to src/plan. */
#ifndef HETMIX_PLAN_SPEC_PROFILE_STAGING_H
#define HETMIX_PLAN_SPEC_PROFILE_STAGING_H

#include <cjson/cJSON.h>

#include "hetmix/spec.h"

/* Reads root.staging (optional array of {device_type, d2h_bandwidth, h2d_bandwidth, latency}). */
hm_status hm_profile_staging_read(const cJSON *j, const char *root, hm_profile *p);
/* Adds "staging" to j when p has entries; 0 on allocation failure. */
int hm_profile_staging_write(cJSON *j, const hm_profile *p);
hm_status hm_profile_staging_resolve(hm_profile *p, const hm_cluster *c);

#endif
