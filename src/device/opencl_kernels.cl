/* The opencl backend's kernels (OpenCL C 1.2), one per entry of the device table that is not a
 * GEMM (matmuls go through CLBlast). Built once per device by opencl_program.c and cached.
 *
 * Every tensor argument is a (buffer, byte offset) pair: the host side maps a device address
 * to the cl_mem holding it and the offset inside (opencl.c). Work-items never share an output
 * element, and every sum runs in a fixed order inside one work-item (or over fixed chunks
 * combined in order on the host), so results are bitwise reproducible: no atomics, no
 * order-dependent reductions. Sums accumulate in ACC: double where the device has cl_khr_fp64,
 * float otherwise. Backward kernels accumulate (+=) as the table requires. */
#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double ACC;
#define LIT(x) x /* a constant in ACC precision */
#else
typedef float ACC;
#define LIT(x) x##f
#endif

#define GP(T, name) __global T *name##_b, ulong name##_o
#define AT(T, name) __global T *name = (__global T *)((__global char *)name##_b + name##_o)

#define GELU_S LIT(0.7978845608028654) /* sqrt(2/pi) */

/* out (B,T,C) = wte[inp] + wpe[t]; one work-item per element */
__kernel void encoder_forward(GP(float, out), GP(const int, inp), GP(const float, wte),
                              GP(const float, wpe), int T, int C, ulong n) {
  AT(float, out); AT(const int, inp); AT(const float, wte); AT(const float, wpe);
  size_t i = get_global_id(0);
  if (i >= n) return;
  size_t bt = i / C, c = i % C, t = bt % T;
  out[i] = wte[(size_t)inp[bt] * C + c] + wpe[t * C + c];
}

/* dwte += scatter of dout by token: one work-item per column c walks every position in order,
 * so repeated tokens add in a fixed order without atomics */
__kernel void encoder_backward_wte(GP(float, dwte), GP(const float, dout), GP(const int, inp),
                                   int N, int C) {
  AT(float, dwte); AT(const float, dout); AT(const int, inp);
  int c = get_global_id(0);
  if (c >= C) return;
  for (int n = 0; n < N; n++) dwte[(size_t)inp[n] * C + c] += dout[(size_t)n * C + c];
}

/* dwpe (T,C) += sum over b of dout; one work-item per (t,c) */
__kernel void encoder_backward_wpe(GP(float, dwpe), GP(const float, dout), int B, int T, int C) {
  AT(float, dwpe); AT(const float, dout);
  size_t i = get_global_id(0);
  if (i >= (size_t)T * C) return;
  float s = dwpe[i];
  for (int b = 0; b < B; b++) s += dout[(size_t)b * T * C + i];
  dwpe[i] = s;
}

/* one work-item per row */
__kernel void layernorm_forward(GP(float, out), GP(float, mean), GP(float, rstd),
                                GP(const float, inp), GP(const float, weight),
                                GP(const float, bias), int N, int C) {
  AT(float, out); AT(float, mean); AT(float, rstd); AT(const float, inp);
  AT(const float, weight); AT(const float, bias);
  int n = get_global_id(0);
  if (n >= N) return;
  __global const float *x = inp + (size_t)n * C;
  ACC m = 0;
  for (int c = 0; c < C; c++) m += x[c];
  m /= C;
  ACC var = 0;
  for (int c = 0; c < C; c++) var += ((ACC)x[c] - m) * ((ACC)x[c] - m);
  var /= C;
  ACC s = (ACC)1 / sqrt(var + LIT(1e-5));
  __global float *o = out + (size_t)n * C;
  for (int c = 0; c < C; c++) o[c] = (float)((((ACC)x[c] - m) * s) * weight[c] + bias[c]);
  mean[n] = (float)m;
  rstd[n] = (float)s;
}

/* dinp (N,C) += ...; one work-item per row */
__kernel void layernorm_backward_dinp(GP(float, dinp), GP(const float, dout),
                                      GP(const float, inp), GP(const float, weight),
                                      GP(const float, mean), GP(const float, rstd), int N, int C) {
  AT(float, dinp); AT(const float, dout); AT(const float, inp); AT(const float, weight);
  AT(const float, mean); AT(const float, rstd);
  int n = get_global_id(0);
  if (n >= N) return;
  __global const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
  __global float *dx = dinp + (size_t)n * C;
  ACC m = mean[n], s = rstd[n], dnorm_mean = 0, dnorm_norm_mean = 0;
  for (int c = 0; c < C; c++) {
    ACC norm = ((ACC)x[c] - m) * s, dnorm = (ACC)weight[c] * d[c];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * norm;
  }
  dnorm_mean /= C;
  dnorm_norm_mean /= C;
  for (int c = 0; c < C; c++) {
    ACC norm = ((ACC)x[c] - m) * s, dnorm = (ACC)weight[c] * d[c];
    dx[c] += (float)((dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
  }
}

/* dweight (C), dbias (C) += column sums over the N rows in order; one work-item per column */
__kernel void layernorm_backward_dwb(GP(float, dweight), GP(float, dbias), GP(const float, dout),
                                     GP(const float, inp), GP(const float, mean),
                                     GP(const float, rstd), int N, int C) {
  AT(float, dweight); AT(float, dbias); AT(const float, dout); AT(const float, inp);
  AT(const float, mean); AT(const float, rstd);
  int c = get_global_id(0);
  if (c >= C) return;
  ACC dw = 0, db = 0;
  for (int n = 0; n < N; n++) {
    ACC d = dout[(size_t)n * C + c];
    ACC norm = ((ACC)inp[(size_t)n * C + c] - (ACC)mean[n]) * (ACC)rstd[n];
    db += d;
    dw += norm * d;
  }
  dbias[c] += (float)db;
  dweight[c] += (float)dw;
}

/* out (N,OC) = bias broadcast (or 0): the GEMM then accumulates with beta = 1 */
__kernel void bias_fill(GP(float, out), GP(const float, bias), int has_bias, int OC, ulong n) {
  AT(float, out); AT(const float, bias);
  size_t i = get_global_id(0);
  if (i >= n) return;
  out[i] = has_bias ? bias[i % OC] : 0.0f;
}

/* dbias (OC) += column sums of dout (N,OC); one work-item per column */
__kernel void bias_backward(GP(float, dbias), GP(const float, dout), int N, int OC) {
  AT(float, dbias); AT(const float, dout);
  int o = get_global_id(0);
  if (o >= OC) return;
  ACC s = 0;
  for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
  dbias[o] += (float)s;
}

/* att (B,NH,T,T): softmax(q k^T * scale) of row (b,h,t), causal, 0 beyond t; one work-item
 * per row */
__kernel void attention_probs(GP(float, att), GP(const float, qkv), int B, int T, int C, int NH) {
  AT(float, att); AT(const float, qkv);
  int r = get_global_id(0);
  if (r >= B * NH * T) return;
  int t = r % T, h = (r / T) % NH, b = r / (T * NH), hs = C / NH;
  float scale = 1.0f / sqrt((float)hs);
  __global const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
  __global float *a = att + (size_t)r * T;
  float maxv = -INFINITY;
  for (int t2 = 0; t2 <= t; t2++) {
    __global const float *k = qkv + ((size_t)b * T + t2) * 3 * C + C + h * hs;
    ACC v = 0;
    for (int i = 0; i < hs; i++) v += (ACC)q[i] * k[i];
    float s = (float)v * scale;
    a[t2] = s;
    if (s > maxv) maxv = s;
  }
  ACC sum = 0;
  for (int t2 = 0; t2 <= t; t2++) {
    float e = exp(a[t2] - maxv);
    a[t2] = e;
    sum += e;
  }
  float inv = (float)((ACC)1 / sum);
  for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
  for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
}

/* out (B,T,C) = att v per head; one work-item per output element */
__kernel void attention_out(GP(float, out), GP(const float, att), GP(const float, qkv), int B,
                            int T, int C, int NH) {
  AT(float, out); AT(const float, att); AT(const float, qkv);
  size_t idx = get_global_id(0);
  if (idx >= (size_t)B * T * C) return;
  int c = idx % C, t = (idx / C) % T, b = idx / ((size_t)T * C), hs = C / NH, h = c / hs;
  __global const float *a = att + (((size_t)b * NH + h) * T + t) * T;
  ACC v = 0;
  for (int t2 = 0; t2 <= t; t2++) v += (ACC)a[t2] * qkv[((size_t)b * T + t2) * 3 * C + 2 * C + c];
  out[idx] = (float)v;
}

/* dpre (B,NH,T,T) = gradient of the pre-softmax scores (already times scale); one work-item
 * per row: datt[t2] = dout[t] . v[t2], dpre = p * (datt - sum p datt) */
__kernel void attention_dpre(GP(float, dpre), GP(const float, dout), GP(const float, att),
                             GP(const float, qkv), int B, int T, int C, int NH) {
  AT(float, dpre); AT(const float, dout); AT(const float, att); AT(const float, qkv);
  int r = get_global_id(0);
  if (r >= B * NH * T) return;
  int t = r % T, h = (r / T) % NH, b = r / (T * NH), hs = C / NH;
  float scale = 1.0f / sqrt((float)hs);
  __global const float *a = att + (size_t)r * T, *d = dout + ((size_t)b * T + t) * C + h * hs;
  __global float *dp = dpre + (size_t)r * T;
  ACC dot = 0;
  for (int t2 = 0; t2 <= t; t2++) {
    __global const float *v = qkv + ((size_t)b * T + t2) * 3 * C + 2 * C + h * hs;
    ACC s = 0;
    for (int i = 0; i < hs; i++) s += (ACC)d[i] * v[i];
    dp[t2] = (float)s;
    dot += (ACC)a[t2] * s;
  }
  for (int t2 = 0; t2 <= t; t2++) dp[t2] = (float)((ACC)a[t2] * ((ACC)dp[t2] - dot) * scale);
  for (int t2 = t + 1; t2 < T; t2++) dp[t2] = 0.0f;
}

/* dq (B,T,C part of dqkv) += dpre k; one work-item per element */
__kernel void attention_dq(GP(float, dqkv), GP(const float, dpre), GP(const float, qkv), int B,
                           int T, int C, int NH) {
  AT(float, dqkv); AT(const float, dpre); AT(const float, qkv);
  size_t idx = get_global_id(0);
  if (idx >= (size_t)B * T * C) return;
  int c = idx % C, t = (idx / C) % T, b = idx / ((size_t)T * C), hs = C / NH, h = c / hs;
  __global const float *dp = dpre + (((size_t)b * NH + h) * T + t) * T;
  ACC s = 0;
  for (int t2 = 0; t2 <= t; t2++) s += (ACC)dp[t2] * qkv[((size_t)b * T + t2) * 3 * C + C + c];
  dqkv[((size_t)b * T + t) * 3 * C + c] += (float)s;
}

/* dk += dpre^T q, dv += att^T dout; one work-item per (b, t2, c) over the queries t >= t2 */
__kernel void attention_dkv(GP(float, dqkv), GP(const float, dpre), GP(const float, att),
                            GP(const float, qkv), GP(const float, dout), int B, int T, int C,
                            int NH) {
  AT(float, dqkv); AT(const float, dpre); AT(const float, att); AT(const float, qkv);
  AT(const float, dout);
  size_t idx = get_global_id(0);
  if (idx >= (size_t)B * T * C) return;
  int c = idx % C, t2 = (idx / C) % T, b = idx / ((size_t)T * C), hs = C / NH, h = c / hs;
  size_t row0 = ((size_t)b * NH + h) * T;
  ACC sk = 0, sv = 0;
  for (int t = t2; t < T; t++) {
    size_t at = (row0 + t) * T + t2;
    sk += (ACC)dpre[at] * qkv[((size_t)b * T + t) * 3 * C + c];
    sv += (ACC)att[at] * dout[((size_t)b * T + t) * C + c];
  }
  __global float *row = dqkv + ((size_t)b * T + t2) * 3 * C;
  row[C + c] += (float)sk;
  row[2 * C + c] += (float)sv;
}

/* GELU in ACC: the derivative's 1 - tanh^2 cancels for |x| of a few units, which float tanh
 * (up to 5 ulp in OpenCL) would turn into a visible error */
__kernel void gelu_forward(GP(float, out), GP(const float, inp), ulong n) {
  AT(float, out); AT(const float, inp);
  size_t i = get_global_id(0);
  if (i >= n) return;
  ACC x = inp[i];
  out[i] = (float)(LIT(0.5) * x * ((ACC)1 + tanh(GELU_S * (x + LIT(0.044715) * x * x * x))));
}

__kernel void gelu_backward(GP(float, dinp), GP(const float, inp), GP(const float, dout),
                            ulong n) {
  AT(float, dinp); AT(const float, inp); AT(const float, dout);
  size_t i = get_global_id(0);
  if (i >= n) return;
  ACC x = inp[i];
  ACC th = tanh(GELU_S * (x + LIT(0.044715) * x * x * x));
  ACC sech2 = (ACC)1 - th * th;
  ACC g = LIT(0.5) * ((ACC)1 + th) +
          LIT(0.5) * x * sech2 * GELU_S * ((ACC)1 + (ACC)3 * LIT(0.044715) * x * x);
  dinp[i] += (float)(g * dout[i]);
}

/* out = a + b (out may alias an input: each element is read before it is written) */
__kernel void residual_forward(GP(float, out), GP(const float, a), GP(const float, b), ulong n) {
  AT(float, out); AT(const float, a); AT(const float, b);
  size_t i = get_global_id(0);
  if (i >= n) return;
  out[i] = a[i] + b[i];
}

/* y += x (residual backward, one gradient at a time; y may alias x) */
__kernel void accumulate(GP(float, y), GP(const float, x), ulong n) {
  AT(float, y); AT(const float, x);
  size_t i = get_global_id(0);
  if (i >= n) return;
  y[i] += x[i];
}

/* one work-item per row */
__kernel void softmax_forward(GP(float, probs), GP(const float, logits), int N, int V, int Vp) {
  AT(float, probs); AT(const float, logits);
  int n = get_global_id(0);
  if (n >= N) return;
  __global const float *l = logits + (size_t)n * Vp;
  __global float *p = probs + (size_t)n * Vp;
  float maxv = -INFINITY;
  for (int i = 0; i < V; i++) maxv = fmax(maxv, l[i]);
  ACC sum = 0;
  for (int i = 0; i < V; i++) sum += exp((ACC)l[i] - maxv);
  for (int i = 0; i < V; i++) p[i] = (float)(exp((ACC)l[i] - maxv) / sum);
  for (int i = V; i < Vp; i++) p[i] = 0.0f;
}

/* losses (N), dlogits (N,Vp) (written, may alias logits); bad[0] gets 1 + the first row whose
 * target is >= V (each row writes only when smaller: atomic_min, a flag, not a reduction) */
__kernel void crossentropy(GP(float, losses), GP(float, dlogits), GP(const float, logits),
                           GP(const int, targets), GP(int, bad), float dloss, int want_grad,
                           int N, int V, int Vp) {
  AT(float, losses); AT(float, dlogits); AT(const float, logits); AT(const int, targets);
  AT(int, bad);
  int n = get_global_id(0);
  if (n >= N) return;
  int y = targets[n];
  if (y >= V) {
    atomic_min(bad, n + 1);
    return;
  }
  __global const float *l = logits + (size_t)n * Vp;
  float maxv = -INFINITY;
  for (int i = 0; i < V; i++) maxv = fmax(maxv, l[i]);
  ACC sum = 0;
  for (int i = 0; i < V; i++) sum += exp((ACC)l[i] - maxv);
  ACC lse = maxv + log(sum);
  losses[n] = y >= 0 ? (float)(lse - l[y]) : 0.0f;
  if (!want_grad) return;
  __global float *dl = dlogits + (size_t)n * Vp;
  for (int i = 0; i < V; i++) {
    ACC p = exp((ACC)l[i] - lse);
    dl[i] = y >= 0 ? (float)((p - (i == y ? 1.0f : 0.0f)) * dloss) : 0.0f;
  }
  for (int i = V; i < Vp; i++) dl[i] = 0.0f;
}

/* bias corrections bc1 = 1 - beta1^t, bc2 = 1 - beta2^t come from the host (double) */
__kernel void adamw(GP(float, params), GP(const float, grads), GP(float, m), GP(float, v),
                    ulong n, float lr, float beta1, float beta2, float eps, float wd,
                    float grad_scale, float bc1, float bc2) {
  AT(float, params); AT(const float, grads); AT(float, m); AT(float, v);
  size_t i = get_global_id(0);
  if (i >= n) return;
  float g = grads[i] * grad_scale;
  float mi = beta1 * m[i] + (1.0f - beta1) * g;
  float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  float p = params[i];
  params[i] = p - lr * ((mi / bc1) / (sqrt(vi / bc2) + eps) + wd * p);
}

/* partial[2j], partial[2j+1] = the sum (of squares when sq) of x over chunk j = [j*chunk,
 * min(n, (j+1)*chunk)) in order, as a float pair hi + lo (keeps a double sum's precision
 * without double buffers); the host adds the partials in order */
__kernel void partial_sums(__global float *partial, GP(const float, x), ulong n, ulong chunk,
                           int sq) {
  AT(const float, x);
  size_t j = get_global_id(0), lo = j * chunk, hi = lo + chunk < n ? lo + chunk : n;
  ACC s = 0;
  for (size_t i = lo; i < hi; i++) s += sq ? (ACC)x[i] * x[i] : (ACC)x[i];
  float h = (float)s;
  partial[2 * j] = h;
  partial[2 * j + 1] = (float)(s - (ACC)h);
}

__kernel void scale(GP(float, x), float s, ulong n) {
  AT(float, x);
  size_t i = get_global_id(0);
  if (i >= n) return;
  x[i] = x[i] * s;
}

/* ---- Llama: RMSNorm, rotary embedding, SwiGLU, grouped-query key/value repeat ---- */

/* one work-item per row */
__kernel void rmsnorm_forward(GP(float, out), GP(float, rstd), GP(const float, inp), GP(const float, weight),
                              int N, int C) {
  AT(float, out); AT(float, rstd); AT(const float, inp); AT(const float, weight);
  int n = get_global_id(0);
  if (n >= N) return;
  __global const float *x = inp + (size_t)n * C;
  ACC ss = 0;
  for (int c = 0; c < C; c++) ss += (ACC)x[c] * x[c];
  ACC r = (ACC)1 / sqrt(ss / C + LIT(1e-5));
  __global float *o = out + (size_t)n * C;
  for (int c = 0; c < C; c++) o[c] = (float)((ACC)x[c] * r * weight[c]);
  rstd[n] = (float)r;
}

/* dinp (N,C) += ...; one work-item per row */
__kernel void rmsnorm_backward_dinp(GP(float, dinp), GP(const float, dout), GP(const float, inp),
                                    GP(const float, weight), GP(const float, rstd), int N, int C) {
  AT(float, dinp); AT(const float, dout); AT(const float, inp); AT(const float, weight); AT(const float, rstd);
  int n = get_global_id(0);
  if (n >= N) return;
  __global const float *d = dout + (size_t)n * C, *x = inp + (size_t)n * C;
  __global float *dx = dinp + (size_t)n * C;
  ACC r = rstd[n], dot = 0;
  for (int c = 0; c < C; c++) dot += (ACC)weight[c] * d[c] * x[c];
  ACC k = r * r * r * dot / C;
  for (int c = 0; c < C; c++) dx[c] = (float)(dx[c] + (r * weight[c] * d[c] - k * x[c]));
}

/* dweight (C) += column sums over the N rows in order; one work-item per column */
__kernel void rmsnorm_backward_dw(GP(float, dweight), GP(const float, dout), GP(const float, inp),
                                  GP(const float, rstd), int N, int C) {
  AT(float, dweight); AT(const float, dout); AT(const float, inp); AT(const float, rstd);
  int c = get_global_id(0);
  if (c >= C) return;
  ACC dw = 0;
  for (int n = 0; n < N; n++) dw += (ACC)dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
  dweight[c] = (float)(dweight[c] + dw);
}

/* rotary embedding in place; one work-item per rotated pair (row, head, i); the angle
 * t * 10000^(-2i/hd) in ACC, as the host backends compute it in double */
__kernel void rope(GP(float, x), int T, int H, int hd, int stride, int sign, ulong n) {
  AT(float, x);
  size_t j = get_global_id(0);
  if (j >= n) return;
  const int hh = hd / 2; /* (half is a type in OpenCL C) */
  int i = (int)(j % hh);
  size_t rh = j / hh;
  int h = (int)(rh % H);
  size_t row = rh / H;
  int t = (int)(row % T);
  ACC a = (ACC)t * pow((ACC)10000, -(ACC)(2 * i) / hd);
  ACC c = cos(a), s = sign * sin(a);
  __global float *p = x + row * stride + (size_t)h * hd;
  ACC x1 = p[i], x2 = p[i + hh];
  p[i] = (float)(x1 * c - x2 * s);
  p[i + hh] = (float)(x1 * s + x2 * c);
}

/* out (N,F) = silu(gate) * up from inp (N,2F) = gate | up; one work-item per output */
__kernel void swiglu_forward(GP(float, out), GP(const float, inp), int F, ulong n) {
  AT(float, out); AT(const float, inp);
  size_t i = get_global_id(0);
  if (i >= n) return;
  size_t r = i / F, f = i % F;
  ACC g = inp[r * 2 * F + f], u = inp[r * 2 * F + F + f];
  out[i] = (float)(g / (1 + exp(-g)) * u);
}

/* dinp (N,2F) = d gate | d up (written); one work-item per output element of the forward */
__kernel void swiglu_backward(GP(float, dinp), GP(const float, inp), GP(const float, dout), int F, ulong n) {
  AT(float, dinp); AT(const float, inp); AT(const float, dout);
  size_t i = get_global_id(0);
  if (i >= n) return;
  size_t r = i / F, f = i % F, gi = r * 2 * F + f;
  ACC g = inp[gi], u = inp[gi + F], d = dout[i];
  ACC sg = 1 / (1 + exp(-g));
  dinp[gi] = (float)(d * u * sg * (1 + g * (1 - sg)));
  dinp[gi + F] = (float)(d * g * sg);
}

/* out (N,3C) = q | k | v with NH heads from inp (N, C + 2 KVH hd); one work-item per output */
__kernel void repeat_kv_forward(GP(float, out), GP(const float, inp), int C, int NH, int KVH, ulong n) {
  AT(float, out); AT(const float, inp);
  size_t i = get_global_id(0);
  if (i >= n) return;
  const int hd = C / NH, kvd = KVH * hd, rep = NH / KVH, W = C + 2 * kvd;
  size_t r = i / (3 * (size_t)C);
  int c = (int)(i % (3 * (size_t)C));
  int src;
  if (c < C) src = c;
  else if (c < 2 * C) src = C + ((c - C) / hd / rep) * hd + (c - C) % hd;
  else src = C + kvd + ((c - 2 * C) / hd / rep) * hd + (c - 2 * C) % hd;
  out[i] = inp[r * W + src];
}

/* dinp (N, C + 2 KVH hd) from dout (N,3C), each KV head the sum of its group in head order
 * (written); one work-item per element of dinp */
__kernel void repeat_kv_backward(GP(float, dinp), GP(const float, dout), int C, int NH, int KVH, ulong n) {
  AT(float, dinp); AT(const float, dout);
  size_t i = get_global_id(0);
  if (i >= n) return;
  const int hd = C / NH, kvd = KVH * hd, rep = NH / KVH, W = C + 2 * kvd;
  size_t r = i / W;
  int c = (int)(i % W);
  __global const float *g = dout + r * 3 * (size_t)C;
  if (c < C) {
    dinp[i] = g[c];
    return;
  }
  int base = c < C + kvd ? C : 2 * C, k = c < C + kvd ? c - C : c - C - kvd;
  int j = k / hd, d = k % hd;
  ACC s = 0;
  for (int q = 0; q < rep; q++) s += g[base + (j * rep + q) * hd + d];
  dinp[i] = (float)s;
}
