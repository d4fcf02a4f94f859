/* `hetmix launch --cluster C --netns [--plan P]`: each rank of the cluster file (or of the plan,
 * on the cluster device the plan gives it) runs in the network
 * namespace named like its host (scripts/testbed.sh names them so), listens on that namespace's
 * address, and learns its pool and the link figures (HETMIX_POOL, HETMIX_LINK_POOL,
 * HETMIX_LINK_CROSS; docs/comm.md) for hmcomm's topology-aware tuner: a profile's measured link
 * classes (`hetmix profile --netns`, "host_links") where given, else the file's figures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hetmix/plan.h"
#include "hetmix/runtime.h"
#include "hetmix/spec.h"
#include "util/util.h"

static char *fmt_dup(const char *fmt, const char *a) {
  char buf[512];
  snprintf(buf, sizeof buf, fmt, a);
  return strdup(buf);
}

/* "VAR=bandwidth,latency,burst" (topology.c reads it). */
static char *link_env(const char *var, const hm_link *l) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s=%.17g,%.17g,%.17g", var, l->bandwidth, l->latency, l->burst);
  return strdup(buf);
}

/* The link figures of the file: between two hosts of rank 0's group, and from rank 0's group to
 * the first group of another pool (NIC and pool link, as hm_cluster_link gives one flow). */
static hm_status file_links(const hm_cluster *c, hm_link *pool, hm_link *cross, int *has_cross) {
  const hm_host_group *g0 = &c->groups[0];
  *has_cross = 0;
  HM_TRY(hm_cluster_link(c, 0, g0->dev[0].type, 0, g0->dev[0].type, 0, pool));
  for (int g = 1; g < c->ngroups; g++)
    if (c->groups[g].pool != g0->pool) {
      *has_cross = 1;
      return hm_cluster_link(c, 0, g0->dev[0].type, g, c->groups[g].dev[0].type, 0, cross);
    }
  return HM_OK;
}

static hm_status rank_env(const hm_cluster *c, int64_t r, const char *addr, const hm_link *pool,
                          const hm_link *cross, int has_cross, char ***out) {
  hm_rank_loc loc;
  HM_TRY(hm_cluster_locate(c, r, &loc));
  char **env = hm_calloc(5, sizeof(char *), "worker environment");
  if (!env) return HM_ERR_NOMEM;
  *out = env;
  int k = 0;
  env[k++] = fmt_dup("HETMIX_LISTEN_ADDR=%s", addr);
  const hm_host_group *g = &c->groups[loc.group];
  if (g->pool >= 0) env[k++] = fmt_dup("HETMIX_POOL=%s", c->pools[g->pool].name);
  if (c->nhosts > 1) env[k++] = link_env("HETMIX_LINK_POOL", pool);
  if (has_cross) env[k++] = link_env("HETMIX_LINK_CROSS", cross);
  for (int i = 0; i < k; i++)
    if (!env[i]) return hm_error(HM_ERR_NOMEM, "cannot allocate the worker environment");
  return HM_OK;
}

/* The cluster device each world rank of a plan runs on (plan.json's ranks list, in world-rank
 * order: class, replica, stage). */
static hm_status plan_devices(const char *plan_path, int64_t **dev, int *n) {
  hm_plan *plan = hm_calloc(1, sizeof *plan, "plan");
  if (!plan) return HM_ERR_NOMEM;
  hm_cluster cl;
  hm_model m;
  memset(&cl, 0, sizeof cl);
  memset(&m, 0, sizeof m);
  hm_plan_rank *ranks = NULL;
  int64_t nr = 0;
  hm_status st = hm_plan_load(plan_path, NULL, plan, &cl, &m, NULL);
  const hm_plan_inputs in = {&cl, &m, NULL, NULL};
  if (st == HM_OK) st = hm_plan_assign_ranks(&in, plan, &ranks, &nr);
  if (st == HM_OK && nr > 4096) st = hm_error(HM_ERR_INVALID_ARG, "%s: %lld ranks is more than 4096", plan_path, (long long)nr);
  if (st == HM_OK && !(*dev = hm_calloc((size_t)nr + 1, sizeof(int64_t), "plan devices"))) st = HM_ERR_NOMEM;
  for (int64_t w = 0; st == HM_OK && w < nr; w++) (*dev)[w] = ranks[w].rank;
  *n = (int)nr;
  free(ranks);
  hm_cluster_free(&cl);
  hm_model_free(&m);
  free(plan);
  return st;
}

/* The profile's measured classes replace the file's figures where it has them. */
static hm_status profile_links(const char *path, hm_link *pool, hm_link *cross, int has_cross) {
  hm_profile p;
  hm_status st = hm_profile_load(path, &p);
  if (st != HM_OK) return hm_error_context(st, "--profile: ");
  hm_link l;
  if (hm_profile_host_link(&p, 0, &l)) *pool = (hm_link){l.bandwidth, l.latency, pool->reduce_bw, l.burst};
  if (has_cross && hm_profile_host_link(&p, 1, &l))
    *cross = (hm_link){l.bandwidth, l.latency, cross->reduce_bw, l.burst};
  hm_profile_free(&p);
  return HM_OK;
}

static hm_status fill(hm_launch_hosts *h, const hm_cluster *c, const int64_t *dev, int ndev, const char *profile) {
  for (int g = 0; g < c->ngroups; g++)
    if (!c->groups[g].hostnames)
      return hm_error(HM_ERR_SPEC, "host group %s gives no hostnames: --netns runs each host's workers in the "
                      "network namespace of that name (scripts/testbed.sh writes them)", c->groups[g].name);
  if (c->ndevices > 4096) return hm_error(HM_ERR_INVALID_ARG, "%lld ranks is more than 4096", (long long)c->ndevices);
  h->n = dev ? ndev : (int)c->ndevices;
  h->netns = hm_calloc((size_t)h->n + 1, sizeof(char *), "rank namespaces");
  h->env = hm_calloc((size_t)h->n + 1, sizeof(char **), "rank environments");
  if (!h->netns || !h->env) return HM_ERR_NOMEM;
  hm_link pool, cross;
  int has_cross;
  HM_TRY(file_links(c, &pool, &cross, &has_cross));
  if (profile) HM_TRY(profile_links(profile, &pool, &cross, has_cross));
  char addr[64] = "";
  int64_t addr_host = -1;
  for (int64_t w = 0; w < h->n; w++) {
    const int64_t r = dev ? dev[w] : w;
    hm_rank_loc loc;
    HM_TRY(hm_cluster_locate(c, r, &loc));
    const char *name = c->groups[loc.group].hostnames[loc.host_in_group];
    if (!(h->netns[w] = strdup(name))) return HM_ERR_NOMEM;
    if (loc.host != addr_host) HM_TRY(hm_netns_addr(name, addr, sizeof addr));
    addr_host = loc.host;
    if (w == 0) hm_strcpy(h->store_host, sizeof h->store_host, addr);
    HM_TRY(rank_env(c, r, addr, &pool, &cross, has_cross, &h->env[w]));
  }
  return HM_OK;
}

hm_status hm_launch_hosts_from_cluster(const char *path, const char *plan_path, const char *profile_path,
                                       hm_launch_hosts *h) {
  memset(h, 0, sizeof *h);
  int64_t *dev = NULL;
  int ndev = 0;
  if (plan_path) HM_TRY(plan_devices(plan_path, &dev, &ndev));
  hm_cluster c;
  hm_status st = hm_cluster_load(path, &c);
  if (st == HM_OK) {
    st = fill(h, &c, dev, ndev, profile_path);
    hm_cluster_free(&c);
  }
  free(dev);
  if (st != HM_OK) hm_launch_hosts_free(h);
  return st;
}

void hm_launch_hosts_free(hm_launch_hosts *h) {
  for (int r = 0; h->netns && r < h->n; r++) free(h->netns[r]);
  for (int r = 0; h->env && r < h->n; r++) {
    for (int i = 0; h->env[r] && h->env[r][i]; i++) free(h->env[r][i]);
    free(h->env[r]);
  }
  free(h->netns);
  free(h->env);
  memset(h, 0, sizeof *h);
}
