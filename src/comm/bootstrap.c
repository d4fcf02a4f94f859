/* Communicator creation and teardown: unique ids, configuration, the launcher environment,
 * the rendezvous, the authenticated connection mesh, shared-memory setup, split, destroy, abort.
 *
 * Bootstrap: every rank opens a listening socket and its shared-memory segment, publishes a
 * hm_rank_info, reads everyone's (from the store, or for split from an allgather over the parent),
 * connects to every lower rank (control connection; plus a data connection when the pair talks
 * TCP) and accepts the higher ones. Each connection is authenticated both ways with the job
 * secret. A final READY exchange on the control connections means every peer mapped our segment,
 * which is then unlinked. Not here: the data path (engine.c, coll.c, comm.c). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "comm/transport/transport.h"
#include "util/util.h"

#define RANK_INFO_MAGIC 0x464e4948u /* "HINF" */

static _Atomic unsigned g_comm_counter;

/* ---- unique id ---- */
typedef struct id_layout {
  uint32_t magic;
  uint16_t port;
  uint16_t version;
  unsigned char tag[HM_WIRE_TAG_BYTES];
  unsigned char secret[HM_SECRET_BYTES];
  char host[HM_UNIQUE_ID_BYTES - 8 - HM_WIRE_TAG_BYTES - HM_SECRET_BYTES];
} id_layout;
_Static_assert(sizeof(id_layout) == HM_UNIQUE_ID_BYTES, "unique id layout");
#define ID_MAGIC 0x44494d48u /* "HMID" */

hm_status hm_get_unique_id(hm_unique_id *id) {
  if (!id) return hm_error(HM_ERR_INVALID_ARG, "hm_get_unique_id: id is NULL");
  id_layout l;
  memset(&l, 0, sizeof l);
  l.magic = ID_MAGIC;
  l.version = HM_WIRE_VERSION;
  hm_random_bytes(l.tag, sizeof l.tag);
  hm_random_bytes(l.secret, sizeof l.secret);
  hm_store_server *s;
  int port;
  HM_TRY(hm_store_global(&s, l.host, sizeof l.host, &port));
  l.port = (uint16_t)port;
  HM_TRY(hm_store_server_add_job(s, l.tag, l.secret));
  memcpy(id->internal, &l, sizeof l);
  return HM_OK;
}

hm_status hm_unique_id_to_string(const hm_unique_id *id, char *buf, size_t cap) {
  if (!id || !buf) return hm_error(HM_ERR_INVALID_ARG, "hm_unique_id_to_string: %s is NULL", id ? "buf" : "id");
  if (cap < 2 * HM_UNIQUE_ID_BYTES + 1)
    return hm_error(HM_ERR_INVALID_ARG, "hm_unique_id_to_string: cap %zu < %d", cap, 2 * HM_UNIQUE_ID_BYTES + 1);
  for (int i = 0; i < HM_UNIQUE_ID_BYTES; i++) snprintf(buf + 2 * i, 3, "%02x", (unsigned char)id->internal[i]);
  return HM_OK;
}

hm_status hm_unique_id_from_string(hm_unique_id *id, const char *text) {
  if (!id || !text) return hm_error(HM_ERR_INVALID_ARG, "hm_unique_id_from_string: %s is NULL", id ? "text" : "id");
  if (strlen(text) != 2 * HM_UNIQUE_ID_BYTES)
    return hm_error(HM_ERR_INVALID_ARG, "unique id text has %zu characters, expected %d hex digits",
                    strlen(text), 2 * HM_UNIQUE_ID_BYTES);
  for (int i = 0; i < HM_UNIQUE_ID_BYTES; i++) {
    unsigned v;
    if (!isxdigit((unsigned char)text[2 * i]) || !isxdigit((unsigned char)text[2 * i + 1]) ||
        sscanf(text + 2 * i, "%2x", &v) != 1)
      return hm_error(HM_ERR_INVALID_ARG, "unique id text: not a hex digit at position %d", 2 * i);
    id->internal[i] = (char)v;
  }
  return HM_OK;
}

/* ---- configuration ---- */
static hm_status pick_str(const char *given, const char *env, const char *def, const char *const *allowed,
                          const char *field, char *out, size_t cap) {
  const char *v = given ? given : (getenv(env) && *getenv(env) ? getenv(env) : def);
  if (allowed) {
    int ok = 0;
    for (int i = 0; allowed[i]; i++) ok |= strcmp(v, allowed[i]) == 0;
    if (!ok && strcmp(field, "algorithm") == 0 && strcmp(v, "recursive_doubling") == 0) {
      v = "rd";
      ok = 1;
    }
    if (!ok) {
      char list[128] = "";
      for (int i = 0; allowed[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? "|" : "", allowed[i]);
      return hm_error(HM_ERR_INVALID_ARG, "config.%s (or %s): '%s' is not one of %s", field, env, v, list);
    }
  }
  if (hm_strcpy(out, cap, v) != 0)
    return hm_error(HM_ERR_INVALID_ARG, "config.%s: '%s' is too long", field, v);
  return HM_OK;
}

/* The tuning knobs of the environment (docs/comm.md), read once and checked: a value out of
 * range is an error naming the variable, not a silent default. -1: unset, the default depends
 * on the job's layout. */
static hm_status read_env_knobs(hm_env_knobs *k) {
  static const struct {
    const char *name;
    long def, lo, hi;
    size_t off;
  } knobs[] = {
      {"HETMIX_TIMEOUT_MS", 30000, 1, 86400000L, offsetof(hm_env_knobs, timeout_ms)},
      {"HETMIX_HEARTBEAT_MS", 500, 1, 3600000L, offsetof(hm_env_knobs, heartbeat_ms)},
      {"HETMIX_PEER_DEAD_MS", 3000, 1, 86400000L, offsetof(hm_env_knobs, peer_dead_ms)},
      {"HETMIX_SHM_CHUNK", 0, 0, 64L << 20, offsetof(hm_env_knobs, shm_chunk)},
      {"HETMIX_TCP_CHUNK", 512 << 10, 4096, HM_WIRE_MAX_PAYLOAD, offsetof(hm_env_knobs, tcp_chunk)},
      {"HETMIX_CMA", 1, 0, 1, offsetof(hm_env_knobs, cma)},
      {"HETMIX_SHM_SLOTS", -1, 2, 1024, offsetof(hm_env_knobs, shm_slots)},
      {"HETMIX_SPIN_US", -1, 0, 10000000L, offsetof(hm_env_knobs, spin_us)},
      {"HETMIX_YIELD_US", -1, 0, 10000000L, offsetof(hm_env_knobs, yield_us)},
      {"HETMIX_SPIN_SMALL_US", -1, 0, 10000000L, offsetof(hm_env_knobs, spin_small_us)},
      {"HETMIX_COMPRESS_ALWAYS", 0, 0, 1, offsetof(hm_env_knobs, compress_always)},
      {"HETMIX_COMPRESS_BELOW", (long)HM_ZIP_DEFAULT_BELOW, 1, 1000000000000000L, offsetof(hm_env_knobs, compress_below)},
      {"HETMIX_LINK_BW", 0, 0, 1000000000000000L, offsetof(hm_env_knobs, link_bw)},
      {"HETMIX_TCP_STREAMS", 1, 1, HM_TCP_MAX_STREAMS, offsetof(hm_env_knobs, tcp_streams)},
  };
  for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++)
    HM_TRY(hm_env_long(knobs[i].name, knobs[i].def, knobs[i].lo, knobs[i].hi, (long *)((char *)k + knobs[i].off)));
  return HM_OK;
}

static hm_status resolve_config(hm_comm_t c, const hm_comm_config *cfg) {
  hm_comm_config z = HM_COMM_CONFIG_INIT;
  if (!cfg) cfg = &z;
  if (cfg->timeout_ms < 0) return hm_error(HM_ERR_INVALID_ARG, "config.timeout_ms is negative (%d)", cfg->timeout_ms);
  if (cfg->heartbeat_ms < 0) return hm_error(HM_ERR_INVALID_ARG, "config.heartbeat_ms is negative (%d)", cfg->heartbeat_ms);
  if (cfg->peer_dead_ms < 0) return hm_error(HM_ERR_INVALID_ARG, "config.peer_dead_ms is negative (%d)", cfg->peer_dead_ms);
  HM_TRY(read_env_knobs(&c->env));
  c->cfg.timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : (int)c->env.timeout_ms;
  c->cfg.heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : (int)c->env.heartbeat_ms;
  c->cfg.peer_dead_ms = cfg->peer_dead_ms ? cfg->peer_dead_ms : (int)c->env.peer_dead_ms;
  static const char *const transports[] = {"auto", "shm", "tcp", NULL};
  static const char *const algos[] = {"auto", "ring", "rd", "tree", "hier", NULL};
  HM_TRY(pick_str(cfg->transport, "HETMIX_TRANSPORT", "auto", transports, "transport", c->transport, sizeof c->transport));
  HM_TRY(pick_str(cfg->algorithm, "HETMIX_ALGO", "auto", algos, "algorithm", c->algorithm, sizeof c->algorithm));
  HM_TRY(pick_str(cfg->listen_addr, "HETMIX_LISTEN_ADDR", "127.0.0.1", NULL, "listen_addr", c->listen_addr, sizeof c->listen_addr));
  HM_TRY(pick_str(cfg->name, "HETMIX_COMM_NAME", "", NULL, "name", c->name, sizeof c->name));
  static const char *const zips[] = {"auto", "off", "zstd", "lz4", NULL};
  HM_TRY(pick_str(cfg->compress, "HETMIX_COMPRESS", "auto", zips, "compress", c->compress, sizeof c->compress));
  HM_TRY(hm_zip_configure(&c->zip, c->compress, c->env.compress_always, c->env.compress_below, c->env.link_bw));
  c->cfg.compress = c->compress;
  c->cfg.transport = c->transport;
  c->cfg.algorithm = c->algorithm;
  c->cfg.listen_addr = c->listen_addr;
  c->cfg.name = c->name;
  c->forced_algo = strcmp(c->algorithm, "auto") == 0 ? -1 : hm_coll_algo_parse(c->algorithm);
  c->shm_chunk = (uint32_t)c->env.shm_chunk;
  c->tcp_chunk = (uint32_t)c->env.tcp_chunk & ~63u;

  return HM_OK;
}

static hm_comm_t comm_alloc(void) {
  hm_comm_t c = hm_calloc(1, sizeof *c, "communicator");
  if (!c) return NULL;
  pthread_mutex_init(&c->err_mu, NULL);
  pthread_mutex_init(&c->q_mu, NULL);
  pthread_cond_init(&c->q_cv, NULL);
  pthread_mutex_init(&c->ctrl_mu, NULL);
  pthread_mutex_init(&c->hb_mu, NULL);
  pthread_cond_init(&c->hb_cv, NULL);
  c->listen_fd = -1;
  c->bell_fd = -1;
  return c;
}

static void comm_free(hm_comm_t c) {
  if (!c) return;
  hm_comm_heartbeat_stop(c);
  hm_store_server_stop(c->store);
  if (c->peers) {
    for (int r = 0; r < c->nranks; r++) {
      hm_peer *p = &c->peers[r];
      if (p->tp) p->tp->close(c, r);
      if (p->ctrl_fd >= 0) close(p->ctrl_fd);
      for (int k = 0; k < HM_TCP_MAX_STREAMS; k++)
        if (p->data_fd[k] >= 0) close(p->data_fd[k]);
    }
  }
  if (c->shm_base) munmap(c->shm_base, c->shm_bytes);
  if (c->listen_fd >= 0) close(c->listen_fd);
  if (c->bell_fd >= 0) close(c->bell_fd);
  free(c->peers);
  free(c->scratch);
  free(c->cma_tmp);
  free(c->last_heard);
  hm_topo_free(&c->topo);
  pthread_mutex_destroy(&c->ctrl_mu);
  pthread_mutex_destroy(&c->hb_mu);
  pthread_cond_destroy(&c->hb_cv);
  pthread_mutex_destroy(&c->err_mu);
  pthread_mutex_destroy(&c->q_mu);
  pthread_cond_destroy(&c->q_cv);
  free(c);
}

/* Opens the listening socket and shared-memory segment, fills our hm_rank_info. */
static hm_status prepare_local(hm_comm_t c, hm_rank_info *me, char *shm_name, size_t shm_cap) {
  int port;
  HM_TRY(hm_net_listen(c->listen_addr, 0, &c->listen_fd, &port));
  hm_log(HM_LOG_DEBUG, "bootstrap: accepting peers on %s:%d", c->listen_addr, port);
  memset(me, 0, sizeof *me);
  me->magic = RANK_INFO_MAGIC;
  me->size = sizeof *me;
  HM_TRY(hm_topo_local(me));
  me->pid = (int32_t)getpid();
  me->port = port;
  me->nranks = c->nranks;
  me->cma_probe = (uint64_t)(uintptr_t)&hm_shm_cma_probe;
  hm_strcpy(me->addr, sizeof me->addr, c->listen_addr);
  hm_strcpy(me->transport, sizeof me->transport, c->transport);
  me->tcp_streams = (int32_t)c->env.tcp_streams;
  /* ring geometry: up to 4 ranks 8 slots of 64 KiB (a 512 KiB ring, the size of a core's L2
   * here: measured 10% faster for 4-16 MiB allreduce than 16 slots), beyond 16 slots of 16 KiB */
  uint32_t payload = c->shm_chunk ? c->shm_chunk : (c->nranks <= 4 ? 64u << 10 : 16u << 10);
  payload = (payload + 63) & ~63u;
  if (payload < 256) payload = 256;
  me->shm_payload = (int32_t)payload;
  me->shm_slots = (int32_t)(c->env.shm_slots >= 0 ? c->env.shm_slots : c->nranks <= 4 ? 8 : 16);
  shm_name[0] = '\0';
  if (strcmp(c->transport, "tcp") != 0 && c->nranks > 1) {
    snprintf(shm_name, shm_cap, "/hetmix-%02x%02x%02x%02x-%d-%d-%u", c->tag[0], c->tag[1], c->tag[2],
             c->tag[3], c->rank, (int)getpid(), atomic_fetch_add(&g_comm_counter, 1));
    c->shm_bytes = HM_SHM_HDR_BYTES + (size_t)c->nranks * hm_shm_ring_bytes((uint32_t)me->shm_slots, payload);
    HM_TRY(hm_shm_segment_create(shm_name, c->shm_bytes, &c->shm_base));
    c->bell = c->shm_base;
    hm_shm_bell_socket(c, shm_name);
    hm_strcpy(me->shm_name, sizeof me->shm_name, shm_name);
    me->has_shm = 1;
  }
  return HM_OK;
}

/* Takes an authenticated connection from a higher rank into its peer slot (control, or data
 * for a TCP pair). Only a connection that proved the job secret gets here, so what is wrong with
 * it is the claimed rank's doing. */
static int take_peer_conn(void *arg, const hm_wire_hello *hello, int fd, const char *who) {
  hm_comm_t c = arg;
  int r = hello->rank, me = c->rank;
  hm_peer *p = (r > me && r < c->nranks) ? &c->peers[r] : NULL;
  int *slot = !p ? NULL : hello->purpose == HM_CONN_CTRL ? &p->ctrl_fd : NULL;
  /* data connections fill the streams in the order they authenticate: the connector opens the
   * next only once this one's handshake is done (connect_down), so both ends number them alike */
  for (int k = 0; p && hello->purpose == HM_CONN_DATA && k < p->ndata && !slot; k++)
    if (p->data_fd[k] < 0) slot = &p->data_fd[k];
  if (!slot || *slot >= 0) {
    hm_log(HM_LOG_WARN, "rank %d: refused connection from %s (authenticated as rank %d): unexpected rank / purpose %u",
           me, who, r, (unsigned)hello->purpose);
    return 0;
  }
  *slot = fd;
  return 1;
}

/* Checks everyone's bootstrap record against ours and picks each pair's transport. */
static hm_status check_table(hm_comm_t c, const hm_rank_info *info) {
  const int n = c->nranks, me = c->rank;
  for (int r = 0; r < n; r++) {
    const hm_rank_info *ri = &info[r];
    if (ri->magic != RANK_INFO_MAGIC || ri->size != sizeof *ri)
      return hm_error(HM_ERR_PROTOCOL, "rank %d published a malformed bootstrap record (different hetmix build?)", r);
    if (ri->nranks != n)
      return hm_error(HM_ERR_MISMATCH, "rank %d was started with nranks=%d, this rank with %d", r, ri->nranks, n);
    if (strcmp(ri->transport, c->transport) != 0)
      return hm_error(HM_ERR_MISMATCH, "rank %d uses transport '%s', this rank '%s' (HETMIX_TRANSPORT must agree)",
                      r, ri->transport, c->transport);
    for (int q = 0; q < r; q++)
      if (hm_transport_select(&info[q], ri) != &hm_transport_shm && strcmp(c->transport, "shm") == 0)
        return hm_error(HM_ERR_UNSUPPORTED, "transport=shm but ranks %d and %d are on different hosts", q, r);
    if (ri->tcp_streams < 1 || ri->tcp_streams > HM_TCP_MAX_STREAMS)
      return hm_error(HM_ERR_PROTOCOL, "rank %d published %d TCP streams (1..%d)", r, (int)ri->tcp_streams,
                      HM_TCP_MAX_STREAMS);
    hm_peer *p = &c->peers[r];
    p->pid = ri->pid;
    p->tp = r == me ? NULL : hm_transport_select(&info[me], ri);
    /* the pair's streams: the smaller of the two ranks' settings, the same on both ends */
    p->ndata = !p->tp || !p->tp->data_conns ? 0
               : info[me].tcp_streams < ri->tcp_streams ? info[me].tcp_streams : ri->tcp_streams;
  }
  return HM_OK;
}

/* Waits spin briefly, then yield while this host's ranks fit its cores (like Open MPI's
 * yield-when-idle, it keeps a loaded machine's scheduler on our side), then sleep on the
 * doorbell. With more ranks than cores they sleep right after the spin. */
static void wait_policy(hm_comm_t c, int local) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  long spin_us = c->env.spin_us >= 0 ? c->env.spin_us : 20;
  long yield_us = c->env.yield_us >= 0 ? c->env.yield_us : local <= cpus ? 10000000 : 0;
  c->spin_ns = (uint64_t)spin_us * 1000u;
  c->yield_ns = c->spin_ns + (uint64_t)yield_us * 1000u;
  /* Latency-bound operations (under 1 MiB) spin longer: on a loaded machine the peer is often
   * preempted briefly, and a yield then costs a time slice; bandwidth-bound ones yield sooner. */
  long small_us = c->env.spin_small_us >= 0 ? c->env.spin_small_us : local <= cpus ? 2000 : spin_us;
  c->spin_small_ns = (uint64_t)small_us * 1000u;
}

/* Connects to every lower rank: the control connection, plus the data connections its
 * transport wants. */
static hm_status connect_down(hm_comm_t c, const hm_rank_info *info, uint64_t deadline) {
  for (int r = 0; r < c->rank; r++) {
    hm_peer *p = &c->peers[r];
    for (int k = -1; k < p->ndata; k++) { /* the control connection, then each data stream */
      const int purpose = k < 0 ? HM_CONN_CTRL : HM_CONN_DATA;
      int fd = -1;
      hm_status st = hm_net_connect(info[r].addr, info[r].port, deadline, &fd);
      if (st == HM_OK) st = hm_auth_connect(fd, c->tag, c->secret, c->rank, purpose, deadline);
      if (st != HM_OK) {
        if (fd >= 0) close(fd);
        return hm_error_context(st, "connecting to rank %d at %s:%d: ", r, info[r].addr, info[r].port);
      }
      if (k < 0) p->ctrl_fd = fd; else p->data_fd[k] = fd;
    }
  }
  return HM_OK;
}

/* Sets up every peer's transport and exchanges READY both ways: after it every peer has mapped
 * our segment; aux carries what the transport tells the peer (shm: whether we can read its
 * memory directly, so it may send us large transfers single-copy). */
static hm_status connect_transports(hm_comm_t c, const hm_rank_info *info, uint64_t deadline) {
  const int me = c->rank;
  for (int r = 0; r < c->nranks; r++) {
    if (r == me) continue;
    uint32_t aux = 0;
    HM_TRY(c->peers[r].tp->connect(c, r, &info[me], &info[r], &aux));
    HM_TRY(hm_net_send_frame(c->peers[r].ctrl_fd, HM_WIRE_CTRL_READY, 0, 0, aux, NULL, 0, deadline));
  }
  for (int r = 0; r < c->nranks; r++) {
    if (r == me) continue;
    hm_wire_hdr h;
    hm_status st = hm_net_recv_frame(c->peers[r].ctrl_fd, &h, NULL, 0, deadline);
    if (st == HM_OK && h.type != HM_WIRE_CTRL_READY)
      st = hm_error(HM_ERR_PROTOCOL, "expected READY, got frame type %u", (unsigned)h.type);
    if (st != HM_OK) return hm_error_context(st, "bootstrap with rank %d: ", r);
    if (c->peers[r].tp->ready) c->peers[r].tp->ready(c, r, h.aux);
  }
  return HM_OK;
}

/* Mesh, transports and the READY exchange, once everyone's hm_rank_info is known. */
static hm_status connect_mesh(hm_comm_t c, const hm_rank_info *info, uint64_t deadline) {
  const int n = c->nranks, me = c->rank;
  c->peers = hm_calloc((size_t)n, sizeof(hm_peer), "peers");
  if (!c->peers) return HM_ERR_NOMEM;
  for (int r = 0; r < n; r++) {
    c->peers[r].ctrl_fd = -1;
    for (int k = 0; k < HM_TCP_MAX_STREAMS; k++) c->peers[r].data_fd[k] = -1;
  }
  HM_TRY(check_table(c, info));
  HM_TRY(hm_topo_build(&c->topo, info, n, me));
  hm_topo_peer_links(&c->topo, info, n, me, c->peers);
  wait_policy(c, hm_topo_same_machine(info, n, me));
  /* tuner constants: the same on every rank because they derive from the shared table */
  hm_transport_job_link(info, n, &c->link);
  HM_TRY(connect_down(c, info, deadline));
  int expected = 0;
  for (int r = me + 1; r < n; r++) expected += 1 + c->peers[r].ndata;
  HM_TRY(hm_mesh_accept(c->listen_fd, c->tag, c->secret, me, expected, take_peer_conn, c, deadline));
  HM_TRY(connect_transports(c, info, deadline));
  close(c->listen_fd);
  c->listen_fd = -1;
  return hm_comm_heartbeat_start(c);
}

static hm_status init_with_store(hm_comm_t *out, int nranks, int rank, const unsigned char *tag,
                                 const unsigned char *secret, const char *host, int port,
                                 const hm_comm_config *cfg) {
  hm_comm_t c = comm_alloc();
  if (!c) return HM_ERR_NOMEM;
  c->rank = rank;
  c->nranks = nranks;
  memcpy(c->tag, tag, HM_WIRE_TAG_BYTES);
  memcpy(c->secret, secret, HM_SECRET_BYTES);
  char shm_name[64] = "";
  hm_rank_info *info = NULL;
  hm_store_client sc = {-1, 0};
  hm_status st = resolve_config(c, cfg);
  uint64_t deadline = hm_deadline_after_ms((uint64_t)c->cfg.timeout_ms);
  hm_rank_info me;
  if (st == HM_OK) st = prepare_local(c, &me, shm_name, sizeof shm_name);
  if (st == HM_OK) st = hm_store_connect(&sc, host, port, tag, secret, rank, deadline);
  char key[64];
  if (st == HM_OK) {
    snprintf(key, sizeof key, "info/%d", rank);
    st = hm_store_set(&sc, key, &me, sizeof me);
  }
  if (st == HM_OK) {
    info = hm_calloc((size_t)nranks, sizeof *info, "bootstrap table");
    if (!info) st = HM_ERR_NOMEM;
  }
  for (int r = 0; r < nranks && st == HM_OK; r++) {
    if (r == rank) {
      info[r] = me;
      continue;
    }
    snprintf(key, sizeof key, "info/%d", r);
    size_t len = sizeof *info;
    st = hm_store_get(&sc, key, &info[r], &len);
    if (st == HM_OK && len != sizeof *info)
      st = hm_error(HM_ERR_PROTOCOL, "rank %d's bootstrap record has %zu bytes, expected %zu", r, len, sizeof *info);
  }
  if (st == HM_OK) st = connect_mesh(c, info, deadline);
  hm_store_close(&sc);
  if (shm_name[0]) shm_unlink(shm_name);
  free(info);
  if (st != HM_OK) {
    hm_error_context(st, "rank %d of %d: init: ", rank, nranks);
    comm_free(c);
    return st;
  }
  hm_log(HM_LOG_INFO, "rank %d of %d: communicator ready", rank, nranks);
  *out = c;
  return HM_OK;
}

hm_status hm_comm_init_rank(hm_comm_t *comm, int nranks, const hm_unique_id *id, int rank,
                            const hm_comm_config *cfg) {
  if (!comm) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_init_rank: comm is NULL");
  *comm = NULL;
  if (!id) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_init_rank: id is NULL");
  if (nranks < 1) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_init_rank: nranks %d must be >= 1", nranks);
  if (rank < 0 || rank >= nranks)
    return hm_error(HM_ERR_INVALID_ARG, "hm_comm_init_rank: rank %d out of range [0, %d)", rank, nranks);
  id_layout l;
  memcpy(&l, id->internal, sizeof l);
  if (l.magic != ID_MAGIC || l.version != HM_WIRE_VERSION || l.port == 0 ||
      memchr(l.host, 0, sizeof l.host) == NULL)
    return hm_error(HM_ERR_INVALID_ARG, "hm_comm_init_rank: id is not a unique id from hm_get_unique_id");
  return init_with_store(comm, nranks, rank, l.tag, l.secret, l.host, l.port, cfg);
}

/* ---- launcher environment ---- */
static int env_int(const char *name, int *out) {
  const char *s = getenv(name);
  if (!s || !*s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v > (1 << 24)) return -1;
  *out = (int)v;
  return 1;
}

static hm_status split_hostport(const char *s, char *host, size_t cap, int *port) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s) return hm_error(HM_ERR_INVALID_ARG, "HETMIX_STORE_ADDR '%s' is not host:port", s);
  size_t hl = (size_t)(colon - s);
  if (hl >= cap) return hm_error(HM_ERR_INVALID_ARG, "HETMIX_STORE_ADDR host too long");
  memcpy(host, s, hl);
  host[hl] = '\0';
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end || p <= 0 || p > 65535) return hm_error(HM_ERR_INVALID_ARG, "HETMIX_STORE_ADDR '%s': bad port", s);
  *port = (int)p;
  return HM_OK;
}

/* First host of a Slurm node list: "n[01-04,07],m" -> "n01". */
static void slurm_first_host(const char *list, char *out, size_t cap) {
  size_t i = 0, o = 0;
  while (list[i] && list[i] != ',' && list[i] != '[' && o + 1 < cap) out[o++] = list[i++];
  if (list[i] == '[') {
    i++;
    while (list[i] && isdigit((unsigned char)list[i]) && o + 1 < cap) out[o++] = list[i++];
  }
  out[o] = '\0';
}

hm_status hm_launch_env_read(hm_launch_env *e) {
  if (!e) return hm_error(HM_ERR_INVALID_ARG, "hm_launch_env_read: env is NULL");
  memset(e, 0, sizeof *e);
  e->rank = e->size = e->local_rank = e->local_size = -1;
  e->store_port = 0;
  struct { const char *src, *rank, *size, *lrank, *lsize; } kinds[] = {
      {"hetmix", "HETMIX_RANK", "HETMIX_WORLD_SIZE", "HETMIX_LOCAL_RANK", "HETMIX_LOCAL_WORLD_SIZE"},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
      {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
      {"mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
      {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
  };
  int found = -1;
  for (int k = 0; k < 5 && found < 0; k++) {
    int rr = env_int(kinds[k].rank, &e->rank), sr = env_int(kinds[k].size, &e->size);
    if (rr == 0 && sr == 0) continue;
    if (rr != 1 || sr != 1)
      return hm_error(HM_ERR_INVALID_ARG, "launch environment (%s): %s and %s must both be set to non-negative integers",
                      kinds[k].src, kinds[k].rank, kinds[k].size);
    if (env_int(kinds[k].lrank, &e->local_rank) < 0) e->local_rank = -1;
    if (env_int(kinds[k].lsize, &e->local_size) < 0) e->local_size = -1;
    found = k;
  }
  if (found < 0)
    return hm_error(HM_ERR_NOT_FOUND, "no launch environment: set HETMIX_RANK/HETMIX_WORLD_SIZE/HETMIX_STORE_ADDR, "
                                      "or run under torchrun-style variables, mpirun or srun");
  e->source = kinds[found].src;
  if (e->size < 1 || e->rank >= e->size)
    return hm_error(HM_ERR_INVALID_ARG, "launch environment (%s): rank %d not in [0, %d)", e->source, e->rank, e->size);
  const char *sa = getenv("HETMIX_STORE_ADDR");
  if (sa && *sa) return split_hostport(sa, e->store_host, sizeof e->store_host, &e->store_port);
  const char *ma = getenv("MASTER_ADDR");
  int mp = 0;
  if (ma && *ma && env_int("MASTER_PORT", &mp) == 1 && mp > 0 && mp < 65536) {
    hm_strcpy(e->store_host, sizeof e->store_host, ma);
    e->store_port = mp;
    return HM_OK;
  }
  /* No address given: rank 0's host (Slurm's first node, else loopback) and a port derived from
   * the launcher's job id, so every rank of one job computes the same one. */
  const char *nl = getenv("SLURM_JOB_NODELIST");
  if (nl && *nl && found == 4)
    slurm_first_host(nl, e->store_host, sizeof e->store_host);
  else
    hm_strcpy(e->store_host, sizeof e->store_host, "127.0.0.1");
  const char *jobvars[] = {"OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "PMI_ID_BASE", "SLURM_JOB_ID", NULL};
  const char *job = NULL;
  for (int i = 0; jobvars[i] && !job; i++)
    if (getenv(jobvars[i]) && *getenv(jobvars[i])) job = getenv(jobvars[i]);
  if (!job)
    return hm_error(HM_ERR_NOT_FOUND, "launch environment (%s): no rendezvous address: set HETMIX_STORE_ADDR=host:port "
                                      "(or MASTER_ADDR and MASTER_PORT)", e->source);
  uint32_t h = hm_fnv1a(job, strlen(job));
  const char *step = getenv("SLURM_STEP_ID");
  if (step) h ^= hm_fnv1a(step, strlen(step)) * 31u;
  e->store_port = 20000 + (int)(h % 20000);
  return HM_OK;
}

/* Reads the secret file as ssh reads a private key: a regular file of this user that nobody
 * else may read or write. Checked on the open descriptor (no window between check and read). */
static hm_status read_secret_file(const char *path, char *buf, size_t cap, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s: %s", path, strerror(errno));
  struct stat sb;
  hm_status st = HM_OK;
  if (fstat(fd, &sb) != 0)
    st = hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s: %s", path, strerror(errno));
  else if (!S_ISREG(sb.st_mode))
    st = hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s is not a regular file", path);
  else if (sb.st_uid != geteuid())
    st = hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s is owned by uid %u, not by this user (uid %u): use a "
                  "secret file of your own (chmod 600)", path, (unsigned)sb.st_uid, (unsigned)geteuid());
  else if (sb.st_mode & 077)
    st = hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s has mode %03o: other users may read or change the job "
                  "secret; run chmod 600 %s", path, (unsigned)(sb.st_mode & 0777), path);
  ssize_t got = st == HM_OK ? read(fd, buf, cap) : 0;
  if (got < 0) st = hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s: %s", path, strerror(errno));
  close(fd);
  *len = got > 0 ? (size_t)got : 0;
  return st;
}

static hm_status read_secret(unsigned char secret[HM_SECRET_BYTES]) {
  const char *s = getenv("HETMIX_SECRET");
  char buf[4096];
  size_t len = 0;
  if (s && *s) {
    len = strlen(s);
    if (len > sizeof buf) len = sizeof buf;
    memcpy(buf, s, len);
  } else {
    const char *path = getenv("HETMIX_SECRET_FILE");
    if (!path || !*path)
      return hm_error(HM_ERR_AUTH, "no job secret: set HETMIX_SECRET (any string shared by the job's ranks) "
                                   "or HETMIX_SECRET_FILE (a file only the job can read)");
    HM_TRY(read_secret_file(path, buf, sizeof buf, &len));
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) len--;
    if (len == 0) return hm_error(HM_ERR_AUTH, "HETMIX_SECRET_FILE %s is empty", path);
  }
  unsigned int ol = HM_SECRET_BYTES;
  EVP_Digest(buf, len, secret, &ol, EVP_sha256(), NULL);
  return HM_OK;
}

hm_status hm_comm_init_env(hm_comm_t *comm, const hm_comm_config *cfg) {
  if (!comm) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_init_env: comm is NULL");
  *comm = NULL;
  hm_launch_env e;
  HM_TRY(hm_launch_env_read(&e));
  unsigned char secret[HM_SECRET_BYTES], tag[HM_WIRE_TAG_BYTES], mac[32];
  HM_TRY(read_secret(secret));
  char tagsrc[300];
  int tl = snprintf(tagsrc, sizeof tagsrc, "hmx-tag|%s|%d|%d", e.store_host, e.store_port, e.size);
  unsigned int ml = sizeof mac;
  HMAC(EVP_sha256(), secret, HM_SECRET_BYTES, (unsigned char *)tagsrc, (size_t)tl, mac, &ml);
  memcpy(tag, mac, HM_WIRE_TAG_BYTES);
  hm_store_server *srv = NULL;
  if (e.rank == 0) {
    int port;
    hm_status st = hm_store_server_start(e.store_host, e.store_port, tag, secret, &srv, &port);
    if (st != HM_OK)
      return hm_error_context(st, "rank 0 (%s launch): ", e.source);
  }
  hm_status st = init_with_store(comm, e.size, e.rank, tag, secret, e.store_host, e.store_port, cfg);
  if (st != HM_OK) {
    hm_store_server_stop(srv);
    return hm_error_context(st, "%s launch: ", e.source);
  }
  /* The bootstrap is over, but the store stays up (refusing and logging strangers) for as long
   * as the communicator lives, as a launcher's store would. */
  (*comm)->store = srv;
  return HM_OK;
}

/* ---- split ---- */
typedef struct split_rec {
  int32_t color, key, rank;
  int32_t pad;
  hm_rank_info info;
} split_rec;

static int cmp_split(const void *a, const void *b) {
  const split_rec *x = a, *y = b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return x->rank < y->rank ? -1 : x->rank > y->rank;
}

/* allgather of fixed-size records over the parent communicator (comm.c) */
hm_status hm_comm_allgather_internal(hm_comm_t c, const void *mine, void *all, size_t bytes);

hm_status hm_comm_split(hm_comm_t comm, int color, int key, hm_comm_t *newcomm, const hm_comm_config *cfg) {
  if (!comm) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_split: comm is NULL");
  if (!newcomm) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_split: newcomm is NULL");
  *newcomm = NULL;
  if (color < HM_SPLIT_NOCOLOR) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_split: color %d is negative", color);
  hm_comm_t c = NULL;
  hm_status st = HM_OK;
  split_rec me;
  memset(&me, 0, sizeof me);
  me.color = color;
  me.key = key;
  me.rank = comm->rank;
  char shm_name[64] = "";
  unsigned split_no = (unsigned)comm->split_count++;
  if (color != HM_SPLIT_NOCOLOR) {
    c = comm_alloc();
    if (!c) return HM_ERR_NOMEM;
    memcpy(c->secret, comm->secret, HM_SECRET_BYTES);
    /* the child's tag: parent tag mixed with the split number and color (all ranks agree) */
    memcpy(c->tag, comm->tag, HM_WIRE_TAG_BYTES);
    uint32_t mix[2] = {hm_fnv1a(&split_no, sizeof split_no), hm_fnv1a(&color, sizeof color)};
    for (int i = 0; i < 8; i++) c->tag[i] ^= ((unsigned char *)mix)[i];
    c->nranks = 0;
    hm_comm_config inherit = comm->cfg;
    st = resolve_config(c, cfg ? cfg : &inherit);
    c->nranks = comm->nranks; /* provisional, for ring sizing below; fixed after the exchange */
    if (st == HM_OK) st = prepare_local(c, &me.info, shm_name, sizeof shm_name);
  }
  split_rec *all = hm_calloc((size_t)comm->nranks, sizeof *all, "split table");
  if (!all) st = HM_ERR_NOMEM;
  /* every rank takes part in the exchange, even after a local failure, so none is left waiting */
  split_rec send = me;
  if (st != HM_OK) send.color = -2;
  hm_status xs = all ? hm_comm_allgather_internal(comm, &send, all, sizeof send) : HM_ERR_NOMEM;
  if (st == HM_OK) st = xs;
  if (st == HM_OK && c) {
    for (int r = 0; r < comm->nranks; r++)
      if (all[r].color == -2) st = hm_error(HM_ERR_INTERNAL, "split: rank %d failed to prepare", r);
  }
  if (st == HM_OK && c) {
    int n = 0;
    for (int r = 0; r < comm->nranks; r++)
      if (all[r].color == color) all[n++] = all[r];
    qsort(all, (size_t)n, sizeof *all, cmp_split);
    hm_rank_info *info = hm_calloc((size_t)n, sizeof *info, "split bootstrap table");
    if (!info) st = HM_ERR_NOMEM;
    for (int i = 0; i < n && st == HM_OK; i++) {
      info[i] = all[i].info;
      info[i].nranks = n;
      if (all[i].rank == comm->rank) c->rank = i;
    }
    c->nranks = n;
    if (st == HM_OK) st = connect_mesh(c, info, hm_deadline_after_ms((uint64_t)c->cfg.timeout_ms));
    for (int i = 0; i < n && st == HM_OK; i++) /* the links to the same processes: their figures carry over */
      c->peers[i].link_bw = comm->peers[all[i].rank].link_bw;
    free(info);
  }
  if (shm_name[0]) shm_unlink(shm_name);
  free(all);
  if (st != HM_OK) {
    comm_free(c);
    return hm_error_context(st, "rank %d: split(color=%d, key=%d): ", comm->rank, color, key);
  }
  *newcomm = c;
  return HM_OK;
}

/* ---- teardown ---- */
void hm_comm_stop_progress(hm_comm_t c); /* comm.c */

hm_status hm_comm_destroy(hm_comm_t c) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_destroy: comm is NULL");
  hm_comm_stop_progress(c);
  hm_comm_free_requests(c);
  hm_comm_heartbeat_stop(c);
  for (int r = 0; r < c->nranks; r++) {
    if (r == c->rank || !c->peers || c->peers[r].ctrl_fd < 0) continue;
    hm_comm_ctrl_send(c, r, HM_WIRE_CTRL_BYE, 0, NULL, 0, 100);
  }
  comm_free(c);
  return HM_OK;
}

hm_status hm_comm_abort(hm_comm_t c) {
  if (!c) return hm_error(HM_ERR_INVALID_ARG, "hm_comm_abort: comm is NULL");
  atomic_store(&c->aborted, 1);
  pthread_mutex_lock(&c->q_mu);
  pthread_cond_broadcast(&c->q_cv);
  pthread_mutex_unlock(&c->q_mu);
  return HM_OK;
}
