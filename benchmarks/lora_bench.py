"""Full fine-tuning against LoRA at one model shape: time per training step, XLA's
footprint of the compiled step (what `train --dry-run` prints as "needs ~X per device")
and the process's peak resident memory, each mode in a process of its own.

    PYTHONPATH=src python benchmarks/lora_bench.py [--shape smollm2-135m] [--batch 4] [--block 256]
        [--steps 5] [--modes full lora lora-merged] [--rank 8] [--targets q,v]

Modes: `full` (every weight trains, AdamW), `lora` (rank-R adapters beside the frozen
weights, as the training step runs them), `lora-merged` (the same adapters, but the
step differentiates the merged W + s A B instead: the alternative lora.py does not
take, measured to show why). The weights are random (a step's time and memory do not
depend on their values); the batch is random tokens. Prints one JSON line per mode.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M's config.json): Llama blocks, tied embeddings
    "smollm2-135m": {"model.n_layer": 30, "model.d_model": 576, "model.n_head": 9, "model.n_kv_head": 3,
                     "model.d_ff": 1536, "model.vocab_size": 49152, "model.activation": "swiglu",
                     "model.norm": "rmsnorm", "model.positions": "rope", "model.bias": False,
                     "model.fused_qkv": False, "model.tie_embeddings": True, "model.ln_eps": 1e-5,
                     "model.rope_theta": 100000.0},
    # GPT-2 small: 12 x 768, 12 heads, GPT-2's vocabulary
    "gpt2-124m": {"model.n_layer": 12, "model.d_model": 768, "model.n_head": 12, "model.d_ff": 3072,
                  "model.vocab_size": 50257},
}


def one(args) -> dict:
    import jax
    import numpy as np

    from scratchformer import lora
    from scratchformer.memory import program_bytes
    from scratchformer.runconfig import apply_overrides, make_config
    from scratchformer.train import init_state, make_train_step

    if args.mode == "lora-merged":  # differentiate W + s A B: every adapted matrix's I x O gradient is formed
        lora.beside = lambda base, adapters, lo, key=None: lora.merge(base, adapters, lo)
    over = {"model.block_size": args.block, "train.batch_size": args.batch, "model.products": "float32",
            "train.steps": 100, "optim.warmup_steps": 0}
    if args.mode != "full":
        over |= {"lora.rank": args.rank, "lora.targets": args.targets, "train.init_from": "random"}
    cfg = make_config("lm", "gpt2-finetune", over)
    cfg = apply_overrides(cfg, SHAPES[args.shape], allow_derived=True)
    state = jax.jit(lambda: init_state(cfg))()
    step = jax.jit(make_train_step(cfg), donate_argnums=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.model.vocab_size, (args.batch, args.block + 1)).astype(np.int32)
    batch = {"inputs": jax.numpy.asarray(tokens[:, :-1]), "targets": jax.numpy.asarray(tokens[:, 1:])}
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)  # the first call: warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    return {"mode": args.mode, "shape": args.shape, "tokens_per_step": args.batch * args.block,
            "parameters": count(state.params if state.base is None else state.base), "trained": count(state.params),
            "optimizer_state": count(state.opt_state), "step_s_median": round(float(np.median(times)), 3),
            "step_s_min": round(min(times), 3), "compile_s": round(compile_s, 1),
            "xla_step_bytes": program_bytes(compiled),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
            "loss": float(m["loss"]), "device": str(jax.devices()[0])}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m", choices=list(SHAPES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="q,v")
    p.add_argument("--modes", nargs="+", default=["full", "lora", "lora-merged"])
    p.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in this process
    args = p.parse_args()
    if args.mode:
        print(json.dumps(one(args)))
        return
    same = [f"--{k}={getattr(args, k)}" for k in ("shape", "batch", "block", "steps", "rank", "targets")]
    for mode in args.modes:
        r = subprocess.run([sys.executable, __file__, *same, "--mode", mode], capture_output=True, text=True)
        print(r.stdout.strip() if r.returncode == 0 else f"{mode}: failed\n{r.stderr}", flush=True)


if __name__ == "__main__":
    main()
