"""GPT-2 as Hugging Face saves it, in and out: `import gpt2 DIR` makes a run folder of a
`GPT2LMHeadModel` folder (config.json, model.safetensors, vocab.json, merges.txt), and
`export` writes a run back as such a folder.

GPT-2 is our decoder-only LM with particular settings, so importing is renaming: every
architectural choice is a config value (`model_overrides`), none is a case in models.py.
Its Conv1D layers store weights (in, out) and compute x @ W + b, as our `linear` does,
and its fused c_attn holds queries, keys and values side by side as our fused qkv does:
the matrices are copied as they are. Its causal-mask buffers (`attn.bias`,
`attn.masked_bias`) are not weights; the tied output head is the token table.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_dtypes  # jax's own dependency: numpy's bfloat16
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from . import checkpoint as ckpt
from .data.bpe import BpeTokenizer
from .errors import ConfigError, DataError, UsageError
from .files import atomic_folder
from .models import init_lm
from .runconfig import apply_overrides, make_config
from .runs import RunFolder, load
from .tasks.lm import FINETUNE_PRESET, LMTask

FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
WEIGHTS_INDEX = "model.safetensors.index.json"  # a checkpoint saved in shards
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # a folder saved in bfloat16 (not a numpy floating type)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
EXPORTED_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# config.json keys that do not change what the language model computes: tokens' roles,
# generation defaults, the sequence-classification head's settings, bookkeeping.
IGNORED = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "task_specific_params", "n_ctx",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "predict_special_tokens", "reorder_and_upcast_attn", "_name_or_path", "output_attentions",
    "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type", "tokenizer_class",
    "prefix", "decoder_start_token_id", "sep_token_id", "chunk_size_feed_forward", "is_decoder",
    "is_encoder_decoder", "tie_encoder_decoder", "pruned_heads", "torchscript", "use_bfloat16", "finetuning_task",
    "cross_attention_hidden_size", "add_cross_attention", "tf_legacy_loss", "_attn_implementation_autoset",
}
REQUIRED = {  # settings of other architectures built on GPT2Config that our model does not have
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
    "n_special": 0,
}
# A run exports as GPT-2 only with GPT-2's own choices for these (the rest map to config.json).
GPT2_MODEL = {"positions": "learned", "norm": "layernorm", "qk_norm": False, "bias": True, "logit_softcap": 0.0,
              "n_kv_head": 0, "head_dim": 0, "value_embed": False, "unet_skips": False, "attn_gate": False,
              "bigram_embed": False}


# ---------------------------------------------------------------- config.json <-> ModelConfig
def model_overrides(hf: dict, source="config.json") -> dict:
    """Our model.* settings for a GPT-2 config.json; a ConfigError naming every option
    that is unknown or has a value our model does not compute."""
    if hf.get("model_type") != "gpt2":
        raise ConfigError(f"{source}: model_type={hf.get('model_type')!r} is not a GPT-2 checkpoint "
                          "(model_type 'gpt2', GPT2LMHeadModel)")
    known = IGNORED | set(REQUIRED) | {"n_layer", "n_head", "n_embd", "n_inner", "n_positions", "vocab_size",
                                       "layer_norm_epsilon", "activation_function", "resid_pdrop", "embd_pdrop",
                                       "attn_pdrop", "tie_word_embeddings"}
    unknown = sorted(set(hf) - known)
    if unknown:
        raise ConfigError(f"{source} has option(s) this importer does not know: {', '.join(unknown)}")
    bad = [f"{k}={hf[k]!r} (only {v!r})" for k, v in REQUIRED.items() if k in hf and hf[k] != v]
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        bad.append(f"activation_function={act!r} (one of {', '.join(ACTIVATIONS)})")
    drops = {k: hf.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(drops.values())) > 1:
        bad.append(f"{', '.join(f'{k}={v}' for k, v in drops.items())} (our model has one dropout rate)")
    if bad:
        raise ConfigError(f"{source} has unsupported option(s): {'; '.join(bad)}")
    d = int_setting(hf, "n_embd", source, 768)
    return {"model.n_layer": int_setting(hf, "n_layer", source, 12),
            "model.n_head": int_setting(hf, "n_head", source, 12), "model.d_model": d,
            "model.d_ff": 4 * d if hf.get("n_inner") is None else int_setting(hf, "n_inner", source),
            "model.block_size": int_setting(hf, "n_positions", source, 1024),
            "model.vocab_size": int_setting(hf, "vocab_size", source, 50257),
            "model.ln_eps": float_setting(hf, "layer_norm_epsilon", source, 1e-5),
            "model.activation": ACTIVATIONS[act],
            "model.dropout": float_setting(hf, "resid_pdrop", source, 0.1),
            "model.tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
            "model.positions": "learned", "model.bias": True, "model.fused_qkv": True,
            "model.products": "float32"}  # as transformers computes: sampled and scored number for number


def int_setting(hf: dict, key: str, source, default=None) -> int:
    """config.json's `key` (or `default`), which must be an integer; a ConfigError otherwise."""
    v = hf.get(key, default)
    if type(v) is not int:
        raise ConfigError(f"{source}: {key}={v!r} must be an integer")
    return v


def float_setting(hf: dict, key: str, source, default) -> float:
    """config.json's `key` (or `default`), which must be a number; a ConfigError otherwise."""
    v = hf.get(key, default)
    if type(v) not in (int, float):
        raise ConfigError(f"{source}: {key}={v!r} must be a number")
    return float(v)


def hf_config(m, eos_id: int | None) -> dict:
    """The config.json of a GPT2LMHeadModel computing what model config `m` does."""
    unlike = [f"model.{k}={getattr(m, k)!r}" for k, v in GPT2_MODEL.items() if getattr(m, k) != v]
    if m.activation not in EXPORTED_ACTIVATION:
        unlike.append(f"model.activation={m.activation!r}")
    if unlike:
        raise UsageError(f"the run's {', '.join(unlike)} has no GPT-2 counterpart; export takes runs with "
                         + ", ".join(f"model.{k}={v!r}" for k, v in GPT2_MODEL.items())
                         + f" and model.activation one of {', '.join(EXPORTED_ACTIVATION)}")
    out = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": m.n_layer, "n_head": m.n_head,
           "n_embd": m.d_model, "n_inner": m.d_ff, "n_positions": m.block_size, "vocab_size": m.vocab_size,
           "layer_norm_epsilon": m.ln_eps, "activation_function": EXPORTED_ACTIVATION[m.activation],
           "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout,
           "tie_word_embeddings": m.tie_embeddings, "scale_attn_weights": True}
    # GPT2Config's defaults are GPT-2's <|endoftext|>, 50256, outside a character vocabulary
    out.update(bos_token_id=eos_id, eos_token_id=eos_id)
    return out


# ---------------------------------------------------------------- weights <-> params
def _hf_names(m) -> dict[str, tuple]:
    """Hugging Face's name of every weight -> its path in our params tree."""
    names = {"wte.weight": ("embed", "tokens"), "wpe.weight": ("embed", "positions"),
             "ln_f.weight": ("ln_f", "scale"), "ln_f.bias": ("ln_f", "bias")}
    ours = {"ln_1": ("ln1",), "ln_2": ("ln2",), "attn.c_attn": ("attn", "qkv"), "attn.c_proj": ("attn", "out"),
            "mlp.c_fc": ("mlp", "fc"), "mlp.c_proj": ("mlp", "proj")}
    for i in range(m.n_layer):
        for hf, path in ours.items():
            leaf = ("scale", "bias") if hf.startswith("ln") else ("w", "b")
            for hf_leaf, our_leaf in zip(("weight", "bias"), leaf):
                names[f"h.{i}.{hf}.{hf_leaf}"] = ("blocks", i, *path, our_leaf)
    if not m.tie_embeddings:
        names["lm_head.weight"] = ("head", "w")  # stored V x D, ours D x V
    return names


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """The tensors of model.safetensors (or of the shards its index names), float32,
    under names without the `transformer.` prefix that GPT2LMHeadModel adds."""
    index = folder / WEIGHTS_INDEX
    if (folder / "model.safetensors").is_file() or not index.is_file():
        files = [folder / "model.safetensors"]
    else:
        try:
            files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(f"{index} is not a safetensors index (a JSON object with a weight_map)") from None
    tensors = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{f} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    return {k.removeprefix("transformer."): v for k, v in tensors.items()}


def params_from_hf(tensors: dict[str, np.ndarray], m, source="model.safetensors") -> dict:
    """Our params tree for model config `m` from GPT-2's tensors, every name and shape
    checked against what `m` needs (via the template of init_lm)."""
    template = jax.eval_shape(lambda: init_lm(jax.random.PRNGKey(0), m))
    names = _hf_names(m)
    buffers = {k for k in tensors if k.endswith((".attn.bias", ".attn.masked_bias"))}
    extra = sorted(set(tensors) - set(names) - buffers - ({"lm_head.weight"} if m.tie_embeddings else set()))
    missing = sorted(set(names) - set(tensors))
    if missing or extra:
        raise DataError(f"{source} does not hold the weights its config.json describes: missing {missing[:3]}, "
                        f"unexpected {extra[:3]}")
    params = jax.tree.map(lambda _: None, template)
    for hf, path in names.items():
        a = tensors[hf].T if hf == "lm_head.weight" else tensors[hf]
        want = get_path(template, path).shape
        if a.shape != want:
            shape = a.shape[::-1] if hf == "lm_head.weight" else a.shape
            raise DataError(f"{source}: {hf} has shape {shape}, its config.json needs "
                            f"{want[::-1] if hf == 'lm_head.weight' else want}")
        if not (np.issubdtype(a.dtype, np.floating) or a.dtype == BFLOAT16):
            raise DataError(f"{source}: {hf} holds {a.dtype}, not floating-point weights")
        set_path(params, path, np.ascontiguousarray(a, np.float32))
    return params


def hf_from_params(params, m) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's tensors (names with the `transformer.` prefix) of our params
    (separate query, key and value matrices joined as GPT-2's c_attn)."""
    params = {**params, "blocks": [{**b, "attn": _fused(b["attn"])} for b in params["blocks"]]}
    out = {}
    for hf, path in _hf_names(m).items():
        a = np.asarray(get_path(params, path), np.float32)
        out[hf if hf == "lm_head.weight" else "transformer." + hf] = np.ascontiguousarray(
            a.T if hf == "lm_head.weight" else a)
    return out


def _fused(attn: dict) -> dict:
    if "qkv" in attn:
        return attn
    qkv = {leaf: np.concatenate([np.asarray(attn[n][leaf]) for n in "qkv"], axis=-1) for leaf in ("w", "b")}
    return {"qkv": qkv, "out": attn["out"]}


def get_path(tree, path):
    """The leaf of a params tree at `path` (keys and list indices)."""
    for k in path:
        tree = tree[k]
    return tree


def set_path(tree, path, value):
    get_path(tree, path[:-1])[path[-1]] = value


# ---------------------------------------------------------------- the two commands
def import_gpt2(folder, out) -> dict:
    """Write run folder `out` (config.json, tokenizer.json, checkpoints/best.safetensors
    holding the weights) from a Hugging Face GPT-2 folder. Returns the run's config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (expected a Hugging Face GPT-2 download: {', '.join(FILES)})")
    missing = [f for f in FILES if not (folder / f).is_file()
               and not (f == "model.safetensors" and (folder / WEIGHTS_INDEX).is_file())]
    if missing:
        raise DataError(f"{folder} has no {', '.join(missing)} (a GPT-2 folder holds {', '.join(FILES)}; "
                        "a model saved with torch's pickle format only must be saved again with safe_serialization)")
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{folder / 'config.json'} is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{folder / 'config.json'} holds {type(hf).__name__}, not a JSON object")
    overrides = model_overrides(hf, folder / "config.json")
    tok = BpeTokenizer.from_gpt2(folder / "vocab.json", folder / "merges.txt")
    if len(tok) != overrides["model.vocab_size"]:
        raise DataError(f"{folder}: vocab.json and merges.txt give {len(tok):,} symbols, config.json's vocab_size "
                        f"is {overrides['model.vocab_size']:,}")
    # The fine-tuning preset's training settings: what `train --config RUN` would take.
    cfg = apply_overrides(make_config("lm", FINETUNE_PRESET), overrides, allow_derived=True)
    task = LMTask(cfg, tok)
    params = params_from_hf(read_weights(folder), task.cfg.model, folder / "model.safetensors")
    save_weights_run(out, task, params, {"imported_from": {"path": str(folder.resolve()), "format": "gpt2"}})
    return task.cfg


def save_weights_run(out, task, params, meta: dict) -> None:
    """A run folder that holds weights only (no optimizer state, no metrics): what
    sample, eval, plot and `train --init-from` open."""
    with atomic_folder(Path(out)) as tmp:
        run = RunFolder(tmp)
        run.write_json("config.json", task.cfg.to_dict())
        for name, text in task.run_files().items():
            run.write_text(name, text)
        (tmp / ckpt.CKPT_DIR).mkdir()
        ckpt.save(tmp / ckpt.CKPT_DIR / ckpt.BEST, {"params": params},
                  {"config": task.cfg.to_dict(), "step": 0, "task_meta": task.meta(), **meta})


def export_gpt2(run_dir, out) -> Path:
    """Write a Hugging Face GPT-2 folder of a decoder-only run: config.json and
    model.safetensors, and for a byte-level BPE run its vocab.json, merges.txt and
    tokenizer.json. A character run has no tokenizer transformers reads: ours is written as
    char_tokenizer.json, not under the name transformers would load and fail on."""
    task, params, _ = load(run_dir)
    if task.name != "lm":
        raise UsageError(f"{run_dir} is a {task.name} run; export writes decoder-only language models (lm runs)")
    m = task.cfg.model
    tok = task.tokenizer
    eos = tok.id_of("<|endoftext|>") if tok.kind == "bpe" else None
    config = hf_config(m, eos)
    with atomic_folder(Path(out)) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(hf_from_params(params, m), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / ("tokenizer.json" if tok.kind == "bpe" else "char_tokenizer.json")).write_text(tok.to_json())
        if tok.kind == "bpe":
            tok.save_vocab_merges(tmp)
    return Path(out)
