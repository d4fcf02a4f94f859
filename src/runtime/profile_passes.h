/* The length of a profile's repeated passes (profile.c, profile_layers.c). */
#ifndef HM_RUNTIME_PROFILE_PASSES_H
#define HM_RUNTIME_PROFILE_PASSES_H

#include <math.h>

/* Rounds for the next pass, so that the passes still allowed (left_passes) fill the time left
 * (time_left_s) when a pass of `rounds` rounds took pass_s: `rounds` when they do already, else
 * as many more as the shortfall asks (a tiny layer's pass takes a millisecond, and
 * HM_PROFILE_MAX_PASSES of them would end a measurement long before its least length). */
static inline int hm_profile_rounds_to_fill(int rounds, double pass_s, double time_left_s, int left_passes) {
  if (rounds < 1 || left_passes < 1 || !(pass_s > 0) || !(time_left_s > 0)) return rounds;
  const double need = time_left_s / pass_s; /* passes of this size that fill the time left */
  if (need <= left_passes) return rounds;
  const double r = ceil(rounds * need / left_passes);
  return r > 100000 ? 100000 : (int)r;
}

#endif
