"""Greedy sampling at GPT-2 small's shape (124M parameters), scratchformer against Hugging
Face transformers, float32 on this machine's CPU. Prints one JSON object.

Both models hold the same random weights: scratchformer's from `init_lm`, copied into a
`GPT2LMHeadModel(GPT2Config())` (12 layers, 12 heads, d_model 768, d_ff 3072, 1,024
learned positions, a vocabulary of 50,257, tied head, biases, LayerNorm eps 1e-5, GELU
tanh), so they decode the same tokens up to float rounding, and the JSON says whether
they did. Each run decodes `--new` tokens after a `--prompt`-token prompt with the KV
cache: ours through `decode.generate(temperature=0)` (compiled by a warm-up call first),
theirs through `model.generate(do_sample=False)` (a warm-up call too), alternating, with
torch using as many threads as this process has cores (or `--torch-threads`). tokens/s = new tokens / the
whole call (the prompt's prefill included, for both).

`--memory` adds XLA's footprint of the compiled sampler (temperature 0.8) for 1,000, 10,000
and 20,000 new tokens (the last two past the block size, where the window slides). Needs torch and transformers; not part of the package or its tests.

    PYTHONPATH=src python benchmarks/gpt2_sample_bench.py [--runs 3] [--memory]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from scratchformer import machine
from scratchformer.config import ModelConfig
from scratchformer.decode import _generate, generate
from scratchformer.memory import program_bytes
from scratchformer.models import init_lm

CFG = ModelConfig(n_layer=12, n_head=12, d_model=768, d_ff=3072, block_size=1024, vocab_size=50257,
                  positions="learned", tie_embeddings=True, bias=True, ln_eps=1e-5, dropout=0.0)


def hf_model(params):
    """transformers' GPT-2 small holding `params` (our tree; both store linear weights
    as in x out, and the fused qkv as q | k | v along the output)."""
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    t = lambda a: torch.from_numpy(np.array(a))
    sd = {"transformer.wte.weight": t(params["embed"]["tokens"]), "transformer.wpe.weight": t(params["embed"]["positions"]),
          "transformer.ln_f.weight": t(params["ln_f"]["scale"]), "transformer.ln_f.bias": t(params["ln_f"]["bias"])}
    for i, b in enumerate(params["blocks"]):
        h = f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            sd[h + theirs + ".weight"], sd[h + theirs + ".bias"] = t(b[ours]["scale"]), t(b[ours]["bias"])
        for ours, theirs in ((("attn", "qkv"), "attn.c_attn"), (("attn", "out"), "attn.c_proj"),
                             (("mlp", "fc"), "mlp.c_fc"), (("mlp", "proj"), "mlp.c_proj")):
            p = b[ours[0]][ours[1]]
            sd[h + theirs + ".weight"], sd[h + theirs + ".bias"] = t(p["w"]), t(p["b"])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    left = [k for k in missing if k != "lm_head.weight"]  # tied to wte
    if left or unexpected:
        raise RuntimeError(f"weights not matched: missing {left}, unexpected {unexpected}")
    model.tie_weights()
    return model


def compiled_memory(params, n_new: int) -> dict:
    key = jax.random.PRNGKey(0)
    tokens = jax.ShapeDtypeStruct((1 + n_new,), jnp.int32)
    c = _generate.lower(params, tokens, key, cfg=CFG, n_prompt=1, n_new=n_new, temperature=0.8, top_k=0, top_p=1.0,
                        use_cache=True).compile()
    m = c.memory_analysis()
    return {"new_tokens": n_new, "temp_bytes": int(m.temp_size_in_bytes), "program_bytes": program_bytes(c)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--torch-threads", type=int, default=0, help="default: this process's cores")
    ap.add_argument("--memory", action="store_true", help="also XLA's footprint for 1,000 to 20,000 tokens")
    ap.add_argument("--memory-only", action="store_true", help="only that footprint")
    a = ap.parse_args()
    cores = machine.cores()
    torch.set_num_threads(a.torch_threads or cores)
    out = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine.describe(),
           "cores": cores, "load_average_before": os.getloadavg(), "jax": jax.__version__,
           "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}
    params = init_lm(jax.random.PRNGKey(0), CFG)
    if not a.memory_only:
        model = hf_model(params)
        out["hf_attention"] = model.config._attn_implementation
        prompt = np.random.default_rng(0).integers(0, CFG.vocab_size, a.prompt).astype(np.int32)
        ids = torch.from_numpy(prompt.astype(np.int64))[None]
        eos = model.config.eos_token_id

        def ours():
            return generate(params, CFG, prompt, a.new, temperature=0.0, use_cache=True)[a.prompt:]

        def theirs():
            with torch.inference_mode():
                y = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new,
                                   min_new_tokens=a.new, do_sample=False, use_cache=True, eos_token_id=eos,
                                   pad_token_id=eos)
            return y[0, a.prompt:].numpy()

        start = time.perf_counter()
        tok_ours = ours()
        out["ours_first_call_s"] = round(time.perf_counter() - start, 2)  # tracing and compiling included
        tok_theirs = theirs()
        assert len(tok_ours) == len(tok_theirs) == a.new
        same = tok_ours == tok_theirs
        out["greedy_tokens_agree"] = int(same.sum())
        out["first_disagreement"] = None if same.all() else int(np.argmin(same))
        rates = {"ours": [], "theirs": []}
        for r in range(a.runs):
            for name, f in ((("ours", ours), ("theirs", theirs)) if r % 2 == 0 else (("theirs", theirs), ("ours", ours))):
                start = time.perf_counter()
                f()
                rates[name].append(round(a.new / (time.perf_counter() - start), 2))
        med = {k: statistics.median(v) for k, v in rates.items()}
        out.update({"prompt_tokens": a.prompt, "new_tokens": a.new, "runs": a.runs,
                    "ours_tokens_per_s": rates["ours"], "theirs_tokens_per_s": rates["theirs"],
                    "ours_median": med["ours"], "theirs_median": med["theirs"],
                    "ratio_ours_over_theirs": round(med["ours"] / med["theirs"], 3)})
    if a.memory or a.memory_only:
        out["compiled_memory_t0.8"] = [compiled_memory(params, n) for n in (1000, 10000, 20000)]
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
