#!/usr/bin/env python3
"""PyTorch oracle for hetmix's GPT-2 and Llama: for each AdamW step test_oracle recorded, starts PyTorch (in
float64) from the state hetmix started from (params and moments, f32 values), and checks hetmix's
loss, logits (step 0), every gradient, and every parameter and moment after torch.optim.AdamW.

usage: torch_oracle.py CASE_DIR     (exit 0: match, 1: mismatch, 77: PyTorch is not installed)

Each step starts from hetmix's state, so what is compared is one step's rounding, never the
divergence of two trajectories (AdamW turns a sign flip of a tiny gradient into a 2*lr step).

Bounds (u = 2^-24, torch's own f64 error is negligible):
- loss, logits, gradients, per tensor: max|hetmix - torch| <= TOL * max|torch|. A dot product
  of length K in f32 errs by at most K u sum|a_i b_i| (Higham 3.5); the longest here is
  K = 4C = 256 for GPT-2 (mlp.proj; weight gradients sum B*T = 128 rows) and K = V = 200 for the
  Llama case (the head's backward; gate_up's sums 2 ffn = 160, weight gradients B*T = 111), and a
  gradient lies behind at most 3L + 2 = 8 dot-product layers, so TOL = 8 * 256 * u = 1.2e-4 and
  8 * 200 * u = 9.5e-5 (sum|a_i b_i| taken at the
  tensor's largest element; rounding errors behave as independent zero-mean variables, so
  this covers cancellation up to sqrt(K)/6 ~ 2.7 times). The elementwise ratio of a near-zero
  gradient means nothing, hence per tensor.
- params and moments after AdamW, per element, from the gradient difference d actually seen:
  see adamw_bounds().

bf16-mixed (case.json "precision"): PyTorch autocast's bf16 semantics with its rounding points
evaluated exactly: torch runs in float64 and rounds to the nearest-even bf16 (one direct
rounding, rnd()) wherever autocast casts to bf16 or a bf16 op returns, and rounds each
gradient flowing back through such a point the same way (RoundBF16): GEMM inputs (activations,
weights, biases) and outputs; attention's scores round(q.k / sqrt(hs)), bf16 probabilities
into the AV product, its output; layernorm, RMSNorm, softmax, GELU, SwiGLU, cross-entropy and
the residual stream in full precision (f32 in hetmix). Master weights, gradients and AdamW stay
f32 in hetmix. Bound, per tensor like the f32 one: hetmix's value before each rounding differs
from torch's only by f32 error (cpu: sums of K products in f32, K u relative; ref: exact sums,
f32 storage of norms, residuals and log-sum-exps), so each rounding gives the same bf16 value or
one bf16 ulp apart (2^-7 relative, bf16 has an 8-bit significand: unit roundoff 2^-8). First
order, worst case, every one of the R rounding points on the longest path is one ulp apart:
TOL_BF16 = R * 2^-7 + TOL, R = 14 per transformer block forward (norm output, weight, GEMM
output for QKV, FC; scores, probabilities, attention output; weight and output for the two
projections; GELU or SwiGLU output) and as many backward (GEMM output gradients and input
gradients, the weight gradient's rounding, the attention's three), 5 in the head (final norm,
weight, logits; their two gradients): R = 28 L + 5. Observed differences are far smaller (a
flip needs the exact value within K u of a rounding boundary); the worst fraction is printed.
To show the rounding is on at all, hetmix's bf16 logits must also differ from the unrounded
f64 model's by more than 10 TOL."""
import json
import math
import os
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the C test turns this into a skip with this message
    print(f"PyTorch is not available ({e}); install Debian's python3-torch", file=sys.stderr)
    sys.exit(77)

U = 2.0 ** -24
BF16_ULP = 2.0 ** -7  # one bf16 ulp relative (8-bit significand, unit roundoff 2^-8)


def rnd(x):
    """float64 tensor -> nearest-even bf16 value, one direct rounding (as float64): round to
    float toward zero with a sticky last bit (round to odd), then float -> bf16 to nearest even
    (torch's own float -> bf16 conversion rounds to nearest even)."""
    f = x.float()
    inexact = (f.double() != x) & torch.isfinite(f)
    toward0 = (f.double().abs() > x.abs()).int()
    bits = f.view(torch.int32)
    bits = torch.where(inexact, (bits - toward0) | 1, bits)
    return bits.view(torch.float32).to(torch.bfloat16).double()


class RoundBF16(torch.autograd.Function):
    """autocast's cast to bf16: the value rounded, and the gradient flowing back rounded."""

    @staticmethod
    def forward(ctx, x):
        return rnd(x)

    @staticmethod
    def backward(ctx, g):
        return rnd(g)


def load(case, name, dtype, shape=None):
    a = np.fromfile(os.path.join(case, name), dtype=dtype)
    return a.reshape(shape) if shape is not None else a


def adamw_bounds(m, t, p, mom, vel, g, d):
    """Bounds on |hetmix - torch| for (p', m', v') after one AdamW step t from the same (p, m, v)
    when the (clip-scaled) gradients differ by d. With mhat = (b1 m + (1-b1) g) / bc1,
    s = sqrt((b2 v + (1-b2) g^2) / bc2) and r = mhat / (s + eps), on g in [g - d, g + d]:
      |dr/dg| <= ((1-b1)/bc1 + |r| sqrt((1-b2)/bc2)) / (s + eps)
    (as (1-b2)|g|/bc2 <= sqrt((1-b2)/bc2) s), taken at the interval's smallest s and largest
    |mhat|; and |r - r'| <= 2 max|r| always: a gradient whose sign the error leaves open moves
    the parameter by up to 2 lr (AdamW amplifies gradient errors by up to lr/eps). Plus f32
    rounding: p' = p - lr (r + wd p) rounds p' and r, wd p take a few roundings each; m' and v'
    are two products and a sum each."""
    b1, b2, eps, lr, wd = m["beta1"], m["beta2"], m["eps"], m["lr"], m["weight_decay"]
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    ag = np.abs(g)
    gmin, gmax = np.maximum(0.0, ag - d), ag + d
    smin = np.sqrt((b2 * vel + (1 - b2) * gmin * gmin) / bc2)
    rmax = (b1 * np.abs(mom) + (1 - b1) * gmax) / bc1 / (smin + eps)
    lip = ((1 - b1) / bc1 + rmax * math.sqrt((1 - b2) / bc2)) / (smin + eps)
    dr = np.minimum(lip * d, 2 * rmax)
    bp = lr * dr + U * (2 * np.abs(p) + 6 * lr * (rmax + wd * np.abs(p)))
    bm = (1 - b1) * d + 3 * U * (b1 * np.abs(mom) + (1 - b1) * gmax)
    bv = (1 - b2) * (2 * ag + d) * d + 3 * U * (b2 * vel + (1 - b2) * gmax * gmax)
    return bp, bm, bv


def main():
    case = sys.argv[1]
    m = json.load(open(os.path.join(case, "case.json")))
    L, C, NH, V = m["L"], m["C"], m["NH"], m["V"]
    B, T, steps = m["B"], m["seq_len"], m["steps"]
    llama = m.get("arch", "gpt2") == "llama"
    KV, FF = m.get("kv_heads", NH), m.get("ffn", 4 * C)
    kvd = C // NH * KV
    # the f32 error bound of one step (module docstring): 3L + 2 dot-product layers of length K
    K = max(2 * FF, B * T, V, C + 2 * kvd) if llama else max(4 * C, B * T)
    tol = (3 * L + 2) * K * U
    bf16 = m.get("precision", "fp32") == "bf16-mixed"
    tol32 = tol
    if bf16:
        tol += (28 * L + 5) * BF16_ULP
    R = RoundBF16.apply if bf16 else (lambda x: x)

    def lin(x, w, b=None):  # autocast's linear: bf16 inputs, bf16 output
        y = R(x) @ R(w).T
        return R(y + R(b) if b is not None else y)

    def attend(q, k, v):  # (B, heads, T, hs): scores, softmax in full precision, AV
        att = R((R(q) @ R(k).transpose(-2, -1)) / math.sqrt(hs))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return R(R(att) @ R(v))
    torch.manual_seed(0)
    torch.set_num_threads(2)
    dt = torch.float64
    tensors = m["tensors"]
    n_params = sum(t["numel"] for t in tensors)
    tokens = torch.tensor(load(case, "tokens.bin", np.int32, (steps + 1, B, T)).astype(np.int64))
    targets = torch.tensor(load(case, "targets.bin", np.int32, (steps + 1, B, T)).astype(np.int64))
    hm_losses = load(case, "losses.bin", np.float32)
    hm_clips = load(case, "clips.bin", np.float32)
    hs = C // NH
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))

    def state(step):  # hetmix's params, adam_m, adam_v before `step` (float64 copies)
        return load(case, f"state_{step:02d}.bin", np.float32, (3, n_params)).astype(np.float64)

    def split(flat):
        return {t["name"]: flat[t["offset"]:t["offset"] + t["numel"]].reshape(t["shape"]) for t in tensors}

    P = {}

    def rmsnorm(x, w):
        return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + 1e-5) * w

    # rotary embedding, rotate-half convention: pair (i, i + hs/2) at position t turns by
    # t * 10000^(-2i/hs)
    half = hs // 2
    ang = torch.arange(T, dtype=dt)[:, None] * 10000.0 ** (-2.0 * torch.arange(half, dtype=dt) / hs)[None, :]
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]

    def rope(x):  # (B, T, heads, hs)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward_llama(inp):
        x = P["wte"][inp]
        for i in range(L):
            h = f"h{i}."
            y = rmsnorm(x, P[h + "norm1.w"])
            q, k, v = lin(y, P[h + "attn.qkv.w"]).split([C, kvd, kvd], dim=2)
            q = rope(q.view(B, T, NH, hs)).transpose(1, 2)
            k = rope(k.view(B, T, KV, hs)).repeat_interleave(NH // KV, dim=2).transpose(1, 2)
            v = v.view(B, T, KV, hs).repeat_interleave(NH // KV, dim=2).transpose(1, 2)
            y = attend(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
            x = x + lin(y, P[h + "attn.proj.w"])
            y = rmsnorm(x, P[h + "norm2.w"])
            g, u = lin(y, P[h + "mlp.gate_up.w"]).split(FF, dim=2)
            x = x + lin(F.silu(g) * u, P[h + "mlp.down.w"])
        return lin(rmsnorm(x, P["normf.w"]), P["lm_head"])  # untied

    def forward(inp):
        if llama:
            return forward_llama(inp)
        x = P["wte"][inp] + P["wpe"][:T]
        for i in range(L):
            h = f"h{i}."
            y = F.layer_norm(x, (C,), P[h + "ln1.w"], P[h + "ln1.b"], eps=1e-5)
            qkv = lin(y, P[h + "attn.qkv.w"], P[h + "attn.qkv.b"])
            q, k, v = qkv.split(C, dim=2)
            q = q.view(B, T, NH, hs).transpose(1, 2)
            k = k.view(B, T, NH, hs).transpose(1, 2)
            v = v.view(B, T, NH, hs).transpose(1, 2)
            y = attend(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
            x = x + lin(y, P[h + "attn.proj.w"], P[h + "attn.proj.b"])
            y = F.layer_norm(x, (C,), P[h + "ln2.w"], P[h + "ln2.b"], eps=1e-5)
            y = F.gelu(lin(y, P[h + "mlp.fc.w"], P[h + "mlp.fc.b"]), approximate="tanh")
            x = x + lin(y, P[h + "mlp.proj.w"], P[h + "mlp.proj.b"])
        x = F.layer_norm(x, (C,), P["lnf.w"], P["lnf.b"], eps=1e-5)
        return lin(x, P["wte"])  # tied embedding

    def rel(a, b):
        return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-300))

    ok = True
    worst = {"loss": 0.0, "grad": 0.0, "param": 0.0, "moment": 0.0}

    def note(kind, frac, what):
        nonlocal ok
        if frac > worst[kind]:
            worst[kind] = frac
            if os.environ.get("HETMIX_ORACLE_VERBOSE"):
                print(f"worst so far {what}: {frac:.6g}")
        if frac > 1:
            print(f"MISMATCH {what}: {frac:.3g} times its bound")
            ok = False

    print(f"bounds ({m.get('precision', 'fp32')}): loss, logits, gradients {tol:.3g} of the tensor's largest; "
          "params and moments per element")
    for s in range(steps + 1):
        st = state(s)
        for name, a in split(st[0]).items():
            P[name] = torch.tensor(a, dtype=dt).requires_grad_(True)
        logits = forward(tokens[s])
        loss = F.cross_entropy(logits.reshape(-1, V), targets[s].reshape(-1))
        note("loss", abs(hm_losses[s] - loss.item()) / abs(loss.item()) / tol, f"step {s} loss")
        if s == 0:
            hm_logits = load(case, "logits.bin", np.float32).astype(np.float64).reshape(B, T, V)
            note("loss", rel(hm_logits, logits.detach().numpy()) / tol, "step 0 logits")
            if bf16:  # the rounding must be on: far from the unrounded model
                R = lambda x: x  # noqa: E731
                with torch.no_grad():
                    exact = forward(tokens[s]).numpy()
                R = RoundBF16.apply
                off = rel(hm_logits, exact)
                print(f"bf16 logits differ from the unrounded model's by {off:.3g} of the largest (f32 bound {tol32:.3g})")
                if off <= 10 * tol32:
                    print("MISMATCH: bf16-mixed logits are as close to the unrounded model as f32 would be")
                    ok = False
        if s == steps:
            break
        loss.backward()
        hm_g = split(load(case, f"grads_{s:02d}.bin", np.float32).astype(np.float64))
        for t in tensors:
            note("grad", rel(hm_g[t["name"]], P[t["name"]].grad.numpy()) / tol, f"step {s} gradient {t['name']}")
        # PyTorch's AdamW from hetmix's moments: decay on 2-D tensors, clip by global norm
        decay = [P[t["name"]] for t in tensors if len(t["shape"]) == 2]
        no_decay = [P[t["name"]] for t in tensors if len(t["shape"]) != 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": m["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=m["lr"], betas=(m["beta1"], m["beta2"]), eps=m["eps"])
        mom, vel = split(st[1]), split(st[2])
        params = decay + no_decay
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
        scale = min(1.0, m["grad_clip"] / norm)
        for t in tensors:
            p = P[t["name"]]
            p.grad.mul_(scale)
            opt.state[p] = {"step": torch.tensor(float(s)), "exp_avg": torch.tensor(mom[t["name"]], dtype=dt),
                            "exp_avg_sq": torch.tensor(vel[t["name"]], dtype=dt)}
        opt.step()
        after = state(s + 1)
        hm_p, hm_m, hm_v = split(after[0]), split(after[1]), split(after[2])
        p0 = split(st[0])
        for t in tensors:
            name, p = t["name"], P[t["name"]]
            g = p.grad.numpy()
            # hetmix scales its f32 gradient by its own clip scale (one more rounding)
            hg = hm_g[name] * float(hm_clips[s])
            d = np.abs(hg - g) + U * np.abs(hg)
            wd = m["weight_decay"] if len(t["shape"]) == 2 else 0.0
            bp, bm, bv = adamw_bounds(dict(m, weight_decay=wd), s + 1, p0[name], mom[name], vel[name], g, d)
            ts = opt.state[p]
            for kind, a, b, bound in (("param", hm_p[name], p.detach().numpy(), bp),
                                      ("moment", hm_m[name], ts["exp_avg"].numpy(), bm),
                                      ("moment", hm_v[name], ts["exp_avg_sq"].numpy(), bv)):
                diff = np.abs(a - b)
                frac = np.divide(diff, bound, out=np.where(diff > 0, np.inf, 0.0), where=bound > 0)
                i = int(np.argmax(frac))
                note(kind, float(frac.flat[i]), f"step {s + 1} {kind} {name}[{i}]: hetmix {a.flat[i]:.9g} "
                     f"torch {b.flat[i]:.9g} bound {bound.flat[i]:.3g}")
    print(f"{steps} AdamW steps; worst as a fraction of its bound: loss and logits {worst['loss']:.3g}, "
          f"gradients {worst['grad']:.3g}, params {worst['param']:.6f}, moments {worst['moment']:.3g}")
    print("oracle: " + ("MATCH" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
