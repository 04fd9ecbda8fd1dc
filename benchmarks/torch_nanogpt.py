"""The PyTorch reference for the performance comparison: a nanoGPT-style training
loop (Karpathy's nanoGPT model.py / train.py, re-typed here in its structure:
fused c_attn, F.scaled_dot_product_attention with is_causal, exact (erf) GELU,
LayerNorm, tied head, torch.optim.AdamW with decay on 2-D weights, grad clip 1.0,
random windows drawn from a numpy array each step, zero_grad(set_to_none=True)).
On a CPU nanoGPT runs eager (`--compile=False` in its README's CPU command) and in
float32 (autocast is off for device 'cpu'); `--compile` tries torch.compile too.

Not part of the package or its tests; needs torch (`pip install torch==2.13.0` in
its own environment). Prints one JSON object with the same fields as
`scratchformer bench --json`'s "train" rows, and torch's own 2048^2 matmul peak.

    python benchmarks/torch_nanogpt.py [--compile] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # the same two shapes as scratchformer.bench.SHAPES
    "nano-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "gpt-small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8),
}
VOCAB = 65


class CausalSelfAttention(nn.Module):
    def __init__(self, d, h, bias):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.n_head = h

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class Block(nn.Module):
    def __init__(self, d, h, bias):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.attn = CausalSelfAttention(d, h, bias)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.c_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, bias=True):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in nanoGPT
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def matmul_peak_gflops(n=2048, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(name, *, steps, warmup, compile_model, peak):
    s = SHAPES[name]
    torch.manual_seed(0)
    model = GPT(s["n_layer"], s["n_head"], s["n_embd"], s["block_size"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    fwd = torch.compile(model) if compile_model else model
    data = np.random.default_rng(0).integers(0, VOCAB, 200_000).astype(np.uint16)
    bsz, t = s["batch_size"], s["block_size"]

    def get_batch():
        ix = torch.randint(len(data) - t, (bsz,))
        x = torch.stack([torch.from_numpy(data[i:i + t].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + t].astype(np.int64)) for i in ix])
        return x, y

    def step():
        x, y = get_batch()
        loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # nanoGPT reads the loss on its logging steps; reading it every step costs ~nothing on CPU

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = [_timed(step) for _ in range(steps)]
    ms = statistics.median(times) * 1e3
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    tokens = bsz * t
    flops = 6.0 * n * tokens + 12.0 * s["n_layer"] * s["n_embd"] * t * tokens  # same formula as scratchformer.bench
    gflops = flops / (ms / 1e3) / 1e9
    return {"name": name, "ms_per_step": round(ms, 3), "tokens_per_s": round(tokens / ms * 1e3, 1),
            "model_flops_per_step": flops, "gflops": round(gflops, 2), "peak_fraction": round(gflops / peak, 4),
            "first_step_s": round(first_s, 3), "steps_timed": steps, "compile": compile_model}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (nanoGPT's CPU command does not)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--shapes", default="nano-cpu,gpt-small")
    a = ap.parse_args()
    peak = matmul_peak_gflops()
    rows = [bench(n, steps=a.steps if n == "nano-cpu" else max(5, a.steps // 4), warmup=5, compile_model=a.compile,
                  peak=peak) for n in a.shapes.split(",")]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "matmul_peak_gflops": round(peak, 1), "train": rows}))


if __name__ == "__main__":
    main()
