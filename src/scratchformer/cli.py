"""Command line: argument parsing and dispatch; the work is done by the modules it calls.

A `ScratchformerError` (something a person gave us) becomes one line on stderr and exit
code 2, the option it came through named; a run that diverges (NaN/inf) exits 1, one
stopped by a signal 128 + its number. Anything else is a bug and keeps its traceback.
The program (`scratchformer`, `python -m scratchformer`) starts in __main__.py.
"""

from __future__ import annotations

import argparse
import math
import sys

import jax

from . import __version__, bench, hf, plots, runs
from .data.tokens import prepare
from .errors import ScratchformerError, UsageError, one_line
from .files import strict_json
from .finetune import source
from .loop import dry_run, fit
from .parallel import initialize_distributed, is_main
from .records import TrainingDiverged
from .runconfig import describe_keys, describe_presets
from .start import training_start
from .stop import TrainingInterrupted
from .tasks import TASKS, task_options
from .tasks.lm import MAX_SAMPLE_TOKENS
from .tasks.reverse import MAX_BEAM

EXAMPLES = """examples:
  scratchformer train reverse --out runs/rev       # encoder-decoder learns to reverse sequences
  scratchformer sample runs/rev --input "7 3 9 1"  # -> 1 9 3 7
  scratchformer train lm --preset cpu-quick --out runs/quick   # Tiny Shakespeare character LM
  scratchformer sample runs/quick --prompt "ROMEO:" --tokens 300
  scratchformer plot runs/quick                    # runs/quick/loss.png, attention.png
"""
RUN_HELP = "a run folder (its best checkpoint), or one checkpoint file (runs/x/checkpoints/step_*.safetensors)"
RAW = argparse.RawDescriptionHelpFormatter


def _number(kind, low=None, high=None, *, open_low=False, open_high=False):
    """An argparse type: a number of `kind` within bounds (open_*: the bound itself is
    out), with a one-line error."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
        if low is not None and (v <= low if open_low else v < low):
            raise argparse.ArgumentTypeError(f"{s!r} must be {'>' if open_low else '>='} {low}")
        if high is not None and (v >= high if open_high else v > high):
            raise argparse.ArgumentTypeError(f"{s!r} must be {'<' if open_high else 'at most'} {high:,}")
        return v
    return parse


POSITIVE, BEAM = _number(int, 0, open_low=True), _number(int, 1, MAX_BEAM)
TOKENS = _number(int, 0, MAX_SAMPLE_TOKENS, open_low=True)
FRACTION = _number(float, 0, 1, open_low=True, open_high=True)
FLAG, TASK_FLAG, NEW = dict(action="store_true"), dict(action="store_const", const=True), dict(required=True)
DIR, FILE, RUN_DIR = dict(metavar="DIR"), dict(metavar="FILE"), dict(metavar="RUN")
CHAR_BPE = ["char", "bpe"]
# Each command: its help line, and its arguments as (name, help, keywords). Task options
# (eval's, sample's) default to None: a task's own defaults are filled in once the run's
# task is known, so that an option given for another task's run is an error, not ignored.
COMMANDS = {
    "train": ("train a model and write a run folder (config.json, metrics.jsonl, summary.json, checkpoints/)", [
        ("task", "reverse (encoder-decoder) or lm (language model)", dict(choices=list(TASKS))),
        ("--preset", "named settings (see below)", {}),
        ("--out", "run folder (default runs/TASK-PRESET-TIME)", {}),
        ("--steps", "optimizer steps (= --set train.steps=N)", dict(type=POSITIVE)),
        ("--seed", "random seed (= --set train.seed=N)", dict(type=int)),
        ("--data", "lm: a UTF-8 text file or a folder of token files (prepare), not Tiny Shakespeare", {}),
        ("--config", "settings from a run's config.json (or folder), or part of one, after --preset", FILE),
        ("--set", "a config value, e.g. --set model.n_layer=2 (repeatable)",
         dict(dest="sets", action="append", default=[], metavar="KEY=VALUE")),
        ("--init-from", "fine-tune: start from this run's weights and tokenizer, with a fresh optimizer", RUN_DIR),
        ("--lora", "with --init-from: train rank-R LoRA adapters, weights frozen", dict(type=POSITIVE, metavar="R")),
        ("--resume", "continue the run in --out from its latest checkpoint (Ctrl-C saves one and stops)", FLAG),
        ("--fsdp", "shard parameters and optimizer state across devices", FLAG),
        ("--no-progress", "no progress bar", FLAG),
        ("--dry-run", "compile the step, check that it fits in memory, print its size, stop (writes nothing)", FLAG),
        ("--coordinator", "multi-process: HOST:PORT of process 0", {}),
        ("--num-processes", "multi-process: number of processes", dict(type=POSITIVE)),
        ("--process-id", "multi-process: this process's index", dict(type=int))]),
    "eval": ("evaluate a run's best checkpoint on its held-out data", [
        ("dir", RUN_HELP, DIR),
        ("--json", "print one JSON object", FLAG),
        ("--beam", f"reverse: beam width, 1 (greedy, the default) to {MAX_BEAM}", dict(type=BEAM)),
        ("--data", "lm: the loss on all of this UTF-8 text (default: the run's validation split)", {}),
        ("--windows", "lm: score this many evenly spaced windows instead of every token", dict(type=POSITIVE))]),
    "sample": ("generate from a trained run", [
        ("dir", RUN_HELP, DIR),
        ("--prompt", "lm: text to continue (default a newline)", {}),
        ("--tokens", "lm: tokens to generate (default 500), fewer where the model ends its text", dict(type=TOKENS)),
        ("--temperature", "lm: 0 = greedy (default 0.8)", dict(type=_number(float, 0))),
        ("--top-k", "lm: keep the k most likely (0 = all, the default)", dict(type=_number(int, 0))),
        ("--top-p", "lm: nucleus mass (1 = off, the default)", dict(type=_number(float, 0, 1, open_low=True))),
        ("--seed", "lm: the sampling noise's seed (default 0)", dict(type=int)),
        ("--no-cache", "lm: full forward pass per token (slow; for checking)", TASK_FLAG),
        ("--ignore-eos", "lm: go on past the model's end of text (its EOS, <|endoftext|>) to --tokens",
         TASK_FLAG),
        ("--input", "reverse: space-separated symbols, e.g. '7 3 9 1'", {}),
        ("--beam", f"reverse: beam width, 1 (greedy, the default) to {MAX_BEAM}", dict(type=BEAM))]),
    "plot": ("loss.png and attention.png in a run folder, or several runs' losses on one figure and a table", [
        ("dirs", "one run folder, or several runs of one task to compare", dict(nargs="+", metavar="DIR")),
        ("--out", "several runs: the figure's path (default compare.png)", {})]),
    "prepare": ("tokenize texts into token files to train on (--data DIR): train.bin, val.bin, tokenizer.json", [
        ("texts", "UTF-8 text files, or folders of .txt files", dict(nargs="+", metavar="TEXT")),
        ("--out", "the folder to write (must not exist)", NEW),
        ("--tokenizer", "char (default), or bpe: learned (--vocab-size) or GPT-2's (--gpt2)", dict(choices=CHAR_BPE)),
        ("--tokenizer-from", "the tokenizer of an lm run, to fine-tune it on this data", RUN_DIR),
        ("--vocab-size", "bpe: symbols to learn (e.g. 1024 for 1 MB of text)", dict(type=_number(int, 257, 1 << 20))),
        ("--gpt2", "bpe: GPT-2's vocab.json and merges.txt", dict(nargs=2, metavar=("VOCAB_JSON", "MERGES_TXT"))),
        ("--val-fraction", "the last part held out for validation (default 0.1)", dict(type=FRACTION, default=0.1))]),
    "import": ("make a run folder of a Hugging Face model folder (config.json, model.safetensors, tokenizer)", [
        ("kind", "; ".join(f"{k}: {v}" for k, v in hf.KINDS.items()), dict(choices=list(hf.IMPORTERS))),
        ("src", "the Hugging Face folder", DIR), ("--out", "the run folder to write (must not exist)", NEW)]),
    "export": ("write an lm run as a folder that transformers loads (GPT-2 or Llama, by the run's model)", [
        ("dir", RUN_HELP, DIR), ("--out", "the folder to write (must not exist)", NEW)]),
    "bench": ("measure training and sampling speed on this machine", [
        ("--json", "print one JSON object", FLAG), ("--quick", "fewer repetitions (for a smoke test)", FLAG)]),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _train_epilog() -> str:
    keys = "\n  ".join(describe_keys())
    return f"presets: {describe_presets()}\n\nconfig keys for --set (type, default before presets):\n  {keys}"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scratchformer", description="Transformers from scratch in pure JAX: train, evaluate, "
                "sample and plot.", epilog=EXAMPLES, formatter_class=RAW)
    p.add_argument("--version", action="version", version=f"scratchformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (text, arguments) in COMMANDS.items():
        c = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", formatter_class=RAW,
                           epilog=_train_epilog() if name == "train" else None)
        for arg, help, kw in arguments:
            c.add_argument(arg, help=help, **kw)
    return p


def cmd_train(a) -> int:
    initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    start = training_start(a.task, **{k: getattr(a, k) for k in ("out", "preset", "config", "sets", "steps", "seed",
                                                                 "init_from", "lora", "resume", "data")})
    if start.note:
        print(f"scratchformer: note: {start.note}", file=sys.stderr)
    if a.dry_run:
        print(dry_run(start.task, start.out, fsdp=a.fsdp)["report"])
        return 0
    summary = fit(start.task, start.out, resume=a.resume, fsdp=a.fsdp, progress=not a.no_progress)
    if is_main():
        print(runs.report(start.out, summary))
    return 0


def cmd_eval(a) -> int:
    task, params, meta = runs.load(a.dir, with_data=a.data is None)
    options = task_options(task, {k: getattr(a, k) for k in ("beam", "data", "windows")}, "eval_options")
    result = {"task": task.name, **task.evaluate(params, full=True, progress=True, **options), "step": meta.get("step")}
    print(strict_json(result) if a.json else runs.describe(result))
    return 0


def cmd_sample(a) -> int:
    task, params, _ = runs.load(a.dir)
    names = ("prompt", "tokens", "temperature", "top_k", "top_p", "seed", "no_cache", "ignore_eos", "input", "beam")
    out, note = task.sample(params, **task_options(task, {k: getattr(a, k) for k in names}, "sample_options"))
    sys.stdout.write(out + "\n")
    if note:
        print(f"scratchformer: note: {note}", file=sys.stderr)
    return 0


def cmd_plot(a) -> int:
    if len(a.dirs) == 1:
        if a.out is not None:
            raise UsageError(f"--out {a.out} is for comparing several runs; plot DIR writes into DIR")
        print("\n".join(map(str, plots.plot_run(a.dirs[0]))))
        return 0
    path, rows = plots.compare_runs(a.dirs, a.out or "compare.png")
    print(f"{plots.table(rows)}\n{path}")
    return 0


def cmd_prepare(a) -> int:
    if a.tokenizer_from and (a.tokenizer or a.vocab_size or a.gpt2):
        raise UsageError("--tokenizer-from takes the run's tokenizer; leave out --tokenizer, --vocab-size and --gpt2")
    if a.tokenizer != "bpe" and (a.vocab_size or a.gpt2):
        raise UsageError("--vocab-size and --gpt2 are for --tokenizer bpe")
    if a.tokenizer == "bpe" and not (a.vocab_size or a.gpt2):
        raise UsageError("--tokenizer bpe needs --vocab-size N (e.g. 1024) or --gpt2 VOCAB_JSON MERGES_TXT")
    like = source(a.tokenizer_from, "lm", option="tokenizer_from").tokenizer if a.tokenizer_from else None
    meta = prepare(a.texts, a.out, tokenizer=a.tokenizer or "char", vocab_size=a.vocab_size, gpt2=a.gpt2,
                   val_fraction=a.val_fraction, progress=True, like=like)
    tr, va, tok = meta["train"], meta["val"], meta["tokenizer"]
    print(f"{a.out}: {tok['kind']} tokenizer of {tok['vocab_size']:,} symbols; {tr['tokens']:,} training and "
          f"{va['tokens']:,} validation tokens ({meta['dtype']}) from {tr['text_bytes'] + va['text_bytes']:,} "
          "bytes of text")
    return 0


def cmd_import(a) -> int:
    print(hf.import_folder(a.kind, a.src, a.out))
    return 0


def cmd_export(a) -> int:
    print(hf.export_run(a.dir, a.out))
    return 0


RUN = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot, "prepare": cmd_prepare,
       "import": cmd_import, "export": cmd_export, "bench": lambda a: bench.main(as_json=a.json, quick=a.quick)}


def main(argv=None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        if a.command is None:
            parser.print_help()
            return 2
        return RUN[a.command](a)
    except ScratchformerError as e:
        print(one_line(e), file=sys.stderr)
        return 2
    except (TrainingDiverged, TrainingInterrupted) as e:  # interrupted: as a shell reports death by a signal
        print(f"scratchformer: {e}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, TrainingInterrupted) else 1
    except KeyboardInterrupt:
        print("scratchformer: interrupted", file=sys.stderr)
        return 130
    except jax.errors.JaxRuntimeError as e:  # what memory.check_fits could not foresee
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"scratchformer: error: out of memory ({str(e).splitlines()[0]}); choose a smaller model, "
              "batch or sample", file=sys.stderr)
        return 2
