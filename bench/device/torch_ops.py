"""PyTorch CPU timings of the ops bench_device_ops times, on the same gpt-mini shapes.

Prints one line per op: name, forward ms, backward ms (median of --reps after a warm-up).
Backward is timed through autograd from a saved graph (retain_graph), which is what a
training step pays. Called by bench_device_ops; usable alone."""
import argparse
import math
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--B", type=int, default=8)
ap.add_argument("--reps", type=int, default=5)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
L, C, NH, V, T, B = 6, 384, 6, 256, 256, a.B
N = B * T


def med(fn):
    fn()
    ts = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def fwd_bwd(name, make_inputs, f):
    ins = make_inputs()
    fw = med(lambda: f(*ins))
    out = f(*ins)
    g = torch.randn_like(out)
    bw = med(lambda: torch.autograd.grad(out, [i for i in ins if i.requires_grad], g, retain_graph=True))
    print(f"{name} {fw:.4f} {bw:.4f}", flush=True)


def r(*shape, grad=True):
    return torch.randn(*shape, requires_grad=grad)


idx = torch.randint(0, V, (B, T))
pos = torch.arange(T)
fwd_bwd("encoder", lambda: (r(V, C), r(T, C)), lambda wte, wpe: F.embedding(idx, wte) + F.embedding(pos, wpe))
fwd_bwd("layernorm", lambda: (r(N, C), r(C), r(C)), lambda x, w, b: F.layer_norm(x, (C,), w, b))
for name, c, oc, bias in [("matmul_qkv", C, 3 * C, True), ("matmul_proj", C, C, True),
                          ("matmul_fc", C, 4 * C, True), ("matmul_fcproj", 4 * C, C, True),
                          ("matmul_head", C, V, False)]:
    fwd_bwd(name, lambda: (r(N, c), r(oc, c), r(oc) if bias else r(1, grad=False)),
            lambda x, w, b: F.linear(x, w, b if bias else None))
mask = torch.tril(torch.ones(T, T, dtype=torch.bool))


def attention(qkv):
    q, k, v = qkv.view(B, T, 3 * C).split(C, dim=2)
    q = q.view(B, T, NH, C // NH).transpose(1, 2)
    k = k.view(B, T, NH, C // NH).transpose(1, 2)
    v = v.view(B, T, NH, C // NH).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // NH))
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (att @ v).transpose(1, 2).contiguous().view(B, T, C)


fwd_bwd("attention", lambda: (r(B, T, 3 * C),), attention)
fwd_bwd("gelu", lambda: (r(N, 4 * C),), lambda x: F.gelu(x, approximate="tanh"))
fwd_bwd("residual", lambda: (r(N, C), r(N, C)), lambda x, y: x + y)
tgt = torch.randint(0, V, (N,))
fwd_bwd("crossentropy", lambda: (r(N, V),), lambda z: F.cross_entropy(z, tgt))
nparams = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
p = torch.nn.Parameter(torch.randn(nparams) * 0.02)
p.grad = torch.randn(nparams) * 0.01
opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
print(f"adamw {med(opt.step):.4f} 0", flush=True)
