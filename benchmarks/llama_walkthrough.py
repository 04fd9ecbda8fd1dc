"""docs/llama.md's walkthrough, timed: a random model of SmolLM2-135M's shape saved as
the hub ships it (bfloat16 safetensors, a byte-level BPE tokenizer.json), then each
command of the walkthrough as a user types it, with its wall time and its process's
peak resident memory.

    PYTHONPATH=src python benchmarks/llama_walkthrough.py [--dir /tmp/walk] [--steps 20]
        [--text ../shared/data/tinyshakespeare.txt]

The weights are random, so the losses and the text mean nothing; a command's time and
memory do not depend on the values. Prints one line per command and a Markdown table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# HuggingFaceTB/SmolLM2-135M's config.json, less what only names its origin
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=0,
                    eos_token_id=0, hidden_act="silu", attention_bias=False, mlp_bias=False)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # SmolLM2's first ids


def tokenizer(text: str) -> Tokenizer:
    """A byte-level BPE of SmolLM2's kind learned from `text` (49,152 symbols asked for;
    a small text stops sooner: the model's vocabulary is larger than the tokenizer's, as
    in Qwen2's checkpoints)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=SMOLLM2_135M["vocab_size"], special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return tok


def hub_folder(path: Path, text: str) -> None:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2_135M)).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer(text).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": SPECIAL[0], "eos_token": SPECIAL[0],
         "unk_token": SPECIAL[0], "model_max_length": 8192}))


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in GiB, last line of output) of one command in a process of its
    own (the peak is the child's: measured by a wrapper process that runs only it)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    peak = int(r.stderr.strip().splitlines()[-1]) / 2**20
    lines = [x for x in r.stdout.strip().splitlines() if x.strip()]
    return seconds, peak, lines[-1] if lines else ""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/llama_walkthrough"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--text", type=Path, default=Path(__file__).parents[1] / "../shared/data/tinyshakespeare.txt")
    args = p.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    t0 = time.perf_counter()
    hub_folder(args.dir / "SmolLM2-135M", args.text.read_text())
    print(f"made a random SmolLM2-135M folder in {time.perf_counter() - t0:.0f} s", flush=True)
    d, steps, text = args.dir, str(args.steps), str(args.text)
    sf = [sys.executable, "-m", "scratchformer"]
    commands = [
        ["import", "llama", d / "SmolLM2-135M", "--out", d / "smollm2"],
        ["sample", d / "smollm2", "--prompt", "ROMEO:", "--tokens", "100", "--seed", "0"],
        ["eval", d / "smollm2", "--data", text, "--windows", "1"],
        ["train", "lm", "--init-from", d / "smollm2", "--lora", "8", "--data", text, "--out", d / "lora",
         "--steps", steps, "--no-progress"],
        ["train", "lm", "--init-from", d / "smollm2", "--data", text, "--out", d / "full", "--steps", steps,
         "--no-progress"],
        ["sample", d / "lora", "--prompt", "ROMEO:", "--tokens", "100", "--seed", "0"],
        ["export", d / "lora", "--out", d / "smollm2-shakespeare-hf"],
    ]
    rows = []
    for c in commands:
        argv = [str(x) for x in c]
        seconds, peak, last = timed(sf + argv)
        shown = " ".join(x.replace(str(d) + "/", "") for x in argv).replace(text, "tinyshakespeare.txt")
        rows.append((shown, seconds, peak))
        print(f"{seconds:7.1f} s {peak:5.2f} GiB  scratchformer {shown}\n    {last[:150]}", flush=True)
    print(f"\n{os.cpu_count()} CPUs; {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}")
    print("| command | wall time | peak memory |\n| --- | ---: | ---: |")
    for shown, seconds, peak in rows:
        print(f"| `scratchformer {shown}` | {seconds:.0f} s | {peak:.1f} GiB |")


if __name__ == "__main__":
    main()
