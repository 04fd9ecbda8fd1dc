"""Greedy sampling against Hugging Face transformers, float32 on this machine's CPU, at
GPT-2 small's shape (124M parameters) or SmolLM2-135M's (a Llama: 30 layers x 576,
grouped-query attention 9:3, 8,192 positions). Prints one JSON object.

Both models hold the same random weights (`--shape gpt2-124m`: scratchformer's from
`init_lm`, copied into a `GPT2LMHeadModel(GPT2Config())`; `--shape smollm2-135m`: a
random `LlamaForCausalLM` read in through `import llama`'s code), so they decode the
same tokens up to float rounding, and the JSON says whether they did. Each run decodes
`--new` tokens after a `--prompt`-token prompt with the KV cache: ours through
`decode.generate(temperature=0)` (compiled by a warm-up call first), theirs through
`model.generate(do_sample=False)` (a warm-up call too), alternating, with torch using
as many threads as this process has cores (or `--torch-threads`). tokens/s = new tokens
/ the whole call (the prompt's prefill included, for both). Ours has the decoding layout
of its weights made once before the calls (`decode.decoding_weights`, as transformers'
model is loaded once; `layout_s`), and is timed again converting them in every call
(`ours_layout_per_call`), and with a stop id that is never drawn (`ours_with_stop`: the
loops `sample` runs for a model with an EOS). A ratio is the median of the run-by-run
ratios, which holds when a shared machine's speed drifts between runs.

Beside them, the machine's weight-streaming floor: the bandwidth of a jitted sum over a
1 GiB float32 array, divided by the bytes a token reads (every weight once; the head's
table is the token table when tied), the rate no float32 decoder can pass.

`--memory` adds XLA's footprint of the compiled sampler (temperature 0.8) for 1,000, 10,000
and 20,000 new tokens (the last two past the block size, where the window slides). Needs torch and transformers; not part of the package or
its tests.

    PYTHONPATH=src python benchmarks/sample_bench.py [--shape gpt2-124m] [--runs 3] [--memory]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from scratchformer import llama, machine
from scratchformer.config import ModelConfig
from scratchformer.runconfig import apply_overrides, make_config
from scratchformer.decode import _generate, decoding_weights, generate
from scratchformer.memory import program_bytes
from scratchformer.models import init_lm

GPT2 = ModelConfig(n_layer=12, n_head=12, d_model=768, d_ff=3072, block_size=1024, vocab_size=50257,
                   positions="learned", tie_embeddings=True, bias=True, ln_eps=1e-5, dropout=0.0, products="float32")
# A stop id no token has: the sampler's loops then read whether the sample ended, as `sample`'s
# do with a model's EOS, and run to the end (`ours_with_stop`).
NEVER = -1
# HuggingFaceTB/SmolLM2-135M's config.json
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True)


def llama_models(folder):
    """(our model config, our params, transformers' model) of a random SmolLM2-135M saved
    in `folder` and read back as `import llama` reads it."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2)).eval()
    model.save_pretrained(folder)
    cfg = apply_overrides(make_config("lm", "gpt2-finetune"), llama.model_overrides(json.loads((Path(folder) / "config.json").read_text())),
                          allow_derived=True).model
    return cfg, jax.tree.map(jnp.asarray, llama.read_params(Path(folder), cfg)), model


def bandwidth_gbps(gib: int = 1, runs: int = 5) -> float:
    """Bytes per second of a jitted sum over a `gib` GiB float32 array, the best of `runs`."""
    x = jnp.ones((gib << 28,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = min(_seconds(lambda: total(x).block_until_ready()) for _ in range(runs))
    return x.nbytes / best / 1e9


def _seconds(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


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


def compiled_memory(params, cfg, n_new: int) -> dict:
    key = jax.random.PRNGKey(0)
    tokens = jax.ShapeDtypeStruct((1 + n_new,), jnp.int32)
    c = _generate.lower(params, tokens, key, cfg=cfg, n_prompt=1, n_new=n_new, temperature=0.8, top_k=0, top_p=1.0,
                        use_cache=True).compile()
    m = c.memory_analysis()
    return {"new_tokens": n_new, "temp_bytes": int(m.temp_size_in_bytes), "program_bytes": program_bytes(c)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["gpt2-124m", "smollm2-135m"], default="gpt2-124m")
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
    if a.shape == "gpt2-124m":
        cfg = GPT2
        params = init_lm(jax.random.PRNGKey(0), cfg)
    else:
        folder = tempfile.TemporaryDirectory()
        cfg, params, model = llama_models(folder.name)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    out.update(shape=a.shape, weight_bytes=weight_bytes, bandwidth_GBps=round(bandwidth_gbps(), 1))
    out["floor_tokens_per_s"] = round(out["bandwidth_GBps"] * 1e9 / weight_bytes, 1)
    if not a.memory_only:
        if a.shape == "gpt2-124m":
            model = hf_model(params)
        out["hf_attention"] = model.config._attn_implementation
        prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, a.prompt).astype(np.int32)
        ids = torch.from_numpy(prompt.astype(np.int64))[None]
        eos = model.config.eos_token_id

        start = time.perf_counter()
        layout = jax.block_until_ready(decoding_weights(params))  # once, as a model is loaded once
        out["layout_s"] = round(time.perf_counter() - start, 2)

        def ours(layout=layout, stop=None):
            return generate(params, cfg, prompt, a.new, temperature=0.0, use_cache=True, layout=layout,
                            stop=stop)[a.prompt:]

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
        assert (ours(None) == tok_ours).all()  # the layout made in the call: the same tokens
        assert (ours(stop=NEVER) == tok_ours).all()  # a stop id never drawn: the same tokens
        assert len(tok_ours) == len(tok_theirs) == a.new
        same = tok_ours == tok_theirs
        out["greedy_tokens_agree"] = int(same.sum())
        out["first_disagreement"] = None if same.all() else int(np.argmin(same))
        rates = {"ours": [], "ours_layout_per_call": [], "ours_with_stop": [], "theirs": []}
        fs = (("ours", ours), ("ours_layout_per_call", lambda: ours(None)), ("ours_with_stop", lambda: ours(stop=NEVER)),
              ("theirs", theirs))
        for r in range(a.runs):
            for name, f in (fs if r % 2 == 0 else fs[::-1]):
                start = time.perf_counter()
                f()
                rates[name].append(round(a.new / (time.perf_counter() - start), 2))
        med = {k: statistics.median(v) for k, v in rates.items()}
        out.update({"prompt_tokens": a.prompt, "new_tokens": a.new, "runs": a.runs,
                    "ours_tokens_per_s": rates["ours"], "theirs_tokens_per_s": rates["theirs"],
                    "ours_layout_per_call_tokens_per_s": rates["ours_layout_per_call"],
                    "ours_with_stop_tokens_per_s": rates["ours_with_stop"],
                    "ours_median": med["ours"], "ours_layout_per_call_median": med["ours_layout_per_call"],
                    "ours_with_stop_median": med["ours_with_stop"],
                    "ratio_with_stop_over_without": round(statistics.median(
                        s / o for s, o in zip(rates["ours_with_stop"], rates["ours"])), 3),
                    "theirs_median": med["theirs"],
                    "ratio_ours_over_theirs": round(statistics.median(
                        o / t for o, t in zip(rates["ours"], rates["theirs"])), 3),
                    "ours_over_floor": round(med["ours"] / out["floor_tokens_per_s"], 3)})
    if a.memory or a.memory_only:
        out["compiled_memory_t0.8"] = [compiled_memory(params, cfg, n) for n in (1000, 10000, 20000)]
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
