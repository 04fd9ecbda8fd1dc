"""Hugging Face folders in and out, by model family: `import KIND DIR` runs the importer
of KIND, and `export RUN` the exporter of the family the run's model belongs to (a
Llama's where it has rotary positions or a SwiGLU MLP, GPT-2's otherwise). Each
family's module (gpt2.py, llama.py) says what it reads and writes."""

from __future__ import annotations

from . import checkpoint as ckpt, gpt2, llama
from .errors import UsageError
from .runs import checkpoint_path, config_of, load

IMPORTERS = {"gpt2": gpt2.import_gpt2, "llama": llama.import_llama}
KINDS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM, Qwen2ForCausalLM or MistralForCausalLM"}
NAMES = {"gpt2": "GPT-2", "llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}


def import_folder(kind: str, folder, out) -> str:
    """Make run folder `out` of the Hugging Face folder of a `kind` model; returns what to
    print: the model's shape and what to do with it."""
    cfg = IMPORTERS[kind](folder, out)
    m, meta = cfg.model, ckpt.read_meta(ckpt.best(out))
    name = NAMES[meta["imported_from"]["format"]]
    heads = f"{m.n_head} heads" + (f" ({m.n_kv_head} for keys and values)" if m.n_kv_head else "")
    return (f"{out}: {name} of {m.n_layer} layers x {m.d_model} wide, {heads}, context {m.block_size:,}, "
            f"{m.vocab_size:,} symbols; sample, eval --data FILE, or train lm --init-from {out}")


def export_run(run_dir, out) -> str:
    """Write the Hugging Face folder of an lm run; returns what to print."""
    path = checkpoint_path(run_dir)
    m = config_of(ckpt.read_meta(path), path).model
    if m.positions == "rope" or m.activation == "swiglu":
        task, params, _ = load(run_dir)
        if task.name != "lm":
            raise UsageError(f"{run_dir} is a {task.name} run; export writes decoder-only language models (lm runs)")
        folder, cls = llama.export_llama(task, params, out)
    else:
        folder, cls = gpt2.export_gpt2(run_dir, out), "GPT2LMHeadModel"
    return f"{folder}: loads with transformers' {cls}.from_pretrained"
