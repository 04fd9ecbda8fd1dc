"""Llama-family models as Hugging Face saves them, in and out: `import llama DIR` makes a
run folder of a LlamaForCausalLM, Qwen2ForCausalLM or MistralForCausalLM folder
(config.json, model.safetensors or its shards, tokenizer.json), and `export` writes such
a run back as a LlamaForCausalLM folder (Qwen2ForCausalLM where it has q/k/v biases).

The three are our decoder-only LM with particular settings: RMSNorm, rotary positions
(rotate-half pairs), a SwiGLU MLP, grouped-query attention, no biases (Qwen2: on queries,
keys and values): importing is renaming, every choice a config value (`model_overrides`).
Their nn.Linear layers store weights (out, in) and compute x W^T: each is transposed to
ours, (in, out). A setting our model does not compute (another rope scaling, a sliding
window, biases elsewhere, another activation) is refused, never approximated.

Weights are converted a tensor at a time and written as they are (checkpoint.py): an
import holds the float32 model once, plus one tensor in flight.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from . import checkpoint as ckpt
from .data.hf_tokenizer import HFTokenizer
from .errors import ConfigError, DataError, UsageError
from .files import atomic_folder
from .gpt2 import float_setting, get_path, int_setting, save_weights_run, set_path
from .models import init_lm
from .runconfig import apply_overrides, make_config
from .tasks.lm import FINETUNE_PRESET, LMTask

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
WEIGHTS_INDEX = "model.safetensors.index.json"  # a checkpoint saved in shards
FLOATS = tuple(ckpt.DTYPES[n] for n in ("F32", "BF16", "F16"))
ROPE_TYPES = ("default", "llama3")  # none / default: plain rotary; llama3: Llama 3.1's long-context scaling
LLAMA3_KEYS = {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
               "high_freq_factor": "rope_high_freq_factor", "original_max_position_embeddings": "rope_original_positions"}
# config.json keys that do not change what the model computes: tokens' roles, generation
# and training defaults, tensor-parallel bookkeeping (transformers 5 ignores pretraining_tp;
# 4 splits the same products into slices), leftovers of the tools that wrote the file.
IGNORED = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "pretraining_tp", "_name_or_path",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
    "tokenizer_class", "is_llama_config", "max_window_layers", "_attn_implementation_autoset",
}
KNOWN = IGNORED | {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "attention_dropout", "attention_bias", "mlp_bias", "rope_theta", "rope_scaling",
    "rope_parameters", "rope_interleaved", "sliding_window", "use_sliding_window", "layer_types", "use_mrope",
}
# A run exports as a Llama only with these choices (the rest map to config.json).
LLAMA_MODEL = {"norm": "rmsnorm", "positions": "rope", "activation": "swiglu", "bias": False, "qk_norm": False,
               "logit_softcap": 0.0, "fused_qkv": False, "value_embed": False, "unet_skips": False, "attn_gate": False,
               "bigram_embed": False}


# ---------------------------------------------------------------- config.json <-> ModelConfig
def model_overrides(hf: dict, source="config.json") -> dict:
    """Our model.* settings for the config.json of a Llama, Qwen2 or Mistral (transformers
    4's layout, rope_theta and rope_scaling at the top, or 5's, under rope_parameters); a
    ConfigError naming every option that is unknown or has a value our model does not compute."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise ConfigError(f"{source}: model_type={kind!r} is not one this imports ("
                          + ", ".join(f"{k!r}: {v}" for k, v in ARCHITECTURES.items()) + ")")
    unknown = sorted(set(hf) - KNOWN)
    if unknown:
        raise ConfigError(f"{source} has option(s) this importer does not know: {', '.join(unknown)}")
    bad = []
    if hf.get("hidden_act", "silu") != "silu":
        bad.append(f"hidden_act={hf['hidden_act']!r} (only 'silu': SwiGLU)")
    for key, only in (("mlp_bias", False), ("rope_interleaved", False), ("use_mrope", False),
                      ("use_sliding_window", False), ("attention_dropout", 0.0)):
        if hf.get(key, only) != only:
            bad.append(f"{key}={hf[key]!r} (only {json.dumps(only)})")
    if hf.get("attention_bias", False) is not False:  # Llama's: on o_proj too, which Qwen2's pattern lacks
        bad.append(f"attention_bias={hf['attention_bias']!r} (only false: biases on q, k and v alone are "
                   "Qwen2's pattern, on the output projection too are not computed)")
    if kind == "mistral" and hf.get("sliding_window") is not None:
        bad.append(f"sliding_window={hf['sliding_window']!r} (only null: attention over the whole context)")
    layers = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layers):
        bad.append(f"layer_types with {sorted(set(layers) - {'full_attention'})} (only 'full_attention')")
    rope, rope_bad = _rope(hf, source)
    bad += rope_bad
    if bad:
        raise ConfigError(f"{source} has unsupported option(s): {'; '.join(bad)}")
    d, heads = int_setting(hf, "hidden_size", source), int_setting(hf, "num_attention_heads", source)
    kv = hf.get("num_key_value_heads")
    kv = heads if kv is None else int_setting(hf, "num_key_value_heads", source)
    head_dim = hf.get("head_dim")
    head_dim = 0 if head_dim is None else int_setting(hf, "head_dim", source)
    if kv <= 0 or heads % kv:
        raise ConfigError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    return {"model.n_layer": int_setting(hf, "num_hidden_layers", source), "model.n_head": heads,
            "model.n_kv_head": 0 if kv == heads else kv,
            "model.head_dim": 0 if head_dim in (0, d // heads) and d % heads == 0 else head_dim,
            "model.d_model": d, "model.d_ff": int_setting(hf, "intermediate_size", source),
            "model.block_size": int_setting(hf, "max_position_embeddings", source),
            "model.vocab_size": int_setting(hf, "vocab_size", source),
            "model.ln_eps": float_setting(hf, "rms_norm_eps", source, 1e-6),
            "model.tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "model.norm": "rmsnorm", "model.positions": "rope", "model.activation": "swiglu", "model.bias": False,
            "model.qkv_bias": kind == "qwen2", "model.fused_qkv": False, "model.dropout": 0.0, **rope,
            "model.products": "float32"}  # as transformers computes: sampled and scored number for number


def _rope(hf: dict, source) -> tuple[dict, list[str]]:
    """(our model.rope_* settings, what is unsupported) of either layout: transformers 5's
    rope_parameters, or 4's rope_theta and rope_scaling (whose kind is rope_type or type)."""
    if isinstance(hf.get("rope_parameters"), dict):
        params = dict(hf["rope_parameters"])
    elif hf.get("rope_parameters") is None:
        scaling = hf.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            return {}, [f"rope_scaling={scaling!r} (a JSON object or null)"]
        params = {**(scaling or {}), "rope_theta": hf.get("rope_theta", 10000.0)}
    else:
        return {}, [f"rope_parameters={hf['rope_parameters']!r} (a JSON object)"]
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    out = {"model.rope_theta": float_setting(params, "rope_theta", source, 10000.0)}
    params.pop("rope_theta", None)
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        return out, [f"partial_rotary_factor={params['partial_rotary_factor']!r} (only 1.0: every channel rotated)"]
    params.pop("partial_rotary_factor", None)
    if kind not in ROPE_TYPES:
        return out, [f"rope_type={kind!r} (accepted: none/default, llama3)"]
    expected = set(LLAMA3_KEYS) if kind == "llama3" else set()
    if set(params) != expected:
        missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
        return out, [f"rope scaling {kind!r} with " + ", ".join(
            [f"no {k}" for k in missing] + [f"{k}={params[k]!r}" for k in extra])
            + (f" (llama3 takes {', '.join(LLAMA3_KEYS)})" if kind == "llama3" else " (default takes no settings)")]
    out["model.rope_scaling"] = "" if kind == "default" else "llama3"
    for key, ours in LLAMA3_KEYS.items() if kind == "llama3" else ():
        out[f"model.{ours}"] = (int_setting if key.startswith("original") else float_setting)(params, key, source, None)
    return out, []


def hf_config(m, tok) -> dict:
    """The config.json of a LlamaForCausalLM (Qwen2ForCausalLM where q/k/v have biases)
    computing what model config `m` does, in transformers 4's layout, which 5 reads too."""
    unlike = [f"model.{k}={getattr(m, k)!r}" for k, v in LLAMA_MODEL.items() if getattr(m, k) != v]
    if unlike:
        raise UsageError(f"the run's {', '.join(unlike)} has no Llama counterpart; export takes runs with "
                         + ", ".join(f"model.{k}={v!r}" for k, v in LLAMA_MODEL.items()))
    kind = "qwen2" if m.qkv_bias else "llama"
    out = {"architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": m.vocab_size,
           "hidden_size": m.d_model, "intermediate_size": m.d_ff, "num_hidden_layers": m.n_layer,
           "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads,
           "head_dim": m.head_width, "hidden_act": "silu", "max_position_embeddings": m.block_size,
           "rms_norm_eps": m.ln_eps, "tie_word_embeddings": m.tie_embeddings, "attention_dropout": 0.0,
           "rope_theta": m.rope_theta, "rope_scaling": None, "torch_dtype": "float32",
           "bos_token_id": getattr(tok, "bos_id", None), "eos_token_id": getattr(tok, "eos_id", None)}
    if m.rope_scaling == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", **{k: getattr(m, ours) for k, ours in LLAMA3_KEYS.items()}}
    if kind == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.n_layer)
    return out


# ---------------------------------------------------------------- weights <-> params
def _hf_names(m) -> dict[str, tuple]:
    """Hugging Face's name of every weight (without the `model.` prefix of the decoder)
    -> its path in our params tree."""
    names = {"embed_tokens.weight": ("embed", "tokens"), "norm.weight": ("ln_f", "scale")}
    ours = {"input_layernorm.weight": ("ln1", "scale"), "post_attention_layernorm.weight": ("ln2", "scale"),
            "self_attn.o_proj.weight": ("attn", "out", "w")}
    for n in "qkv":
        ours[f"self_attn.{n}_proj.weight"] = ("attn", n, "w")
        if m.qkv_bias:
            ours[f"self_attn.{n}_proj.bias"] = ("attn", n, "b")
    for n in ("gate", "up", "down"):
        ours[f"mlp.{n}_proj.weight"] = ("mlp", n, "w")
    for i in range(m.n_layer):
        for hf, path in ours.items():
            names[f"layers.{i}.{hf}"] = ("blocks", i, *path)
    if not m.tie_embeddings:
        names["lm_head.weight"] = ("head", "w")
    return names


def _transposed(hf_name: str) -> bool:
    """nn.Linear's weights, (out, in): ours are (in, out)."""
    return hf_name.endswith("_proj.weight") or hf_name == "lm_head.weight"


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names."""
    index = folder / WEIGHTS_INDEX
    if (folder / "model.safetensors").is_file() or not index.is_file():
        return [folder / "model.safetensors"]
    try:
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(f"{index} is not a safetensors index (a JSON object with a weight_map)") from None


def _open(path: Path) -> ckpt.SafetensorsFile:
    try:
        return ckpt.SafetensorsFile(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable safetensors file: {e}") from None


def read_params(folder: Path, m) -> dict:
    """Our params tree (float32 numpy) for model config `m` from a folder's safetensors,
    read a tensor at a time; every name, shape and dtype is checked against what `m`
    needs (via the template of init_lm) before any tensor is read."""
    files = weight_files(folder)
    where = {}  # Hugging Face's name without `model.` -> (file, name there, dtype, shape)
    for f in files:
        with _open(f) as st:
            for name, (dtype, shape) in st.entries.items():
                where[name.removeprefix("model.")] = (f, name, dtype, shape)
    template = jax.eval_shape(lambda: init_lm(jax.random.PRNGKey(0), m))
    names = _hf_names(m)
    buffers = {k for k in where if k.endswith(".rotary_emb.inv_freq")}  # saved by old versions: not weights
    tied_head = m.tie_embeddings and "lm_head.weight" in where
    source = files[0].name if len(files) == 1 else f"{folder.name}/{WEIGHTS_INDEX}"
    missing = sorted(set(names) - set(where))
    extra = sorted(set(where) - set(names) - buffers - ({"lm_head.weight"} if tied_head else set()))
    if "lm_head.weight" in missing:
        raise DataError(f"{source} has no lm_head.weight, and config.json says tie_word_embeddings=false")
    if missing or extra:
        raise DataError(f"{source} does not hold the weights its config.json describes: missing {missing[:3]}, "
                        f"unexpected {extra[:3]}")
    for hf, path in names.items():
        _, _, dtype, shape = where[hf]
        want = get_path(template, path).shape
        if (shape[::-1] if _transposed(hf) else shape) != want:
            raise DataError(f"{source}: {hf} has shape {shape}, its config.json needs "
                            f"{want[::-1] if _transposed(hf) else want}")
        if dtype not in FLOATS:
            raise DataError(f"{source}: {hf} holds {dtype}, not float32, bfloat16 or float16 weights")
    params = jax.tree.map(lambda _: None, template)
    for f in files:
        with _open(f) as st:
            for hf, path in names.items():
                if where[hf][0] == f:
                    a = st[where[hf][1]]
                    set_path(params, path, np.ascontiguousarray(a.T if _transposed(hf) else a, dtype=np.float32))
                    del a  # one copy, converted and transposed: the file's tensor goes before the next is read
    if tied_head:  # transformers would use the token table in its place, silently
        f, name, _, _ = where["lm_head.weight"]
        with _open(f) as st:
            same = np.array_equal(st[name].astype(np.float32), params["embed"]["tokens"])
        if not same:
            raise DataError(f"{folder}: config.json says tie_word_embeddings=true, but lm_head.weight differs from "
                            "embed_tokens.weight (set tie_word_embeddings to false to import both)")
    return params


def hf_tensors(params, m) -> dict[str, np.ndarray]:
    """The tensors of our params under Hugging Face's names, transposed where nn.Linear
    stores (out, in): views, copied one at a time as they are written."""
    out = {}
    for hf, path in _hf_names(m).items():
        a = np.asarray(get_path(params, path), np.float32)
        out[hf if hf == "lm_head.weight" else "model." + hf] = a.T if _transposed(hf) else a
    return out


# ---------------------------------------------------------------- the two commands
def import_llama(folder, out) -> dict:
    """Write run folder `out` (config.json, tokenizer.json, checkpoints/best.safetensors
    holding the weights) from a Hugging Face Llama, Qwen2 or Mistral folder. Returns the
    run's config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (expected a Hugging Face model folder: config.json, "
                        "model.safetensors or its shards, tokenizer.json)")
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder} has no config.json (a Hugging Face model folder holds config.json, "
                        "model.safetensors or its shards, tokenizer.json)")
    if not (folder / "model.safetensors").is_file() and not (folder / WEIGHTS_INDEX).is_file():
        raise DataError(f"{folder} has no model.safetensors or {WEIGHTS_INDEX} (a model saved with torch's pickle "
                        "format only must be saved again with safe_serialization)")
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{folder / 'config.json'} is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{folder / 'config.json'} holds {type(hf).__name__}, not a JSON object")
    overrides = model_overrides(hf, folder / "config.json")
    tok = HFTokenizer.from_folder(folder, {k: hf.get(k) for k in ("bos_token_id", "eos_token_id")},
                                  vocab_size=overrides["model.vocab_size"])
    # The fine-tuning preset's training settings: what `train --config RUN` would take.
    cfg = apply_overrides(make_config("lm", FINETUNE_PRESET), overrides, allow_derived=True)
    task = LMTask(cfg, tok)
    params = read_params(folder, task.cfg.model)
    save_weights_run(out, task, params, {"imported_from": {"path": str(folder.resolve()),
                                                           "format": hf["model_type"]}})
    return task.cfg


def export_llama(task, params, out) -> tuple[Path, str]:
    """Write a Hugging Face folder of a Llama-shaped lm run (`task`, `params`): config.json,
    model.safetensors, and its tokenizer: a model's own (tokenizer.json and
    tokenizer_config.json), a byte-level BPE's tokenizer.json, or a character run's
    char_tokenizer.json (no tokenizer transformers reads). Returns (folder, class name)."""
    m, tok = task.cfg.model, task.tokenizer
    config = hf_config(m, tok)
    if tok.kind == "hf":
        files = tok.hf_files()
    elif tok.kind == "bpe":
        files = {"tokenizer.json": tok.to_json()}
    else:
        files = {"char_tokenizer.json": tok.to_json()}
    with atomic_folder(Path(out)) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        ckpt.write_safetensors(tmp / "model.safetensors", hf_tensors(params, m), {"format": "pt"})
        for name, text in files.items():
            (tmp / name).write_text(text)
    return Path(out), config["architectures"][0]
