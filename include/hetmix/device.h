/* hetmix device backends: one function table per chip type, found by name in a registry.
 *
 * A device is an opaque handle (name, kind, dtype, options, accounting) behind which a backend
 * fills a table of function pointers (src/device/device_impl.h, private): memory (alloc/free,
 * copies host<->device<->device, zero, pinned host staging buffers), synchronize, memory info,
 * and the kernels of a GPT-2 training step with llm.c's argument order (outputs, saved values,
 * inputs, weights, sizes). Callers use the hm_device_* / hm_dev_* functions below, which check
 * arguments, apply the `slow` emulation factor and keep statistics. Backends: "ref" (portable
 * C, plain loops, f32 and f64: the oracle), "cpu" (OpenBLAS + OpenMP, f32), "opencl" (OpenCL C
 * kernels + CLBlast, f32; when built with OpenCL). See docs/device.md.
 *
 * Not here: the model (src/model), parallelism, streams beyond one in-order queue per device.
 *
 * Conventions every kernel follows:
 *  - Tensors are device addresses (void *) holding elements of the device dtype (f32 or f64);
 *    token ids and targets are int32_t. Shapes are in comments: `inp (N,C)` with N = B*T rows.
 *    A device address is opaque: host code may offset it inside its allocation
 *    (hm_device_offset) but never dereferences it; data moves only through the copy calls.
 *    On host backends (kind HM_DEVICE_HOST) it happens to be a host pointer.
 *  - Backward kernels ACCUMULATE (+=) into every gradient they write, activations and
 *    parameters alike (as llm.c): the caller zeroes gradient buffers before a step. This is what
 *    makes micro-batch gradient accumulation and residual branches free.
 *  - Kernels are in-order on the device's single queue; host backends finish before returning.
 *    hm_device_synchronize() waits for all queued work (a no-op on host backends).
 *  - Outputs do not overlap inputs, except where a kernel says so (residual, cross-entropy).
 *  - A device is used by one thread at a time.
 *  - Results are deterministic: the same inputs, shapes and options give bitwise the same
 *    outputs on every run (reductions use a fixed order, not atomics).
 *  - Every call returns hm_status; on failure hm_last_error() names the op and what is wrong. */
#ifndef HETMIX_DEVICE_H
#define HETMIX_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "hetmix/dtype.h"
#include "hetmix/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hm_device hm_device;

typedef enum hm_device_kind {
  HM_DEVICE_HOST = 0, /* buffers are ordinary host memory (cpu, ref) */
  HM_DEVICE_CUDA,     /* buffers live in GPU memory; copy to reach them from the host */
  HM_DEVICE_OPENCL,   /* buffers are OpenCL buffers; addresses are opaque tokens */
} hm_device_kind;

/* Options parsed from "name:key=value,key=value" (docs/device.md lists them). */
typedef struct hm_device_options {
  int threads;      /* threads=N: OpenMP/OpenBLAS threads (cpu; 0 = all cores). ref: 1 only;
                       opencl: cap on pocl's worker threads (0 = the driver's default) */
  double slow;      /* slow=F >= 1: emulate a chip F times slower (see hm_device_slow) */
  hm_dtype dtype;   /* dtype=f32|f64: element type of every tensor (f64 on ref only) */
  size_t mem_limit; /* mem=64M: cap on bytes allocated (0 = physical memory); emulates a smaller chip */
  int index;        /* device=N: which device of this backend (0 on host backends) */
  int platform;     /* platform=P: which OpenCL platform (opencl only; 0 elsewhere) */
} hm_device_options;

typedef struct hm_device_stats {
  uint64_t kernel_calls;  /* kernels run through the hm_dev_* wrappers */
  uint64_t kernel_ns;     /* wall time inside kernels, before the slow-down */
  uint64_t slow_sleep_ns; /* time slept to emulate the slow factor */
  size_t bytes_allocated; /* live device bytes allocated through hm_device_alloc */
  size_t bytes_peak;      /* high-water mark of bytes_allocated */
} hm_device_stats;

/* A backend (its function table and open()): defined in src/device/device_impl.h. */
typedef struct hm_device_backend hm_device_backend;

/* ---- properties ------------------------------------------------------------------------- */

const char *hm_device_name(const hm_device *dev);   /* backend name: "cpu", "ref", "opencl" */
const char *hm_device_spec(const hm_device *dev);   /* the spec it was opened with */
const char *hm_device_backend_name(const hm_device_backend *b);
const char *hm_device_backend_description(const hm_device_backend *b);
hm_device_kind hm_device_get_kind(const hm_device *dev);
/* 1 when device addresses are host pointers (HM_DEVICE_HOST): only then may a caller hand a
 * device buffer to host code (hmcomm) in place; otherwise it stages through host memory. */
int hm_device_is_host(const hm_device *dev);
hm_dtype hm_device_dtype(const hm_device *dev);      /* HM_FLOAT32 or HM_FLOAT64 */
size_t hm_device_elem_size(const hm_device *dev);    /* bytes per element of the dtype */
int hm_device_threads(const hm_device *dev);         /* effective thread count */
/* >= 1. After each kernel the wrapper sleeps (slow-1) x the kernel's measured time: EMULATION
 * of a slower chip so heterogeneous runs can be tested on one machine. Never a real speed. */
double hm_device_slow(const hm_device *dev);
/* Sleep owed by the slow emulation but not yet taken (short kernels are batched). */
uint64_t hm_device_slow_debt_ns(const hm_device *dev);
void hm_device_get_stats(const hm_device *dev, hm_device_stats *out);
/* Sets the high-water mark of allocated bytes to max(peak, bytes allocated now) (a profiler
 * measures one structure's footprint from a reset, then restores the earlier mark). */
void hm_device_set_peak(hm_device *dev, size_t peak);

/* ---- registry ------------------------------------------------------------------------- */

/* Adds a backend (built-in ones are registered automatically). HM_ERR_INVALID_ARG if the name
 * is taken. The struct must outlive every device opened from it. */
hm_status hm_device_register(const hm_device_backend *backend);
int hm_device_backend_count(void);
const hm_device_backend *hm_device_backend_at(int i);
/* Comma-separated names of registered backends, e.g. "cpu, ref" (static storage). */
const char *hm_device_backend_names(void);

/* Parses "name[:key=value,...]" into name and options (defaults filled in). Unknown keys or bad
 * values give HM_ERR_INVALID_ARG naming them. */
hm_status hm_device_parse_spec(const char *spec, char *name, size_t name_cap,
                               hm_device_options *opt);

/* Opens a device: "cpu", "ref", "ref:dtype=f64", "cpu:threads=2,slow=2.0,mem=512M",
 * "opencl:platform=0,device=0,threads=2".
 * Unknown backend: HM_ERR_NOT_FOUND listing the known ones. */
hm_status hm_device_open(const char *spec, hm_device **out);
void hm_device_close(hm_device *dev); /* NULL is fine */

/* ---- memory ---------------------------------------------------------------------------- */

/* Allocates bytes (64-byte aligned, contents undefined). what names the buffer in errors.
 * HM_ERR_NO_FIT when it would exceed the mem= cap or the device's free memory. */
hm_status hm_device_alloc(hm_device *dev, void **ptr, size_t bytes, const char *what);
void hm_device_free(hm_device *dev, void *ptr); /* NULL is fine */
hm_status hm_device_copy_h2d(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_device_copy_d2h(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_device_copy_d2d(hm_device *dev, void *dst, const void *src, size_t bytes);
hm_status hm_device_zero(hm_device *dev, void *ptr, size_t bytes);
hm_status hm_device_copy_from_f32(hm_device *dev, void *dst, const float *src, size_t n);
hm_status hm_device_copy_to_f32(hm_device *dev, float *dst, const void *src, size_t n);
hm_status hm_device_synchronize(hm_device *dev);
/* Asynchronous copies between HOST memory from hm_device_alloc_host and the device, queued in
 * order on the device's queue behind earlier work; the host memory must stay valid and
 * untouched until the copy completes. With event non-NULL, *event receives a handle to pass to
 * hm_device_event_wait (NULL when the copy already completed: host backends copy at once).
 * event NULL: no handle (a later event, or hm_device_synchronize, covers it: the queue is in
 * order). */
typedef struct hm_device_event hm_device_event;
hm_status hm_device_copy_h2d_async(hm_device *dev, void *dst, const void *src, size_t bytes,
                                   hm_device_event **event);
hm_status hm_device_copy_d2h_async(hm_device *dev, void *dst, const void *src, size_t bytes,
                                   hm_device_event **event);
/* Waits up to timeout_ms for the copy behind event, then releases it (also on an error or a
 * timeout: HM_ERR_TIMEOUT; the copy may then still be in flight). event NULL: HM_OK at once. */
hm_status hm_device_event_wait(hm_device *dev, hm_device_event *event, int timeout_ms);
/* total and free: the smaller of physical memory and the mem= cap, free minus what is allocated */
hm_status hm_device_mem_info(hm_device *dev, size_t *total, size_t *free_bytes);
/* Element address arithmetic in the device dtype: &((T *)base)[n] (no dereference; base must
 * be a device address and the result stays inside base's allocation). */
void *hm_device_offset(const hm_device *dev, void *base, size_t n);
/* Pinned (page-locked / host-visible) host memory for staging transfers to and from the
 * device: faster copies on a GPU backend, 64-byte-aligned host memory on host backends. The
 * result is a HOST pointer (not a device address). Free with hm_device_free_host on the same
 * device (hm_device_close frees any left). Not counted against the mem= cap (host memory). */
hm_status hm_device_alloc_host(hm_device *dev, void **ptr, size_t bytes, const char *what);
void hm_device_free_host(hm_device *dev, void *ptr); /* NULL is fine */
/* 1 when the device's memory is the host's memory: host backends, and an OpenCL device that
 * reports CL_DEVICE_HOST_UNIFIED_MEMORY (pocl on the CPU, integrated GPUs). There
 * hm_device_map gives the host the bytes themselves, without a copy; elsewhere a map may copy
 * (a discrete GPU) and staging through pinned buffers is the fast path. */
int hm_device_host_unified(const hm_device *dev);
/* Maps the device range [addr, addr + bytes) into host memory: *host receives a HOST pointer
 * to its bytes. The map waits for all work queued on the device before it (a kernel producing
 * the range has finished). HM_MAP_READ: the host reads; HM_MAP_WRITE: the host writes (and
 * may read). Until hm_device_unmap(dev, addr, *host) the host owns the range: queue no kernel
 * or copy touching it. Unmapping makes host writes visible to work queued after it. A range
 * must lie inside one allocation; a range may not be mapped twice at once. Host backends:
 * *host = addr and both calls cost nothing. */
#define HM_MAP_READ 1
#define HM_MAP_WRITE 2
hm_status hm_device_map(hm_device *dev, void *addr, size_t bytes, int flags, void **host);
hm_status hm_device_unmap(hm_device *dev, void *addr, void *host);

/* ---- kernels ----------------------------------------------------------------------------- */

/* out (B,T,C) = wte[inp[b,t]] + wpe[t];  inp (B,T) int32 in [0,V), wte (V,C), wpe (>=T,C) */
hm_status hm_dev_encoder_forward(hm_device *dev, void *out, const int32_t *inp, const void *wte,
                                 const void *wpe, int B, int T, int C);
/* dwte (V,C) += scatter of dout by token; dwpe (>=T,C) += sum over b; dout (B,T,C) */
hm_status hm_dev_encoder_backward(hm_device *dev, void *dwte, void *dwpe, const void *dout,
                                  const int32_t *inp, int B, int T, int C);

/* out (N,C) = (inp - mean) * rstd * weight + bias, eps 1e-5; saves mean (N), rstd (N) */
hm_status hm_dev_layernorm_forward(hm_device *dev, void *out, void *mean, void *rstd,
                                   const void *inp, const void *weight, const void *bias, int N,
                                   int C);
/* dinp (N,C), dweight (C), dbias (C) += ... from dout (N,C), inp, weight, mean, rstd */
hm_status hm_dev_layernorm_backward(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                    const void *dout, const void *inp, const void *weight,
                                    const void *mean, const void *rstd, int N, int C);

/* out (N,OC) = inp (N,C) x weight (OC,C)^T + bias (OC); bias may be NULL */
hm_status hm_dev_matmul_forward(hm_device *dev, void *out, const void *inp, const void *weight,
                                const void *bias, int N, int C, int OC);
/* dinp (N,C) += dout (N,OC) x weight (OC,C); dweight (OC,C) += dout^T x inp;
 * dbias (OC) += column sums of dout. dinp and dbias may be NULL (not wanted). */
hm_status hm_dev_matmul_backward(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                 const void *dout, const void *inp, const void *weight, int N,
                                 int C, int OC);

/* Elements of the `saved` buffer attention_forward fills for attention_backward. Its contents
 * are backend specific (ref: the softmax probabilities (B,NH,T,T); cpu: each score row's
 * log-sum-exp (B,NH,T), recomputing the rest): never read it, never share it across backends. */
size_t hm_dev_attention_saved_elems(hm_device *dev, int B, int T, int C, int NH);
/* Causal multi-head self-attention. qkv (B,T,3C) holds q | k | v, each split into NH heads of
 * hs = C/NH; out (B,T,C) = softmax(q k^T / sqrt(hs), causal) v, heads concatenated. */
hm_status hm_dev_attention_forward(hm_device *dev, void *out, void *saved, const void *qkv,
                                   int B, int T, int C, int NH);
/* dqkv (B,T,3C) += ... from dout (B,T,C), qkv and saved */
hm_status hm_dev_attention_backward(hm_device *dev, void *dqkv, const void *dout,
                                    const void *qkv, const void *saved, int B, int T, int C,
                                    int NH);

/* ---- bf16 mixed precision (docs/device.md, "bf16 mixed precision") ----
 * PyTorch autocast's bf16 semantics: GEMM inputs are rounded to bfloat16 (to nearest even),
 * products are summed in f32 (ref: exactly, in f64), outputs are rounded to bf16. A "bf16"
 * buffer holds n uint16 bfloat16 values (2n bytes); every other buffer holds the device dtype
 * (f32 only: bf16 mixed precision needs dtype=f32). Backends without these kernels return
 * HM_ERR_UNSUPPORTED (hm_device_supports_bf16 says so beforehand). */
int hm_device_supports_bf16(const hm_device *dev);
/* address arithmetic in bytes (a bf16 buffer's element i is at 2i bytes) */
void *hm_device_offset_bytes(const hm_device *dev, void *base, size_t bytes);
/* dst (n, bf16) = round_bf16(src (n)) */
hm_status hm_dev_to_bf16(hm_device *dev, void *dst, const void *src, size_t n);
/* out (N,OC) = round_bf16(inp (N,C, bf16) x weight (OC,C, bf16)^T + round_bf16(bias)), summed in
 * f32, stored as the device dtype; bias may be NULL */
hm_status hm_dev_matmul_forward_bf16(hm_device *dev, void *out, const void *inp, const void *weight,
                                     const void *bias, int N, int C, int OC);
/* With d = round_bf16(dout (N,OC)): dinp (N,C) += round_bf16(d x weight); dweight (OC,C) +=
 * round_bf16(d^T x inp); dbias (OC) += round_bf16(column sums of d). inp and weight bf16; dinp
 * and dbias may be NULL. */
hm_status hm_dev_matmul_backward_bf16(hm_device *dev, void *dinp, void *dweight, void *dbias,
                                      const void *dout, const void *inp, const void *weight, int N,
                                      int C, int OC);
/* Elements (device dtype) of the saved buffer of attention_forward_bf16: each score row's
 * log-sum-exp (B,NH,T), the same on every backend. */
size_t hm_dev_attention_bf16_saved_elems(int B, int T, int C, int NH);
/* Causal attention with autocast's rounding points: q, k, v rounded to bf16; scores
 * s = round_bf16(q.k / sqrt(hs)); p = softmax(s) in f32; out = round_bf16(round_bf16(p) v).
 * qkv and out in the device dtype (values bf16 on the way out). */
hm_status hm_dev_attention_forward_bf16(hm_device *dev, void *out, void *saved, const void *qkv,
                                        int B, int T, int C, int NH);
/* dqkv (B,T,3C) += the gradient with the same rounding points: d = round_bf16(dout);
 * dp = round_bf16(d.v); ds = round_bf16(p (dp - sum p dp)) / sqrt(hs) (softmax backward in
 * f32); dq, dk, dv = round_bf16 of their sums (ds k, ds^T q, round_bf16(p)^T d). */
hm_status hm_dev_attention_backward_bf16(hm_device *dev, void *dqkv, const void *dout,
                                         const void *qkv, const void *saved, int B, int T, int C,
                                         int NH);

/* out (n) = gelu_tanh(inp) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
hm_status hm_dev_gelu_forward(hm_device *dev, void *out, const void *inp, size_t n);
/* dinp (n) += gelu'(inp) * dout */
hm_status hm_dev_gelu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout,
                               size_t n);

/* Llama's kernels. RMSNorm: out (N,C) = inp * rstd * weight, saves rstd (N) = 1/sqrt(mean(inp^2)
 * + 1e-5). */
hm_status hm_dev_rmsnorm_forward(hm_device *dev, void *out, void *rstd, const void *inp, const void *weight, int N,
                                 int C);
/* dinp (N,C) += ..., dweight (C) += sum over rows of dout * inp * rstd; from dout, inp, weight, rstd */
hm_status hm_dev_rmsnorm_backward(hm_device *dev, void *dinp, void *dweight, const void *dout, const void *inp,
                                  const void *weight, const void *rstd, int N, int C);
/* Rotary position embedding in place: x holds B*T rows of `stride` elements; the first H*hd of each
 * row are H heads of hd (even) elements. Row b*T+t, head h: the pair (i, i + hd/2), i < hd/2, is
 * rotated by the angle t * 10000^(-2i/hd) (the rotate-half convention). */
hm_status hm_dev_rope_forward(hm_device *dev, void *x, int B, int T, int H, int hd, int stride);
/* Gradient of rope_forward in place: the inverse (transposed) rotation of dx. */
hm_status hm_dev_rope_backward(hm_device *dev, void *dx, int B, int T, int H, int hd, int stride);
/* SwiGLU: out (N,F) = silu(inp[:, :F]) * inp[:, F:], inp (N,2F) = gate | up; silu(g) = g sigmoid(g) */
hm_status hm_dev_swiglu_forward(hm_device *dev, void *out, const void *inp, int N, int F);
/* dinp (N,2F) = d gate | d up from inp and dout (N,F); written, not accumulated */
hm_status hm_dev_swiglu_backward(hm_device *dev, void *dinp, const void *inp, const void *dout, int N, int F);
/* Grouped-query attention's key/value repeat: inp (N, C + 2*KVH*hd) = q (C) | k | v (KVH heads of
 * hd = C/NH each); out (N,3C) = q | k | v with NH heads, head h taken from KV head h/(NH/KVH):
 * attention_forward's layout. */
hm_status hm_dev_repeat_kv_forward(hm_device *dev, void *out, const void *inp, int N, int C, int NH, int KVH);
/* dinp (N, C + 2*KVH*hd) from dout (N,3C): dq copied, each KV head's gradient the sum of its group's
 * heads in head order; written, not accumulated */
hm_status hm_dev_repeat_kv_backward(hm_device *dev, void *dinp, const void *dout, int N, int C, int NH, int KVH);

/* out (n) = inp1 + inp2 (out may alias an input) */
hm_status hm_dev_residual_forward(hm_device *dev, void *out, const void *inp1, const void *inp2,
                                  size_t n);
/* dinp1 += dout; dinp2 += dout. Either may be NULL, so this is also y += x. */
hm_status hm_dev_residual_backward(hm_device *dev, void *dinp1, void *dinp2, const void *dout,
                                   size_t n);

/* probs (N,Vp) = softmax over the first V of logits (N,Vp); the padded columns [V,Vp) get 0 */
hm_status hm_dev_softmax_forward(hm_device *dev, void *probs, const void *logits, int N, int V,
                                 int Vp);
/* Fused softmax + cross-entropy over the first V of Vp columns (llm.c padding: Vp >= V).
 * losses (N) = -log softmax(logits)[target]; dlogits (N,Vp) = (softmax - onehot) * dloss, 0 in
 * the padded columns. dlogits may be NULL (forward only) or alias logits (in place; it is
 * overwritten, not accumulated, the one exception to the += rule). targets (N) int32 in [0,V);
 * a negative target means "ignore": loss 0 and a zero gradient row; a target >= V is
 * HM_ERR_INVALID_ARG (outputs are then unspecified). */
hm_status hm_dev_crossentropy_forward_backward(hm_device *dev, void *losses, void *dlogits,
                                               const void *logits, const int32_t *targets,
                                               double dloss, int N, int V, int Vp);

/* Vocabulary-parallel cross-entropy (Megatron): each of tp ranks holds the logits (N,V) of the
 * vocabulary columns [lo, lo+V); the caller allreduces the statistics between the calls, so no
 * rank ever holds the full logits. Backends without these kernels return HM_ERR_UNSUPPORTED.
 *   rowmax (N) = max over the row of logits;
 *   stats (2N): stats[n] = sum_v exp(logits[n,v] - rowmax[n]), stats[N+n] = logits[n, targets[n]-lo]
 *   when lo <= targets[n] < lo+V, else 0 (rowmax: the allreduced maximum);
 *   dlogits (N,V) = (exp(logits - rowmax) / sumexp - onehot(targets - lo)) * dloss, 0 in rows whose
 *   target is negative (ignored); overwritten, not accumulated; may alias logits (sumexp: the
 *   allreduced stats[0..N)). targets (N) int32 are global ids. */
hm_status hm_dev_rowmax(hm_device *dev, void *rowmax, const void *logits, int N, int V);
hm_status hm_dev_crossentropy_shard_forward(hm_device *dev, void *stats, const void *logits,
                                            const void *rowmax, const int32_t *targets, int lo,
                                            int N, int V);
hm_status hm_dev_crossentropy_shard_backward(hm_device *dev, void *dlogits, const void *logits,
                                             const void *rowmax, const void *sumexp,
                                             const int32_t *targets, int lo, double dloss, int N,
                                             int V);

/* AdamW (decoupled weight decay, bias correction) on n elements, step t >= 1:
 *   g = grads * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   params -= lr * ((m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + weight_decay * params) */
hm_status hm_dev_adamw_update(hm_device *dev, void *params, const void *grads, void *m, void *v,
                              size_t n, double lr, double beta1, double beta2, double eps,
                              double weight_decay, double grad_scale, int t);

/* *out_host = sum of x (n) / sum of x^2 (n), accumulated in double in a fixed order */
hm_status hm_dev_sum(hm_device *dev, double *out_host, const void *x, size_t n);
hm_status hm_dev_sumsq(hm_device *dev, double *out_host, const void *x, size_t n);
/* x (n) *= s */
hm_status hm_dev_scale(hm_device *dev, void *x, double s, size_t n);

#ifdef __cplusplus
}
#endif
#endif
