#!/usr/bin/env python3
"""The PyTorch peer of bench_model_train: the same GPT-2 (pre-LN, GELU-tanh, tied embedding),
fp32, AdamW (decay on 2-D tensors), global-norm clip 1.0, on CPU with a fixed thread count, or
on a GPU (DEVICE cuda: attention through F.scaled_dot_product_attention, PyTorch's fastest eager
path; TensorFloat-32 matmuls unless HETMIX_CUDA_TF32=0, as hetmix's cuda backend).
Prints one line: `torch tokens_per_s=<x> step_ms=<y> peak_rss_mib=<z> version=<v>` (on a GPU
also peak_gpu_mib, torch.cuda.max_memory_allocated).

usage: torch_train.py L C NH V T B STEPS WARMUP THREADS [DEVICE]"""
import os
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        if x.is_cuda:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.proj(y)
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, C, NH, V, T):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.lnf = nn.LayerNorm(C)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.lnf(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    L, C, NH, V, T, B, steps, warmup, threads = map(int, sys.argv[1:10])
    dev = sys.argv[10] if len(sys.argv) > 10 else "cpu"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if dev != "cpu":
        tf32 = os.environ.get("HETMIX_CUDA_TF32", "1") != "0"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    model = GPT(L, C, NH, V, T).to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    idx = torch.randint(0, V, (B, T)).to(dev)
    tgt = torch.randint(0, V, (B, T)).to(dev)
    sync = torch.cuda.synchronize if dev != "cpu" else (lambda: None)
    t0 = None
    for s in range(warmup + steps):
        if s == warmup:
            sync()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    sync()
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = f" peak_gpu_mib={torch.cuda.max_memory_allocated() / 1048576.0:.1f}" if dev != "cpu" else ""
    print(f"torch tokens_per_s={B * T * steps / dt:.1f} step_ms={1000 * dt / steps:.1f} "
          f"peak_rss_mib={rss:.1f}{gpu} version={torch.__version__} loss={loss.item():.4f}")


if __name__ == "__main__":
    main()
