#!/usr/bin/env python3
"""PyTorch oracle for hetmix's GPT-2: rebuilds the model from the weights and batches test_oracle
wrote, and checks hetmix's loss, logits and every gradient, then the losses of 10 AdamW steps.

usage: torch_oracle.py CASE_DIR     (exit 0: match, 1: mismatch, 77: PyTorch is not installed)
Comparisons are per tensor: max|hetmix - torch| / max|torch| <= 1e-4 (relative to the tensor's
scale, since elementwise ratios of near-zero gradients are meaningless). Torch runs in float64
from hetmix's float32 weights, so it is the more exact of the two."""
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

TOL = 1e-4


def load(case, name, dtype, shape=None):
    a = np.fromfile(os.path.join(case, name), dtype=dtype)
    return a.reshape(shape) if shape is not None else a


def main():
    case = sys.argv[1]
    m = json.load(open(os.path.join(case, "case.json")))
    L, C, NH, V, Tmax = m["L"], m["C"], m["NH"], m["V"], m["T"]
    B, T, steps = m["B"], m["seq_len"], m["steps"]
    torch.manual_seed(0)
    torch.set_num_threads(2)
    dt = torch.float64
    flat = load(case, "params.bin", np.float32)
    P = {}
    for t in m["tensors"]:
        P[t["name"]] = torch.tensor(flat[t["offset"]:t["offset"] + t["numel"]].astype(np.float64),
                                    dtype=dt).reshape(t["shape"]).requires_grad_(True)
    tokens = torch.tensor(load(case, "tokens.bin", np.int32, (steps + 1, B, T)).astype(np.int64))
    targets = torch.tensor(load(case, "targets.bin", np.int32, (steps + 1, B, T)).astype(np.int64))
    hs = C // NH
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))

    def forward(inp):
        x = P["wte"][inp] + P["wpe"][:T]
        for i in range(L):
            h = f"h{i}."
            y = F.layer_norm(x, (C,), P[h + "ln1.w"], P[h + "ln1.b"], eps=1e-5)
            qkv = y @ P[h + "attn.qkv.w"].T + P[h + "attn.qkv.b"]
            q, k, v = qkv.split(C, dim=2)
            q = q.view(B, T, NH, hs).transpose(1, 2)
            k = k.view(B, T, NH, hs).transpose(1, 2)
            v = v.view(B, T, NH, hs).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
            x = x + y @ P[h + "attn.proj.w"].T + P[h + "attn.proj.b"]
            y = F.layer_norm(x, (C,), P[h + "ln2.w"], P[h + "ln2.b"], eps=1e-5)
            y = F.gelu(y @ P[h + "mlp.fc.w"].T + P[h + "mlp.fc.b"], approximate="tanh")
            x = x + y @ P[h + "mlp.proj.w"].T + P[h + "mlp.proj.b"]
        x = F.layer_norm(x, (C,), P["lnf.w"], P["lnf.b"], eps=1e-5)
        return x @ P["wte"].T  # tied embedding

    def rel(a, b):
        return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))

    ok = True
    # step 0: loss, logits, every gradient
    logits = forward(tokens[0])
    loss = F.cross_entropy(logits.reshape(-1, V), targets[0].reshape(-1))
    loss.backward()
    hm_losses = load(case, "losses.bin", np.float32)
    hm_logits = torch.tensor(load(case, "logits.bin", np.float32).astype(np.float64)).reshape(B, T, V)
    hm_grads = load(case, "grads.bin", np.float32)
    r = abs(hm_losses[0] - loss.item()) / abs(loss.item())
    print(f"loss      hetmix {hm_losses[0]:.7f}  torch {loss.item():.7f}  rel {r:.2e}")
    ok &= r <= TOL
    r = rel(hm_logits, logits.detach())
    print(f"logits    max rel {r:.2e}")
    ok &= r <= TOL
    worst = (0.0, "")
    for t in m["tensors"]:
        g = torch.tensor(hm_grads[t["offset"]:t["offset"] + t["numel"]].astype(np.float64)).reshape(t["shape"])
        r = rel(g, P[t["name"]].grad)
        if r > worst[0]:
            worst = (r, t["name"])
        if r > TOL:
            print(f"gradient  {t['name']}: max rel {r:.2e} > {TOL}")
            ok = False
    print(f"gradients {len(m['tensors'])} tensors, worst max rel {worst[0]:.2e} ({worst[1]})")

    # AdamW steps: same hyperparameters, decay on 2-D tensors, clip by global norm
    decay = [P[t["name"]] for t in m["tensors"] if len(t["shape"]) == 2]
    no_decay = [P[t["name"]] for t in m["tensors"] if len(t["shape"]) != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": m["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=m["lr"], betas=(m["beta1"], m["beta2"]), eps=m["eps"])
    params = decay + no_decay
    losses = []
    for s in range(steps):
        opt.zero_grad(set_to_none=False)
        logits = forward(tokens[s])
        loss = F.cross_entropy(logits.reshape(-1, V), targets[s].reshape(-1))
        loss.backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
        scale = min(1.0, m["grad_clip"] / float(norm))
        for p in params:
            p.grad.mul_(scale)
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        logits = forward(tokens[steps])
        losses.append(F.cross_entropy(logits.reshape(-1, V), targets[steps].reshape(-1)).item())
    print("AdamW step  hetmix loss   torch loss    rel")
    for s, (a, b) in enumerate(zip(hm_losses[1:], losses[1:])):
        r = abs(a - b) / abs(b)
        print(f"{s + 1:10d}  {a:.7f}   {b:.7f}   {r:.2e}")
        ok &= r <= TOL
    print("oracle: " + ("MATCH" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
