"""The PyTorch reference for the performance comparison: a nanoGPT-style training
loop (Karpathy's nanoGPT model.py / train.py, re-typed here in its structure:
fused c_attn, F.scaled_dot_product_attention with is_causal, exact (erf) GELU,
LayerNorm, tied head, torch.optim.AdamW with decay on 2-D weights, grad clip 1.0,
random windows drawn from a numpy array each step, zero_grad(set_to_none=True)).
On a CPU nanoGPT runs eager (`--compile=False` in its README's CPU command) and in
float32 (autocast is off for device 'cpu'); `--compile` tries torch.compile too.

Not part of the package; needs torch (the `dev` extra installs it, as the tests'
oracle). Two modes.

Timing (the default): fixed shapes on random tokens; prints one JSON object with the
same fields as `scratchformer bench --json`'s "train" rows, and torch's own 2048^2
matmul peak.

    python benchmarks/torch_nanogpt.py [--compile] [--steps 40] [--shapes nano-cpu,gpt-small]

Training (--train): nanoGPT's own recipe on Tiny Shakespeare characters, split as its
data/shakespeare_char/prepare.py does, with its train.py loop (cosine schedule with
warmup, evaluations every eval_interval iterations and at 0). Prints `iter N: train X
val Y (T s)` at each evaluation and one JSON object at the end: per threshold the first
evaluation whose val loss is <= it ({iter, seconds} from the loop's start, or null),
the median seconds per iteration and per evaluation batch (with the whole loop projected
from them, for a run cut by --max-seconds), and the whole command's seconds (from the end
of the imports). `cpu` is the README's CPU command (its "~3 minutes ... loss of only 1.88");
`shakespeare_char` is config/train_shakespeare_char.py as is (the README's best val loss
1.4697, ~3 minutes on one A100); on a small CPU it needs --max-seconds.

    python benchmarks/torch_nanogpt.py --train ../shared/data/tinyshakespeare.txt \
        [--recipe cpu|shakespeare_char] [--thresholds 1.88 1.4697] [--max-seconds S] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

T_IMPORTED = time.perf_counter()  # the whole command's clock (--train) starts here

SHAPES = {  # the same two shapes as scratchformer.bench.SHAPES
    "nano-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "gpt-small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8),
}
VOCAB = 65

# nanoGPT's two Tiny Shakespeare recipes for --train, read from github.com/karpathy/nanoGPT at
# 3adf61e (README.md, train.py, config/train_shakespeare_char.py). train.py's defaults that the
# config leaves alone: bias=False, beta1=0.9, weight_decay=1e-1, grad_clip=1.0, decay_lr=True.
TRAIN_PY = {"bias": False, "beta1": 0.9, "weight_decay": 0.1, "grad_clip": 1.0}
SHAKESPEARE_CHAR = {  # config/train_shakespeare_char.py (gradient_accumulation_steps=1 there too)
    "eval_interval": 250, "eval_iters": 200, "log_interval": 10, "batch_size": 64, "block_size": 256,
    "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2, "learning_rate": 1e-3, "max_iters": 5000,
    "lr_decay_iters": 5000, "min_lr": 1e-4, "beta2": 0.99, "warmup_iters": 100}
CPU_COMMAND = {  # README: train.py config/train_shakespeare_char.py --device=cpu --compile=False ...
    "eval_iters": 20, "log_interval": 1, "block_size": 64, "batch_size": 12, "n_layer": 4, "n_head": 4,
    "n_embd": 128, "max_iters": 2000, "lr_decay_iters": 2000, "dropout": 0.0}
RECIPES = {"shakespeare_char": {**TRAIN_PY, **SHAKESPEARE_CHAR},
           "cpu": {**TRAIN_PY, **SHAKESPEARE_CHAR, **CPU_COMMAND}}


def _drop(x, p, training):
    # nanoGPT keeps its nn.Dropout modules at p=0, where torch's CPU dropout hands back its input:
    # skipping the call changes no number and keeps the timing mode's graph as it was
    return F.dropout(x, p, training) if p else x


class CausalSelfAttention(nn.Module):
    def __init__(self, d, h, bias, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.n_head, self.dropout = h, dropout

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return _drop(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d)), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, d, h, bias, dropout=0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.attn = CausalSelfAttention(d, h, bias, dropout)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.c_proj = nn.Linear(4 * d, d, bias=bias)
        self.dropout = dropout

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + _drop(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)))), self.dropout, self.training)


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, bias=True, dropout=0.0, vocab=VOCAB):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in nanoGPT
        self.dropout = dropout
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = _drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)), self.dropout, self.training)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_batch(data, block_size, batch_size):
    """nanoGPT's get_batch: random window starts from torch's global generator."""
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


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

    def step():
        x, y = get_batch(data, t, bsz)
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


def load_chars(path):
    """data/shakespeare_char/prepare.py: the sorted characters of the whole text are the
    vocabulary; the first 90% of the text trains, the rest validates."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    return ids[:n], ids[n:], len(stoi)


def get_lr(it, r):
    """train.py's get_lr: linear warmup (from (it+1)/(warmup+1) since nanoGPT's dc81cb3), cosine to min_lr."""
    if it < r["warmup_iters"]:
        return r["learning_rate"] * (it + 1) / (r["warmup_iters"] + 1)
    if it > r["lr_decay_iters"]:
        return r["min_lr"]
    ratio = (it - r["warmup_iters"]) / (r["lr_decay_iters"] - r["warmup_iters"])
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r["learning_rate"] - r["min_lr"])


def make_optimizer(model, r):
    """model.py's configure_optimizers: decay on >=2-D tensors; fused only on CUDA, so not here."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=r["learning_rate"], betas=(r["beta1"], r["beta2"]))


@torch.no_grad()
def estimate_loss(model, splits, r, deadline, times):
    """train.py's estimate_loss, in eval mode; None where --max-seconds ran out part way, since a
    shorter average is not the estimate nanoGPT would have printed. Appends each batch's seconds
    to times: a cut run still shows what its evaluations cost."""
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = []
        for _ in range(r["eval_iters"]):
            if time.perf_counter() > deadline:
                model.train()
                return None
            ts = time.perf_counter()
            losses.append(model(*get_batch(data, r["block_size"], r["batch_size"])).item())
            times.append(time.perf_counter() - ts)
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


def train_step(model, opt, batch, next_batch, it, r):
    """One train.py iteration; the next batch is drawn between forward and backward, as there."""
    for group in opt.param_groups:
        group["lr"] = get_lr(it, r)
    loss = model(*batch)
    batch = next_batch()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    if it % r["log_interval"] == 0:
        loss.item()  # nanoGPT reads the loss on its logging iterations (every one in the cpu recipe)
    return batch


def record(hits, thresholds, it, val, seconds):
    for th in thresholds:
        if hits[th] is None and val <= th:
            hits[th] = {"iter": it, "seconds": round(seconds, 3)}


def train(path, r, *, thresholds, max_seconds=None, seed=0):
    """nanoGPT's training loop, timed from just before its first batch (after data and model);
    stops after iteration max_iters (train.py runs max_iters + 1) or when max_seconds have passed.
    nanoGPT's checkpoint writes (at an evaluation that improved val) are left out: disk I/O, not
    training. The model's init draws the same distributions as nanoGPT's in another order."""
    train_ids, val_ids, vocab = load_chars(path)
    torch.manual_seed(seed)  # one global generator for init, batches and dropout, as train.py
    model = GPT(r["n_layer"], r["n_head"], r["n_embd"], r["block_size"], r["bias"], r["dropout"], vocab)
    opt = make_optimizer(model, r)
    next_batch = functools.partial(get_batch, train_ids, r["block_size"], r["batch_size"])
    hits, steps, evals, last, it = {th: None for th in thresholds}, [], [], None, 0
    t0 = time.perf_counter()
    deadline = t0 + max_seconds if max_seconds else math.inf
    batch = next_batch()
    while True:
        if it % r["eval_interval"] == 0:
            losses = estimate_loss(model, {"train": train_ids, "val": val_ids}, r, deadline, evals)
            if losses is None:
                print(f"iter {it}: evaluation cut by --max-seconds ({time.perf_counter() - t0:.1f} s)", flush=True)
                break
            now = time.perf_counter() - t0
            print(f"iter {it}: train {losses['train']:.4f} val {losses['val']:.4f} ({now:.1f} s)", flush=True)
            record(hits, thresholds, it, losses["val"], now)
            last = {"iter": it, "val": round(losses["val"], 4), "train": round(losses["train"], 4)}
        ts = time.perf_counter()
        batch = train_step(model, opt, batch, next_batch, it, r)
        steps.append(time.perf_counter() - ts)
        it += 1
        if it > r["max_iters"] or time.perf_counter() > deadline:
            break
    return {"loop_seconds": round(time.perf_counter() - t0, 3), "iters_done": it, "vocab_size": vocab,
            "stopped_by": "max_iters" if it > r["max_iters"] else "max_seconds",
            "thresholds": {str(th): hits[th] for th in thresholds}, "last_eval": last, **costs(steps, evals, r)}


def costs(steps, evals, r):
    """Median seconds per training iteration and per evaluation batch, and what the whole loop
    would take at those rates (max_iters + 1 iterations, an evaluation every eval_interval)."""
    it_s = statistics.median(steps) if steps else None
    ev_s = statistics.median(evals) if evals else None
    full = None
    if it_s is not None and ev_s is not None:
        n_evals = r["max_iters"] // r["eval_interval"] + 1
        full = (r["max_iters"] + 1) * it_s + n_evals * 2 * r["eval_iters"] * ev_s
    return {"median_s_per_iter": _round(it_s, 4), "median_s_per_eval_batch": _round(ev_s, 4),
            "eval_batches_done": len(evals), "projected_loop_seconds": _round(full, 1)}


def _round(x, digits):
    return None if x is None else round(x, digits)


def train_main(a):
    r = RECIPES[a.recipe]
    out = train(a.train, r, thresholds=a.thresholds, max_seconds=a.max_seconds, seed=a.seed)
    print(json.dumps({"mode": "train", "recipe": a.recipe, "settings": r, "seed": a.seed, "max_seconds": a.max_seconds,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, **out,
                      "whole_seconds": round(time.perf_counter() - T_IMPORTED, 3)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (nanoGPT's CPU command does not)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--shapes", default="nano-cpu,gpt-small")
    ap.add_argument("--train", metavar="TEXT", help="train nanoGPT's recipe on this text (tinyshakespeare.txt)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[1.88, 1.4697])
    ap.add_argument("--max-seconds", type=float, help="stop the training loop after this many seconds")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed (nanoGPT's train.py uses 1337)")
    a = ap.parse_args()
    if a.train:
        if a.compile:
            ap.error("--compile is for the timing mode; nanoGPT's CPU recipe runs eager")
        return train_main(a)
    peak = matmul_peak_gflops()
    rows = [bench(n, steps=a.steps if n == "nano-cpu" else max(5, a.steps // 4), warmup=5, compile_model=a.compile,
                  peak=peak) for n in a.shapes.split(",")]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "matmul_peak_gflops": round(peak, 1), "train": rows}))


if __name__ == "__main__":
    main()
