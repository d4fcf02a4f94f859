/* The rendezvous store: a small key-value server (one thread with poll) that ranks use to find
 * each other at bootstrap. Keys live in the namespace of the job tag a client authenticated
 * for; GET waits until the key exists (the client bounds the wait with its deadline).
 * One process-wide server backs hm_get_unique_id(); hm_comm_init_env() runs a dedicated one on
 * rank 0 for the bootstrap only. Not used after bootstrap: splits exchange over the parent. */
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "util/util.h"

#define STORE_MAX_CLIENTS 1024
#define STORE_MAX_VALUE 65536
/* Quota defaults (HETMIX_STORE_MAX_KEYS, HETMIX_STORE_MAX_BYTES): far above a bootstrap's needs
 * (one key of about 200 bytes per rank), far below what would hurt the host. */
#define STORE_DEF_MAX_KEYS 65536
#define STORE_DEF_MAX_BYTES (64u << 20)

typedef struct store_kv {
  char key[2 * HM_WIRE_TAG_BYTES + 2 + HM_WIRE_MAX_KEY];
  unsigned char *val;
  size_t len;
  struct store_kv *next;
} store_kv;

typedef struct store_job {
  unsigned char tag[HM_WIRE_TAG_BYTES];
  unsigned char secret[HM_SECRET_BYTES];
  struct store_job *next;
} store_job;

/* A connection: authenticated step by step inside the poll loop (a silent or slow peer holds
 * up nobody), frames read incrementally without blocking. */
typedef struct store_client {
  int fd;
  uint64_t deadline_ns; /* for finishing authentication */
  char who[64];
  hm_auth_pending auth; /* auth.state == HM_AUTH_DONE: authenticated for job auth.hello.tag */
  hm_frame_rx rx;
  char waiting[2 * HM_WIRE_TAG_BYTES + 2 + HM_WIRE_MAX_KEY]; /* parked GET ("" if none) */
} store_client;

struct hm_store_server {
  int lfd;
  pthread_t thread;
  _Atomic int stop;
  pthread_mutex_t mu; /* guards jobs (added from other threads) */
  sem_t started;      /* posted once the thread holds g_store_work_mu */
  store_job *jobs;
  store_kv *kv;
  store_client clients[STORE_MAX_CLIENTS];
  int nclients;
  int full_logged;          /* the client table was full (logged once until it drains) */
  size_t nkeys, bytes;      /* what the keys hold now (key + value bytes) */
  size_t max_keys, max_bytes;
};

static void full_key(const unsigned char *tag, const char *key, char *out, size_t cap) {
  char hex[2 * HM_WIRE_TAG_BYTES + 1];
  for (int i = 0; i < HM_WIRE_TAG_BYTES; i++) snprintf(hex + 2 * i, 3, "%02x", tag[i]);
  snprintf(out, cap, "%s/%s", hex, key);
}

static const unsigned char *lookup_secret(const hm_wire_hello *hello, void *arg, const char **why) {
  hm_store_server *s = arg;
  if (hello->purpose != HM_CONN_STORE) {
    *why = "not a store connection";
    return NULL;
  }
  const unsigned char *found = NULL;
  pthread_mutex_lock(&s->mu);
  for (store_job *j = s->jobs; j; j = j->next)
    if (memcmp(j->tag, hello->tag, HM_WIRE_TAG_BYTES) == 0) found = j->secret;
  pthread_mutex_unlock(&s->mu);
  *why = "unknown job";
  return found;
}

static store_kv *kv_find(hm_store_server *s, const char *key) {
  for (store_kv *e = s->kv; e; e = e->next)
    if (strcmp(e->key, key) == 0) return e;
  return NULL;
}

static void drop_client(hm_store_server *s, int i) {
  close(s->clients[i].fd);
  hm_net_frame_rx_free(&s->clients[i].rx);
  s->clients[i] = s->clients[--s->nclients];
}

static int reply_value(store_client *c, const store_kv *e) {
  return hm_net_send_frame(c->fd, HM_WIRE_STORE_VALUE, 0, 0, 0, e->val, (uint32_t)e->len,
                           hm_deadline_after_ms(2000)) == HM_OK;
}

static int refuse(store_client *c, const char *why) {
  hm_log(HM_LOG_WARN, "refused connection from %s: %s", c->who, why);
  return 0;
}

/* Answers a SET: an empty STORE_VALUE (stored) or CTRL_ERROR (status in aux, the reason). */
static int reply_set(store_client *c, hm_status st, const char *why) {
  if (st == HM_OK)
    return hm_net_send_frame(c->fd, HM_WIRE_STORE_VALUE, 0, 0, 0, NULL, 0, hm_deadline_after_ms(2000)) == HM_OK;
  hm_log(HM_LOG_WARN, "store: refused a set from %s: %s", c->who, why);
  return hm_net_send_frame(c->fd, HM_WIRE_CTRL_ERROR, 0, 0, (uint32_t)st, why, (uint32_t)strnlen(why, 255),
                           hm_deadline_after_ms(2000)) == HM_OK;
}

/* Would storing vl bytes under fk (replacing old, if any) stay within the quota? */
static int within_quota(const hm_store_server *s, const store_kv *old, const char *fk, size_t vl, char *why,
                        size_t cap) {
  size_t add = strlen(fk) + vl, drop = old ? strlen(old->key) + old->len : 0;
  if (!old && s->nkeys >= s->max_keys) {
    snprintf(why, cap, "rendezvous store quota: %zu keys already (HETMIX_STORE_MAX_KEYS)", s->nkeys);
    return 0;
  }
  if (s->bytes - drop + add > s->max_bytes) {
    snprintf(why, cap, "rendezvous store quota: %zu bytes held, this value of %zu bytes would pass %zu "
                       "(HETMIX_STORE_MAX_BYTES)", s->bytes, vl, s->max_bytes);
    return 0;
  }
  return 1;
}

static int serve_set(hm_store_server *s, store_client *c, const unsigned char *pl, uint32_t len) {
  char key[HM_WIRE_MAX_KEY + 1], fk[sizeof c->waiting], why[200];
  const unsigned char *val;
  size_t vl;
  if (hm_wire_decode_store_set(pl, len, key, &val, &vl) != HM_OK) return reply_set(c, HM_ERR_PROTOCOL, hm_last_error());
  if (vl > STORE_MAX_VALUE) {
    snprintf(why, sizeof why, "value of %zu bytes is over the %d-byte limit", vl, STORE_MAX_VALUE);
    return reply_set(c, HM_ERR_INVALID_ARG, why);
  }
  full_key(c->auth.hello.tag, key, fk, sizeof fk);
  store_kv *e = kv_find(s, fk);
  if (!within_quota(s, e, fk, vl, why, sizeof why)) return reply_set(c, HM_ERR_NO_FIT, why);
  unsigned char *nv = malloc(vl ? vl : 1);
  if (!nv) return reply_set(c, HM_ERR_NOMEM, "rendezvous store: out of memory");
  if (!e) {
    e = calloc(1, sizeof *e);
    if (!e) {
      free(nv);
      return reply_set(c, HM_ERR_NOMEM, "rendezvous store: out of memory");
    }
    snprintf(e->key, sizeof e->key, "%s", fk);
    e->next = s->kv;
    s->kv = e;
    s->nkeys++;
    s->bytes += strlen(fk);
  }
  memcpy(nv, val, vl);
  free(e->val);
  s->bytes = s->bytes - e->len + vl;
  e->val = nv;
  e->len = vl;
  for (int i = 0; i < s->nclients; i++) {
    store_client *w = &s->clients[i];
    if (w->waiting[0] && strcmp(w->waiting, fk) == 0) {
      w->waiting[0] = '\0';
      reply_value(w, e); /* a failed reply surfaces as EOF on the next poll */
    }
  }
  return reply_set(c, HM_OK, NULL);
}

/* One complete frame from client c; returns 0 to drop it. */
static int serve_frame(hm_store_server *s, store_client *c) {
  const hm_wire_hdr *h = &c->rx.h;
  const unsigned char *pl = c->rx.payload;
  if (c->auth.state != HM_AUTH_DONE) {
    if (hm_auth_accept_step(c->fd, &c->auth, h, pl, lookup_secret, s) == HM_OK) return 1;
    return refuse(c, hm_last_error());
  }
  if (h->type == HM_WIRE_STORE_SET) return serve_set(s, c, pl, h->len);
  if (h->type == HM_WIRE_STORE_GET) {
    char key[HM_WIRE_MAX_KEY + 1], fk[sizeof c->waiting];
    if (hm_wire_decode_store_key(pl, h->len, key) != HM_OK) {
      hm_log(HM_LOG_WARN, "store: bad get from %s: %s", c->who, hm_last_error());
      return 0;
    }
    full_key(c->auth.hello.tag, key, fk, sizeof fk);
    store_kv *e = kv_find(s, fk);
    if (e) return reply_value(c, e);
    snprintf(c->waiting, sizeof c->waiting, "%s", fk);
    return 1;
  }
  hm_log(HM_LOG_WARN, "store: unexpected frame type %u from %s", (unsigned)h->type, c->who);
  return 0;
}

/* Reads what is there; serves every complete frame. Returns 0 to drop the client. */
static int client_readable(hm_store_server *s, store_client *c) {
  const int authed = c->auth.state == HM_AUTH_DONE;
  const size_t limit = authed ? STORE_MAX_VALUE + HM_WIRE_MAX_KEY + 2 : HM_WIRE_HELLO_BYTES;
  for (;;) {
    int r = hm_net_frame_rx_step(c->fd, &c->rx, limit);
    if (r == 0) return 1;
    if (r < 0) {
      if (!authed) return refuse(c, r == -1 ? "closed during authentication" : hm_last_error());
      if (r == -2) hm_log(HM_LOG_WARN, "store: %s: %s", c->who, hm_last_error());
      return 0;
    }
    if (!serve_frame(s, c)) return 0;
    hm_net_frame_rx_reset(&c->rx);
    if (c->auth.state == HM_AUTH_DONE && !authed) return 1; /* next frame with the larger limit */
  }
}

/* Store threads hold this while they work (allocate, hash, reply) and release it while they wait
 * in poll(). fork() takes it first (pthread_atfork), so a child is never born while a store
 * thread is inside an allocator lock it would inherit locked (ASan's allocator, for one, is not
 * fork-safe): a parent can make an id, keep serving the store and fork its ranks. */
static pthread_mutex_t g_store_work_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_store_fork_once = PTHREAD_ONCE_INIT;
static void store_fork_prepare(void) { pthread_mutex_lock(&g_store_work_mu); }
static void store_fork_parent(void) { pthread_mutex_unlock(&g_store_work_mu); }
static void store_atfork_child(void);
static void store_fork_child(void) {
  pthread_mutex_init(&g_store_work_mu, NULL);
  store_atfork_child();
}
static void store_fork_setup(void) {
  pthread_atfork(store_fork_prepare, store_fork_parent, store_fork_child);
}

static void *store_main(void *arg) {
  hm_store_server *s = arg;
  pthread_mutex_lock(&g_store_work_mu);
  sem_post(&s->started); /* the thread's start-up (allocating) is over: see hm_store_server_start */
  struct pollfd *pf = malloc(sizeof(struct pollfd) * (STORE_MAX_CLIENTS + 1));
  if (!pf) {
    pthread_mutex_unlock(&g_store_work_mu);
    return NULL;
  }
  while (!atomic_load(&s->stop)) {
    int n = 0;
    /* Accept only once a job is registered: the server starts listening before its first
     * add_job, and a client connecting in between would be refused as unknown. Until then the
     * kernel's backlog holds it and its own authentication deadline keeps running. */
    pthread_mutex_lock(&s->mu);
    const int have_jobs = s->jobs != NULL;
    pthread_mutex_unlock(&s->mu);
    /* A full client table stops accepting (polling the listener then would spin): newcomers
     * wait in the kernel's backlog until a handshake times out or a client leaves. */
    const int full = s->nclients >= STORE_MAX_CLIENTS;
    if (full && !s->full_logged)
      hm_log(HM_LOG_WARN, "store: %d connections open, the most it serves; new ones wait", s->nclients);
    s->full_logged = full;
    pf[n++] = (struct pollfd){s->lfd, have_jobs && !full ? POLLIN : 0, 0};
    for (int i = 0; i < s->nclients; i++) pf[n++] = (struct pollfd){s->clients[i].fd, POLLIN, 0};
    pthread_mutex_unlock(&g_store_work_mu);
    int rc = poll(pf, (nfds_t)n, 50);
    pthread_mutex_lock(&g_store_work_mu);
    uint64_t now = hm_now_ns();
    /* clients first (indices shift when one is dropped, so walk backwards) */
    for (int i = s->nclients - 1; i >= 0; i--) {
      store_client *c = &s->clients[i];
      int ok = 1;
      if (rc > 0 && (pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) ok = client_readable(s, c);
      if (ok && c->auth.state != HM_AUTH_DONE && now > c->deadline_ns) ok = refuse(c, "authentication timed out");
      if (!ok) drop_client(s, i);
    }
    if (rc > 0 && (pf[0].revents & POLLIN)) {
      for (int k = 0; k < 64 && s->nclients < STORE_MAX_CLIENTS; k++) {
        int fd;
        char who[64];
        if (hm_net_accept(s->lfd, 1 /* already passed: no wait */, &fd, who, sizeof who) != HM_OK) break;
        store_client *c = &s->clients[s->nclients++];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->deadline_ns = hm_deadline_after_ms(5000);
        snprintf(c->who, sizeof c->who, "%s", who);
      }
    }
  }
  free(pf);
  OPENSSL_thread_stop(); /* per-thread crypto state of the HMACs this thread computed */
  pthread_mutex_unlock(&g_store_work_mu);
  return NULL;
}

/* A whole decimal number in [lo, hi] (no sign, suffix or spaces); an error names the text. */
static hm_status parse_count(const char *what, const char *text, unsigned long long lo, unsigned long long hi,
                             unsigned long long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = isdigit((unsigned char)text[0]) ? strtoull(text, &end, 10) : 0;
  if (!end || *end || errno == ERANGE || v < lo || v > hi)
    return hm_error(HM_ERR_INVALID_ARG, "%s '%s' is not a whole number in %llu..%llu", what, text, lo, hi);
  *out = v;
  return HM_OK;
}

/* An environment quota: def when unset, else a number in [1, hi]. */
static hm_status env_quota(const char *name, size_t def, unsigned long long hi, size_t *out) {
  const char *v = getenv(name);
  unsigned long long n = def;
  if (v && *v) HM_TRY(parse_count(name, v, 1, hi, &n));
  *out = (size_t)n;
  return HM_OK;
}

hm_status hm_store_server_start(const char *addr, int port, const unsigned char *tag,
                                const unsigned char *secret, hm_store_server **out, int *bound_port) {
  size_t max_keys, max_bytes;
  HM_TRY(env_quota("HETMIX_STORE_MAX_KEYS", STORE_DEF_MAX_KEYS, 1ull << 30, &max_keys));
  HM_TRY(env_quota("HETMIX_STORE_MAX_BYTES", STORE_DEF_MAX_BYTES, 1ull << 40, &max_bytes));
  /* load OpenSSL's configuration here, not lazily in the server thread (whose per-thread state
   * would then outlive it) */
  OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
  pthread_once(&g_store_fork_once, store_fork_setup);
  hm_store_server *s = hm_calloc(1, sizeof *s, "rendezvous store");
  if (!s) return HM_ERR_NOMEM;
  s->max_keys = max_keys;
  s->max_bytes = max_bytes;
  hm_status st = hm_net_listen(addr, port, &s->lfd, bound_port);
  if (st != HM_OK) {
    free(s);
    return hm_error_context(st, "rendezvous store: ");
  }
  pthread_mutex_init(&s->mu, NULL);
  /* the first job is known before the thread accepts anyone (no refusal race at startup) */
  if (tag && (st = hm_store_server_add_job(s, tag, secret)) != HM_OK) {
    close(s->lfd);
    free(s);
    return st;
  }
  /* A new thread allocates before it reaches store_main (libc's and the sanitizers' thread
   * set-up), outside g_store_work_mu: return only once it holds the mutex, so a fork right after
   * (a parent forking its ranks after hm_get_unique_id) cannot copy an allocator lock it holds. */
  int sem_ok = sem_init(&s->started, 0, 0) == 0;
  if (!sem_ok || pthread_create(&s->thread, NULL, store_main, s) != 0) {
    if (sem_ok) sem_destroy(&s->started);
    close(s->lfd);
    free(s);
    return hm_error(HM_ERR_INTERNAL, "rendezvous store: cannot start its thread");
  }
  while (sem_wait(&s->started) != 0 && errno == EINTR) {
  }
  sem_destroy(&s->started);
  *out = s;
  return HM_OK;
}

hm_status hm_store_server_add_job(hm_store_server *s, const unsigned char tag[HM_WIRE_TAG_BYTES],
                                  const unsigned char secret[HM_SECRET_BYTES]) {
  store_job *j = hm_calloc(1, sizeof *j, "store job");
  if (!j) return HM_ERR_NOMEM;
  memcpy(j->tag, tag, HM_WIRE_TAG_BYTES);
  memcpy(j->secret, secret, HM_SECRET_BYTES);
  pthread_mutex_lock(&s->mu);
  j->next = s->jobs;
  s->jobs = j;
  pthread_mutex_unlock(&s->mu);
  return HM_OK;
}

void hm_store_server_stop(hm_store_server *s) {
  if (!s) return;
  atomic_store(&s->stop, 1);
  pthread_join(s->thread, NULL);
  for (int i = 0; i < s->nclients; i++) close(s->clients[i].fd), hm_net_frame_rx_free(&s->clients[i].rx);
  close(s->lfd);
  while (s->kv) {
    store_kv *e = s->kv;
    s->kv = e->next;
    free(e->val);
    free(e);
  }
  while (s->jobs) {
    store_job *j = s->jobs;
    s->jobs = j->next;
    free(j);
  }
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---- the process-wide server ---- */
static pthread_mutex_t g_store_mu = PTHREAD_MUTEX_INITIALIZER;
static hm_store_server *g_store;
static int g_store_port;
static char g_store_host[64];
static int g_atfork_set;

/* A forked child has the parent's memory but not its store thread: forget the server there
 * (the child still reaches the parent's store over its socket). */
static void store_atfork_child(void) {
  g_store = NULL;
  pthread_mutex_init(&g_store_mu, NULL);
}

static void store_atexit(void) {
  pthread_mutex_lock(&g_store_mu);
  hm_store_server *s = g_store;
  g_store = NULL;
  pthread_mutex_unlock(&g_store_mu);
  hm_store_server_stop(s);
}

/* HETMIX_STORE_ADDR as host[:port] (port 0 or none: ephemeral), parsed strictly. */
static hm_status global_addr(char *host, size_t cap, int *port) {
  const char *addr = getenv("HETMIX_STORE_ADDR");
  if (!addr || !*addr) return HM_OK;
  const char *colon = strrchr(addr, ':');
  size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
  if (hl == 0 || hl >= cap)
    return hm_error(HM_ERR_INVALID_ARG, "HETMIX_STORE_ADDR '%s': the host must have 1..%zu characters", addr, cap - 1);
  memcpy(host, addr, hl);
  host[hl] = '\0';
  unsigned long long p = 0;
  if (colon) HM_TRY(parse_count("HETMIX_STORE_ADDR port", colon + 1, 0, 65535, &p));
  *port = (int)p;
  return HM_OK;
}

hm_status hm_store_global(hm_store_server **out, char *host, size_t host_cap, int *port) {
  pthread_mutex_lock(&g_store_mu);
  if (!g_atfork_set) {
    /* OpenSSL registers its own exit cleanup on first use: do that first, so it runs after ours
     * (our handler joins the store thread, whose HMACs need the library) */
    OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
    atexit(store_atexit);
    g_atfork_set = 1;
  }
  hm_status st = HM_OK;
  if (!g_store) {
    char h[64] = "127.0.0.1";
    int p = 0;
    st = global_addr(h, sizeof h, &p);
    if (st == HM_OK) st = hm_store_server_start(h, p, NULL, NULL, &g_store, &g_store_port);
    if (st == HM_OK) snprintf(g_store_host, sizeof g_store_host, "%s", h);
  }
  if (st == HM_OK) {
    *out = g_store;
    hm_strcpy(host, host_cap, g_store_host);
    *port = g_store_port;
  }
  pthread_mutex_unlock(&g_store_mu);
  return st;
}

/* ---- client ---- */
hm_status hm_store_connect(hm_store_client *c, const char *host, int port,
                           const unsigned char tag[HM_WIRE_TAG_BYTES],
                           const unsigned char secret[HM_SECRET_BYTES], int rank,
                           uint64_t deadline_ns) {
  c->fd = -1;
  c->deadline_ns = deadline_ns;
  hm_status st = hm_net_connect(host, port, deadline_ns, &c->fd);
  if (st != HM_OK) return hm_error_context(st, "rendezvous store %s:%d: ", host, port);
  st = hm_auth_connect(c->fd, tag, secret, rank, HM_CONN_STORE, deadline_ns);
  if (st != HM_OK) {
    hm_store_close(c);
    return hm_error_context(st, "rendezvous store %s:%d: ", host, port);
  }
  return HM_OK;
}

hm_status hm_store_set(hm_store_client *c, const char *key, const void *val, size_t len) {
  if (len > STORE_MAX_VALUE) return hm_error(HM_ERR_INVALID_ARG, "store value of %zu bytes too large", len);
  size_t cap = 2 + strlen(key) + len;
  unsigned char *buf = hm_malloc(cap, "store set");
  if (!buf) return HM_ERR_NOMEM;
  size_t n = hm_wire_encode_store_set(buf, cap, key, val, len);
  hm_status st = n ? hm_net_send_frame(c->fd, HM_WIRE_STORE_SET, 0, 0, 0, buf, (uint32_t)n, c->deadline_ns)
                   : hm_error(HM_ERR_INVALID_ARG, "store key '%s' too long", key);
  free(buf);
  if (st != HM_OK) return st;
  /* the answer: an empty value (stored) or an error with the store's reason (e.g. a quota) */
  hm_wire_hdr h;
  char why[256];
  st = hm_net_recv_frame(c->fd, &h, why, sizeof why - 1, c->deadline_ns);
  if (st != HM_OK) return hm_error_context(st, "rendezvous: set '%s': ", key);
  if (h.type == HM_WIRE_CTRL_ERROR) {
    why[h.len] = '\0';
    hm_status told = h.aux > HM_OK && h.aux < HM_STATUS_COUNT ? (hm_status)h.aux : HM_ERR_PROTOCOL;
    return hm_error(told, "rendezvous: the store refused '%s': %s", key, why);
  }
  if (h.type != HM_WIRE_STORE_VALUE || h.len != 0)
    return hm_error(HM_ERR_PROTOCOL, "rendezvous: set '%s': unexpected reply type %u", key, (unsigned)h.type);
  return HM_OK;
}

hm_status hm_store_get(hm_store_client *c, const char *key, void *val, size_t *len) {
  HM_TRY(hm_net_send_frame(c->fd, HM_WIRE_STORE_GET, 0, 0, 0, key, (uint32_t)strlen(key), c->deadline_ns));
  hm_wire_hdr h;
  hm_status st = hm_net_recv_frame(c->fd, &h, val, *len, c->deadline_ns);
  if (st == HM_ERR_TIMEOUT)
    return hm_error(HM_ERR_TIMEOUT, "rendezvous: timed out waiting for '%s' (a rank did not start?)", key);
  if (st != HM_OK) return hm_error_context(st, "rendezvous: get '%s': ", key);
  if (h.type != HM_WIRE_STORE_VALUE)
    return hm_error(HM_ERR_PROTOCOL, "rendezvous: unexpected reply type %u", (unsigned)h.type);
  *len = h.len;
  return HM_OK;
}

void hm_store_close(hm_store_client *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}
