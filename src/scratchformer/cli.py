"""Command line: argument parsing and dispatch; the work is done by the modules it calls.

A `ScratchformerError` (something a person gave us) becomes one line on stderr and exit
code 2, the option it came through named; a run that diverges (NaN/inf) exits 1, one
stopped by a signal 128 + its number. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from . import __version__
from .errors import flag

EXAMPLES = """examples:
  scratchformer train reverse --out runs/rev       # encoder-decoder learns to reverse sequences (~35 s)
  scratchformer sample runs/rev --input "7 3 9 1"  # -> 1 9 3 7
  scratchformer train lm --preset cpu-quick --out runs/quick   # Tiny Shakespeare char LM (~30-60 s on 2 CPU cores)
  scratchformer eval runs/quick --json
  scratchformer eval runs/quick --data other.txt   # the loss on a text of your choice
  scratchformer sample runs/quick --prompt "ROMEO:" --tokens 300
  scratchformer plot runs/quick                    # runs/quick/loss.png, attention.png
  scratchformer plot runs/quick runs/rope --out compare.png   # several runs on one figure
  scratchformer train lm --data my.txt --set model.n_layer=2 --steps 500
  scratchformer prepare my_texts/ --out data/mine --tokenizer bpe --vocab-size 4096   # token files
  scratchformer train lm --data data/mine --preset cpu-quick   # streamed from disk when large
  scratchformer train lm --config runs/quick --seed 1 --out runs/quick1   # the same run, another seed
  scratchformer bench
"""
RUN_HELP = "a run folder (its best checkpoint), or one checkpoint file (runs/x/checkpoints/step_*.safetensors)"


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


def build_parser() -> argparse.ArgumentParser:
    from .config import describe_keys
    from .tasks import TASKS
    from .tasks.lm import MAX_SAMPLE_TOKENS
    from .tasks.reverse import MAX_BEAM
    p = _Parser(prog="scratchformer", description="Transformers from scratch in pure JAX: train, evaluate, "
                "sample and plot.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"scratchformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    presets = "; ".join(f"{n}: " + ", ".join(k + (" (default)" if k == t.default_preset else "") for k in t.presets)
                        for n, t in TASKS.items())
    t = sub.add_parser("train", help="train a model", description="Train a model and write a run folder "
                       "(config.json, metrics.jsonl, summary.json, checkpoints/).",
                       epilog=f"presets: {presets}\n\nconfig keys for --set (type, default before presets):\n  "
                       + "\n  ".join(describe_keys()), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("task", choices=list(TASKS), help="reverse (encoder-decoder) or lm (character LM)")
    t.add_argument("--preset", help="named settings (see below)")
    t.add_argument("--out", help="run folder (default runs/TASK-PRESET-TIME)")
    t.add_argument("--steps", type=_number(int, 0, open_low=True), help="optimizer steps (= --set train.steps=N)")
    t.add_argument("--seed", type=int, help="random seed (= --set train.seed=N)")
    t.add_argument("--data", help="lm: a UTF-8 text file, or a folder of token files (scratchformer prepare), "
                   "instead of Tiny Shakespeare (with --resume: the run's own data unless given)")
    t.add_argument("--config", metavar="FILE", help="settings from a JSON file: a run's config.json or "
                   "its folder (to train that run again), or any part of one; applied after --preset, before --set")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.n_layer=2 (repeatable)")
    t.add_argument("--init-from", metavar="RUN", help="start from this run's weights and tokenizer (a run folder, "
                   "a checkpoint, or an imported GPT-2) with a fresh optimizer: fine-tuning (default preset "
                   "gpt2-finetune for lm)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint "
                   "(Ctrl-C saves one and stops; a second Ctrl-C stops at once)")
    t.add_argument("--fsdp", action="store_true", help="shard parameters and optimizer state across devices")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--dry-run", action="store_true", help="compile the training step, check that it fits in "
                   "memory, print the parameter count and memory, and stop (nothing is written)")
    t.add_argument("--coordinator", help="multi-process: HOST:PORT of process 0")
    t.add_argument("--num-processes", type=_number(int, 0, open_low=True), help="multi-process: number of processes")
    t.add_argument("--process-id", type=int, help="multi-process: this process's index")

    beam = _number(int, 1, MAX_BEAM)
    e = sub.add_parser("eval", help="evaluate a run's best checkpoint on its held-out data")
    e.add_argument("dir", metavar="DIR", help=RUN_HELP)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--beam", type=beam, help=f"reverse: beam width, 1 (greedy, the default) to {MAX_BEAM}")
    e.add_argument("--data", help="lm: the loss on this UTF-8 text file, all of it (default: the validation "
                   "split of the run's own data)")
    e.add_argument("--windows", type=_number(int, 0, open_low=True), help="lm: score only this many evenly spaced "
                   "windows (of model.block_size tokens) instead of every token")

    # Options default to None: a task's own defaults are filled in once the run's task is
    # known, so that an option given for another task's run is an error, not ignored.
    s = sub.add_parser("sample", help="generate from a trained run")
    s.add_argument("dir", metavar="DIR", help=RUN_HELP)
    s.add_argument("--prompt", help="lm: text to continue (default a newline)")
    s.add_argument("--tokens", type=_number(int, 0, MAX_SAMPLE_TOKENS, open_low=True),
                   help="lm: tokens to generate, characters for a character-level run (default 500)")
    s.add_argument("--temperature", type=_number(float, 0), help="lm: 0 = greedy (default 0.8)")
    s.add_argument("--top-k", type=_number(int, 0), help="lm: keep the k most likely (0 = all, the default)")
    s.add_argument("--top-p", type=_number(float, 0, 1, open_low=True), help="lm: nucleus mass (1 = off, the default)")
    s.add_argument("--seed", type=int, help="lm: the sampling noise's seed (default 0)")
    s.add_argument("--no-cache", action="store_const", const=True, help="lm: full forward pass per token (slow; "
                   "for checking)")
    s.add_argument("--input", help="reverse: space-separated symbols, e.g. '7 3 9 1'")
    s.add_argument("--beam", type=beam, help=f"reverse: beam width, 1 (greedy, the default) to {MAX_BEAM}")

    pl = sub.add_parser("plot", help="write loss.png and attention.png into the run folder, or compare runs",
                        description="One run: loss.png and attention.png in its folder. Several runs of one "
                                    "task: one figure of their losses (--out), labelled by the config values "
                                    "that differ, and a table of their best and final validation losses.")
    pl.add_argument("dirs", nargs="+", metavar="DIR")
    pl.add_argument("--out", help="several runs: the figure's path (default compare.png)")

    pr = sub.add_parser("prepare", help="tokenize text files into token files to train on (--data DIR)",
                        description="Tokenize UTF-8 text files (or folders of .txt files) into OUT: train.bin and "
                        "val.bin (uint16 ids where the vocabulary fits, else uint32), tokenizer.json, meta.json.")
    pr.add_argument("texts", nargs="+", metavar="TEXT")
    pr.add_argument("--out", required=True, help="the folder to write (must not exist)")
    pr.add_argument("--tokenizer", choices=["char", "bpe"],
                    help="char (the default): the text's characters; bpe: GPT-2's byte-level BPE, learned here "
                    "(--vocab-size) or GPT-2's own (--gpt2)")
    pr.add_argument("--tokenizer-from", metavar="RUN", help="the tokenizer of an lm run folder, whatever its kind: "
                    "data to fine-tune it on (train lm --init-from RUN --data OUT)")
    pr.add_argument("--vocab-size", type=_number(int, 257, 1 << 20), help="bpe: symbols to learn (e.g. 1024 for "
                    "1 MB of text)")
    pr.add_argument("--gpt2", nargs=2, metavar=("VOCAB_JSON", "MERGES_TXT"), help="bpe: GPT-2's vocab.json and "
                    "merges.txt instead of learning one")
    pr.add_argument("--val-fraction", type=_number(float, 0, 1, open_low=True, open_high=True), default=0.1,
                    help="the last part of the tokens held out for validation (default 0.1)")

    im = sub.add_parser("import", help="make a run folder of a Hugging Face GPT-2 (to sample, eval, fine-tune)",
                        description="Make a run folder of a GPT2LMHeadModel folder as `huggingface-cli download gpt2` "
                        "or save_pretrained leaves it: config.json, model.safetensors, vocab.json, merges.txt.")
    im.add_argument("kind", choices=["gpt2"], help="the model family (gpt2: any GPT2LMHeadModel)")
    im.add_argument("src", metavar="DIR", help="the Hugging Face folder")
    im.add_argument("--out", required=True, help="the run folder to write (must not exist)")

    ex = sub.add_parser("export", help="write an lm run as a Hugging Face GPT-2 folder",
                        description="Write a decoder-only run as a folder that transformers' "
                        "GPT2LMHeadModel.from_pretrained loads: config.json, model.safetensors, and the tokenizer "
                        "(vocab.json and merges.txt for a byte-level BPE run).")
    ex.add_argument("dir", metavar="DIR", help=RUN_HELP)
    ex.add_argument("--out", required=True, help="the folder to write (must not exist)")

    b = sub.add_parser("bench", help="measure training and sampling speed on this machine")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke test)")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        from .errors import UsageError
        raise UsageError(message)


def _options(a, task, names: list[str], kind: str) -> dict:
    """The `names` options given on the command line, checked against what `task`
    takes (its `kind`: sample_options or eval_options), with the task's defaults."""
    from .errors import UsageError
    from .tasks import TASKS
    given = [k for k in names if getattr(a, k, None) is not None]
    own = getattr(task, kind)
    foreign = [k for k in given if k not in own]
    if foreign:
        owner = next(n for n, t in TASKS.items() if foreign[0] in getattr(t, kind))
        flags = ", ".join(flag(k) for k in foreign)
        takes = ", ".join(map(flag, own)) if own else "no options"
        raise UsageError(f"{flags} {'is' if len(foreign) == 1 else 'are'} for {owner} runs; {task.name} runs take "
                         f"{takes}")
    return {k: own[k] if getattr(a, k, None) is None else getattr(a, k) for k in own}


def cmd_train(a) -> int:
    from .parallel import initialize_distributed
    initialize_distributed(a.coordinator, a.num_processes, a.process_id)

    from . import finetune, runs
    from .config import apply_overrides, cpu_note, make_config, overrides_from_file, parse_set_args, task_class
    from .errors import UsageError
    from .train import dry_run, fit

    overrides = {**(overrides_from_file(a.config, a.task) if a.config else {}), **parse_set_args(a.sets)}
    overrides.update({k: str(v) for k, v in (("train.steps", a.steps), ("train.seed", a.seed)) if v is not None})
    spec = task_class(a.task)
    preset = a.preset or (spec.finetune_preset if a.init_from else spec.default_preset)
    out = a.out or f"runs/{a.task}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if a.resume and not a.out:
        raise UsageError("--resume needs --out DIR, the run to continue")
    resumed = a.resume and not (a.preset or a.init_from)  # continue the run that was started
    init = finetune.source(a.init_from, a.task) if a.init_from else None
    if resumed and (not overrides or (Path(out) / "config.json").is_file()):
        # its own config, with what was given on top: a resumed run keeps its config, so
        # whatever given differs is what the error names (not a preset's other values)
        cfg = apply_overrides(runs.saved_config(out, a.task), overrides)
    elif init is not None:
        cfg = finetune.config(a.task, preset, overrides, init, a.init_from)
    else:
        cfg = make_config(a.task, preset, overrides)
    note = cpu_note(cfg, preset)
    if note:
        print(f"scratchformer: note: {note}", file=sys.stderr)
    data = a.data if a.data is not None or not a.resume else runs.training_source(out)
    if a.data is None and data is not None and not Path(data).is_file():
        raise UsageError(f"--resume: the run's text file {data} is gone; pass --data FILE with the same text")
    if init is None and cfg.train.init_from:  # a resumed fine-tune reads its data as its source did
        init = finetune.source(cfg.train.init_from, a.task)
    task = spec.from_data(cfg, data, like=init)
    if a.dry_run:
        plan = dry_run(task, out, fsdp=a.fsdp)
        print(plan["header"])
        fits = ("fits in memory" if plan["bytes_per_device"] else
                "has no memory figure from XLA on this backend, so its fit was not checked")
        print(f"dry run: the training step compiled and {fits}; nothing was trained or written")
        return 0
    summary = fit(task, out, resume=a.resume, fsdp=a.fsdp, progress=not a.no_progress)
    from .parallel import is_main
    if is_main():
        print(f"run folder: {out}\n{runs.describe(summary)}")
        best = runs.best_checkpoint_note(out, summary)
        if best:
            print(best)
    return 0


def cmd_eval(a) -> int:
    from . import runs
    from .checkpoint import strict_json
    task, params, meta = runs.load(a.dir, with_data=a.data is None)
    options = _options(a, task, ["beam", "data", "windows"], "eval_options")
    result = {"task": task.name, **task.evaluate(params, full=True, progress=True, **options), "step": meta.get("step")}
    print(strict_json(result) if a.json else runs.describe(result))
    return 0


def cmd_sample(a) -> int:
    from . import runs
    from .errors import DataError, UsageError
    task, params, _ = runs.load(a.dir)
    options = _options(a, task, ["prompt", "tokens", "temperature", "top_k", "top_p", "seed", "no_cache", "input",
                                 "beam"], "sample_options")
    try:
        out, note = task.sample(params, **options)
    except DataError as e:
        if "\\" in (a.prompt or ""):  # a shell passed "\n" as two characters
            raise UsageError(f"--prompt \"{a.prompt}\" holds a backslash, which is not in the model's vocabulary; "
                             "for a newline, pass a real one (bash: --prompt $'ROMEO:\\n')") from None
        raise e.with_traceback(None) from None
    sys.stdout.write(out + "\n")
    if note:
        print(f"scratchformer: note: {note}", file=sys.stderr)
    return 0


def cmd_plot(a) -> int:
    from .errors import UsageError
    from .plots import compare_runs, plot_run, table
    if len(a.dirs) == 1:
        if a.out is not None:
            raise UsageError(f"--out {a.out} is for comparing several runs; plot DIR writes into DIR")
        print("\n".join(map(str, plot_run(a.dirs[0]))))
        return 0
    path, rows = compare_runs(a.dirs, a.out or "compare.png")
    print(f"{table(rows)}\n{path}")
    return 0


def cmd_prepare(a) -> int:
    from .data.tokens import prepare
    from .errors import UsageError
    from .finetune import source
    if a.tokenizer_from and (a.tokenizer or a.vocab_size or a.gpt2):
        raise UsageError("--tokenizer-from takes the run's tokenizer; leave out --tokenizer, --vocab-size and --gpt2")
    if a.tokenizer != "bpe" and (a.vocab_size or a.gpt2):
        raise UsageError("--vocab-size and --gpt2 are for --tokenizer bpe")
    if a.tokenizer == "bpe" and not (a.vocab_size or a.gpt2):
        raise UsageError("--tokenizer bpe needs --vocab-size N (e.g. 1024) or --gpt2 VOCAB_JSON MERGES_TXT")
    like = source(a.tokenizer_from, "lm", option="tokenizer_from").tokenizer if a.tokenizer_from else None
    meta = prepare(a.texts, a.out, tokenizer=a.tokenizer or "char", vocab_size=a.vocab_size, gpt2=a.gpt2,
                   val_fraction=a.val_fraction, progress=True, like=like)
    tr, va = meta["train"], meta["val"]
    print(f"{a.out}: {meta['tokenizer']['kind']} tokenizer of {meta['tokenizer']['vocab_size']:,} symbols; "
          f"{tr['tokens']:,} training and {va['tokens']:,} validation tokens ({meta['dtype']}) from "
          f"{tr['text_bytes'] + va['text_bytes']:,} bytes of text")
    return 0


def cmd_import(a) -> int:
    from .gpt2 import import_gpt2
    m = import_gpt2(a.src, a.out).model
    print(f"{a.out}: GPT-2 of {m.n_layer} layers x {m.d_model} wide, {m.n_head} heads, context {m.block_size:,}, "
          f"{m.vocab_size:,} symbols; sample, eval --data FILE, or train lm --init-from {a.out}")
    return 0


def cmd_export(a) -> int:
    from .gpt2 import export_gpt2
    print(f"{export_gpt2(a.dir, a.out)}: loads with transformers' GPT2LMHeadModel.from_pretrained")
    return 0


def cmd_bench(a) -> int:
    from .bench import main as bench_main
    return bench_main(as_json=a.json, quick=a.quick)


def _error_line(e) -> str:
    """One line for a ScratchformerError: the option it came through, then the message."""
    from .errors import ResumeMismatch
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if e.option:
        msg = f"{flag(e.option)} {msg}"
    if isinstance(e, ResumeMismatch):
        msg += ": leave out --preset, --config, --set, --steps and --seed, or start a new run"
    return f"scratchformer: error: {msg}"


def main(argv=None) -> int:
    if argv is None:  # run as the program (not called from Python): huge pages for XLA's buffers
        from .hugepages import reexec_if_wanted
        reexec_if_wanted()
    import jax

    from .errors import ScratchformerError
    from .train import TrainingDiverged, TrainingInterrupted
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        if a.command is None:
            parser.print_help()
            return 2
        return {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot,
                "prepare": cmd_prepare, "import": cmd_import, "export": cmd_export, "bench": cmd_bench}[a.command](a)
    except ScratchformerError as e:
        print(_error_line(e), file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"scratchformer: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"scratchformer: {e}", file=sys.stderr)
        return 128 + e.signum  # as a shell reports death by that signal
    except KeyboardInterrupt:
        print("scratchformer: interrupted", file=sys.stderr)
        return 130
    except jax.errors.JaxRuntimeError as e:  # what memory.check_fits could not foresee
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"scratchformer: error: out of memory ({str(e).splitlines()[0]}); choose a smaller model, "
              "batch or sample", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
