"""Command line: argument parsing only; the work is done by the modules it calls.

Errors a person can cause become one line on stderr and exit code 2; a run that
diverges (NaN/inf) exits 1. No tracebacks for either.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import __version__
from .config import DEFAULT_PRESET, PRESETS, describe_keys

EXAMPLES = """examples:
  scratchformer train reverse --out runs/rev       # encoder-decoder learns to reverse sequences (~35 s)
  scratchformer sample runs/rev --input "7 3 9 1"  # -> 1 9 3 7
  scratchformer train lm --preset cpu-quick --out runs/quick   # Tiny Shakespeare char LM (~40 s)
  scratchformer eval runs/quick --json
  scratchformer eval runs/quick --data other.txt   # the loss on a text of your choice
  scratchformer sample runs/quick --prompt "ROMEO:" --tokens 300
  scratchformer plot runs/quick                    # runs/quick/loss.png, attention.png
  scratchformer plot runs/quick runs/rope --out compare.png   # several runs on one figure
  scratchformer train lm --data my.txt --set model.n_layer=2 --steps 500
  scratchformer train lm --config runs/quick --seed 1 --out runs/quick1   # the same run, another seed
  scratchformer bench
"""


MAX_SAMPLE_TOKENS = 10**9  # positions are int32; memory.check_fits catches far fewer on most machines
# `sample`'s options for an LM run, with their defaults; --input and --beam are a reverse run's.
SAMPLE_LM = {"prompt": "\n", "tokens": 500, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 0,
             "no_cache": False}


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be > 0")
    return v


MAX_BEAM = 64


def _beam_width(s):
    v = _positive_int(s)
    if v > MAX_BEAM:
        raise argparse.ArgumentTypeError(f"{s!r} must be at most {MAX_BEAM}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scratchformer", description="Transformers from scratch in pure JAX: train, evaluate, "
                "sample and plot.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"scratchformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    presets = "; ".join(f"{t}: " + ", ".join(p + (" (default)" if p == DEFAULT_PRESET[t] else "") for p in ps)
                        for t, ps in PRESETS.items())
    t = sub.add_parser("train", help="train a model", description="Train a model and write a run folder "
                       "(config.json, metrics.jsonl, summary.json, checkpoints/).",
                       epilog=f"presets: {presets}\n\nconfig keys for --set (type, default before presets):\n  "
                       + "\n  ".join(describe_keys()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("task", choices=list(PRESETS), help="reverse (encoder-decoder) or lm (character LM)")
    t.add_argument("--preset", help="named settings (see below)")
    t.add_argument("--out", help="run folder (default runs/TASK-PRESET-TIME)")
    t.add_argument("--steps", type=_positive_int, help="optimizer steps (= --set train.steps=N)")
    t.add_argument("--seed", type=int, help="random seed (= --set train.seed=N)")
    t.add_argument("--data", help="lm: a UTF-8 text file instead of Tiny Shakespeare (with --resume: the "
                   "run's own file unless given)")
    t.add_argument("--config", metavar="FILE", help="settings from a JSON file: a run's config.json or "
                   "its folder (to train that run again), or any part of one; applied after --preset, before --set")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.n_layer=2 (repeatable)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (Ctrl-C saves one and stops; "
                   "a second Ctrl-C stops at once)")
    t.add_argument("--fsdp", action="store_true", help="shard parameters and optimizer state across devices")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--dry-run", action="store_true", help="compile the training step, check that it fits in "
                   "memory, print the parameter count and memory, and stop (nothing is written)")
    t.add_argument("--coordinator", help="multi-process: HOST:PORT of process 0")
    t.add_argument("--num-processes", type=_positive_int, help="multi-process: number of processes")
    t.add_argument("--process-id", type=int, help="multi-process: this process's index")

    run_help = "a run folder (its best checkpoint), or one checkpoint file (runs/x/checkpoints/step_*.safetensors)"
    e = sub.add_parser("eval", help="evaluate a run's best checkpoint on its held-out data")
    e.add_argument("dir", metavar="DIR", help=run_help)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--beam", type=_beam_width, help=f"reverse: beam width, 1 (greedy, the default) to {MAX_BEAM}")
    e.add_argument("--data", help="lm: the loss on this UTF-8 text file, all of it (default: the validation "
                   "split of the run's own text)")

    s = sub.add_parser("sample", help="generate from a trained run")
    s.add_argument("dir", metavar="DIR", help=run_help)
    # The defaults of one task's options are filled in by cmd_sample, so that an option
    # given for the other task's run is an error rather than ignored.
    s.add_argument("--prompt", help="lm: text to continue (default a newline)")
    s.add_argument("--tokens", type=_positive_int, help=f"lm: characters to generate (default {SAMPLE_LM['tokens']})")
    s.add_argument("--temperature", type=float, help=f"lm: 0 = greedy (default {SAMPLE_LM['temperature']})")
    s.add_argument("--top-k", type=int, help="lm: keep the k most likely (0 = all, the default)")
    s.add_argument("--top-p", type=float, help="lm: nucleus mass (1 = off, the default)")
    s.add_argument("--seed", type=int, help="lm: the sampling noise's seed (default 0)")
    s.add_argument("--no-cache", action="store_true", help="lm: full forward pass per token (slow; for checking)")
    s.add_argument("--input", help="reverse: space-separated symbols, e.g. '7 3 9 1'")
    s.add_argument("--beam", type=_beam_width, help=f"reverse: beam width, 1 (greedy, the default) to {MAX_BEAM}")

    pl = sub.add_parser("plot", help="write loss.png and attention.png into the run folder, or compare runs",
                        description="One run: loss.png and attention.png in its folder. Several runs of one "
                                    "task: one figure of their losses (--out), labelled by the config values "
                                    "that differ, and a table of their best and final validation losses.")
    pl.add_argument("dirs", nargs="+", metavar="DIR")
    pl.add_argument("--out", help="several runs: the figure's path (default compare.png)")

    b = sub.add_parser("bench", help="measure training and sampling speed on this machine")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke test)")
    return p


def cmd_train(a) -> int:
    from .parallel import initialize_distributed
    initialize_distributed(a.coordinator, a.num_processes, a.process_id)

    from .config import make_config, overrides_from_file, parse_set_args
    from .tasks import LMTask, ReverseTask
    from .train import fit

    overrides = {**(overrides_from_file(a.config, a.task) if a.config else {}), **parse_set_args(a.sets)}
    if a.steps is not None:
        overrides["train.steps"] = str(a.steps)
    if a.seed is not None:
        overrides["train.seed"] = str(a.seed)
    preset = a.preset or DEFAULT_PRESET[a.task]
    out = a.out or f"runs/{a.task}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if a.resume and not a.out:
        raise UsageError("--resume needs --out DIR, the run to continue")
    if a.resume and not (a.preset or overrides):
        cfg = _saved_config(out, a.task)  # continue exactly the run that was started
    else:
        cfg = make_config(a.task, preset, overrides)
    note = _cpu_note(cfg, preset, _jax_backend())
    if note:
        print(f"scratchformer: note: {note}", file=sys.stderr)
    if a.task == "lm":
        from .data import text
        path = a.data
        if path is None:
            path = (_resumed_data(out) if a.resume else None) or text.shakespeare_path()
        task = LMTask.from_file(cfg, path)
    else:
        if a.data is not None:
            raise UsageError("--data is for the lm task; reverse generates its data")
        task = ReverseTask(cfg)
    if a.dry_run:
        plan = fit(task, out, resume=a.resume, fsdp=a.fsdp, dry_run=True)
        print(plan["header"])
        fits = ("fits in memory" if plan["bytes_per_device"] else
                "has no memory figure from XLA on this backend, so its fit was not checked")
        print(f"dry run: the training step compiled and {fits}; nothing was trained or written")
        return 0
    summary = fit(task, out, resume=a.resume, fsdp=a.fsdp, progress=not a.no_progress)
    from .parallel import is_main
    if is_main():
        print(f"run folder: {out}")
        print(_describe(summary))
    return 0


def _jax_backend() -> str:
    import jax
    return jax.default_backend()


def _cpu_note(cfg, preset: str, backend: str) -> str | None:
    """A line for settings that are meant for a GPU but about to run on a CPU."""
    if backend != "cpu":
        return None
    if preset == "gpu":  # the figures are the preset's own, whatever --set changed
        from .config import make_config
        m, t = (g := make_config("lm", "gpu")).model, g.train
        return (f"the gpu preset ({m.n_layer}x{m.d_model}, batch {t.batch_size} x {m.block_size}, {m.dtype}) is "
                f"sized for a GPU; on a 2-core CPU a step of it takes ~6 s, its {t.steps:,} steps "
                f"~{6 * t.steps / 3600:.0f} hours "
                "(the cpu preset is sized for a CPU)")
    if cfg.model.dtype == "bfloat16":
        return "model.dtype=bfloat16 is slower than float32 on a CPU; it is meant for GPUs"
    return None


def _resumed_data(out: str) -> str | None:
    """The text file that the run in `out` trained on (its latest checkpoint says), so
    that `--resume` without `--data` continues on the same text."""
    from pathlib import Path

    from .checkpoint import latest, read_meta
    last = latest(out)
    path = (read_meta(last).get("data") or {}).get("path") if last else None
    if path and not Path(path).is_file():
        raise UsageError(f"--resume: the run's text file {path} is gone; pass --data FILE with the same text")
    return path


def _saved_config(out: str, task: str):
    from pathlib import Path

    from .checkpoint import CheckpointError
    from .config import ConfigError, from_file
    path = Path(out) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"--resume: {out} has no checkpoint to resume from (no config.json)")
    try:
        cfg = from_file(path)
    except ConfigError as e:
        raise ConfigError(f"--resume: {e}") from None
    if cfg.task != task:
        raise UsageError(f"--resume: {out} is a {cfg.task!r} run, not {task!r}")
    return cfg


def _describe(s: dict) -> str:
    trained = ""
    if "train_time_s" in s:  # a resumed run timed only the steps after its checkpoint
        r = s.get("resumed_from")
        steps = f"steps {r}-{s['steps']}" if r else f"{s['steps']} steps"
        trained = (f"; trained {steps} in {s['train_time_s']:.1f} s" if r != s["steps"]
                   else f"; the run had already trained its {r} steps")
    if s["task"] == "reverse":
        return (f"held-out exact match {100 * s['exact_match']:.2f}% on {s['sequences']} sequences "
                f"(token accuracy {100 * s['token_accuracy']:.2f}%, val loss {s['val_loss']:.4f})" + trained)
    return (f"validation loss {s['val_loss']:.4f} (perplexity {s['val_perplexity']:.3f}) over "
            f"{s['val_tokens']} tokens" + trained)


def cmd_eval(a) -> int:
    from . import runs
    from .checkpoint import strict_json
    if a.data is not None:
        return _eval_text(a, *runs.load(a.dir))
    task, params, meta = runs.load(a.dir, with_data=True)
    if task.name == "lm" and a.beam is not None:
        raise UsageError("--beam is for reverse runs; an lm run is evaluated by its loss")
    a.beam = a.beam or 1
    if task.name == "reverse":
        n = len(task.eval_set()["src"])
        with _eval_progress(n, shown=n * a.beam > 40_000, unit="seq", desc="decoding") as bar:
            result = {"task": "reverse", **task.evaluate(params, full=True, beam=a.beam, on_decoded=bar.update)}
    else:
        result = {"task": "lm", **task.evaluate(params, full=True)}
    result["step"] = meta.get("step")
    print(strict_json(result) if a.json else _describe(result))
    return 0


def _eval_text(a, task, params, meta) -> int:
    """An LM run's loss on a text of the user's choosing, every character of it scored."""
    import math

    from .checkpoint import strict_json
    from .data import text
    if task.name != "lm":
        raise UsageError("--data is for lm runs; a reverse run is evaluated on its generated held-out set")
    if a.beam is not None:
        raise UsageError("--beam is for reverse runs; an lm run is evaluated by its loss")
    corpus = text.read_text(a.data)
    unknown = sorted(set(corpus) - set(task.tokenizer.chars))
    if unknown:
        raise UsageError(f"--data {a.data} holds {len(unknown)} character(s) the model has no token for "
                         f"({text.named_characters(unknown)}); "
                         f"it knows the {len(task.tokenizer)} characters of the text it trained on")
    block = task.cfg.model.block_size
    if len(corpus) <= block:
        raise UsageError(f"--data {a.data} has {len(corpus)} characters; the model reads windows of "
                         f"model.block_size={block}, so it needs at least {block + 1}")
    ids = task.tokenizer.encode(corpus)
    targets = len(ids) - 1  # every character but the first
    with _eval_progress(targets, shown=targets > 500_000) as bar:
        loss, n = task.loss_on(params, ids, on_scored=bar.update)
    result = {"task": "lm", "data": str(a.data), "loss": loss, "perplexity": math.exp(loss), "tokens": n,
              "step": meta.get("step")}
    print(strict_json(result) if a.json else
          f"loss on {a.data}: {loss:.4f} (perplexity {math.exp(loss):.3f}) over {n} tokens, checkpoint of step "
          f"{result['step']}")
    return 0


def _eval_progress(total: int, *, shown: bool, unit: str = "char", desc: str = "scoring"):
    """A progress bar for an evaluation that takes several seconds or more (`shown`: an
    LM text of over 500,000 characters; a reverse evaluation of over 40,000 hypotheses,
    beam 5 and up on the 10,000 sequences), on a terminal or in a notebook only; erased
    when done (the result line is the command's output)."""
    from tqdm.auto import tqdm

    shown = shown and (sys.stderr.isatty() or "ipykernel" in sys.modules)
    return tqdm(total=total, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5, desc=desc, disable=not shown)


def cmd_sample(a) -> int:
    from . import runs
    from .decode import generate, seq2seq_decode
    task, params, _ = runs.load(a.dir)
    given = [k for k in SAMPLE_LM if getattr(a, k) is not None and getattr(a, k) is not False]  # 0 counts
    lm_options = [f"--{k.replace('_', '-')}" for k in given]
    if task.name == "reverse":
        from .data import reverse
        if lm_options:
            raise UsageError(f"{', '.join(lm_options)} {'is' if len(lm_options) == 1 else 'are'} for lm runs; a "
                             "reverse run takes --input and --beam")
        if a.input is None:
            raise UsageError("sample on a reverse run needs --input, e.g. --input '7 3 9 1'")
        d = task.cfg.data
        src = reverse.parse_symbols(a.input, n_symbols=d.vocab_size, max_len=d.max_len)
        out = seq2seq_decode(params, task.cfg.model, src, beam=a.beam or 1)
        print(" ".join(str(x) for x in reverse.output_symbols(out[0])))
        note = reverse.output_note(out[0])
        if note:
            print(f"scratchformer: note: {note}", file=sys.stderr)
        return 0
    if a.input is not None or a.beam is not None:
        raise UsageError(f"{'--input' if a.input is not None else '--beam'} is for reverse runs; an lm run takes "
                         "--prompt")
    for k, default in SAMPLE_LM.items():
        if getattr(a, k) is None:  # --no-cache is False when not given
            setattr(a, k, default)
    if a.temperature < 0:
        raise UsageError(f"--temperature={a.temperature} must be >= 0")
    if not 0 < a.top_p <= 1:
        raise UsageError(f"--top-p={a.top_p} must be in (0, 1]")
    if not 0 <= a.top_k <= task.cfg.model.vocab_size:
        raise UsageError(f"--top-k={a.top_k} must be in [0, {task.cfg.model.vocab_size}]")
    if not a.prompt:
        raise UsageError("--prompt is empty; give at least one character")
    if a.tokens > MAX_SAMPLE_TOKENS:
        raise UsageError(f"--tokens={a.tokens:,} must be at most {MAX_SAMPLE_TOKENS:,}")
    if "\\" in a.prompt and "\\" not in task.tokenizer.chars:
        raise UsageError(f"--prompt \"{a.prompt}\" holds a backslash, which is not in the model's vocabulary; for a "
                         "newline, pass a real one (bash: --prompt $'ROMEO:\\n')")
    ids = task.tokenizer.encode(a.prompt)
    out = generate(params, task.cfg.model, ids, a.tokens, seed=a.seed, temperature=a.temperature,
                   top_k=a.top_k, top_p=a.top_p, use_cache=not a.no_cache)
    sys.stdout.write(task.tokenizer.decode(out) + "\n")
    return 0


def cmd_plot(a) -> int:
    from .plots import compare_runs, plot_run
    if len(a.dirs) == 1:
        if a.out is not None:
            raise UsageError(f"--out {a.out} is for comparing several runs; plot DIR writes into DIR")
        for path in plot_run(a.dirs[0]):
            print(path)
        return 0
    path, rows = compare_runs(a.dirs, a.out or "compare.png")
    print(f"{'run':<30} {'steps':>7} {'best val loss (step)':>22} {'final val loss':>15} {'train s':>8}")
    for r in rows:
        best = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f} ({r['best_step']})"
        final = "-" if r["final_val_loss"] is None else f"{r['final_val_loss']:.4f}"
        secs = "-" if r["train_time_s"] is None else f"{r['train_time_s']:.1f}"
        print(f"{r['run']:<30} {r['steps']:>7} {best:>22} {final:>15} {secs:>8}")
    print(path)
    return 0


def cmd_bench(a) -> int:
    from .bench import main as bench_main
    return bench_main(as_json=a.json, quick=a.quick)


def main(argv=None) -> int:
    if argv is None:  # run as the program (not called from Python): huge pages for XLA's buffers
        from .hugepages import reexec_if_wanted
        reexec_if_wanted()
    parser = build_parser()
    import jax

    from .checkpoint import CheckpointError
    from .train import TrainingDiverged, TrainingInterrupted
    try:
        a = parser.parse_args(argv)
        if a.command is None:
            parser.print_help()
            return 2
        return {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot,
                "bench": cmd_bench}[a.command](a)
    except TrainingDiverged as e:
        print(f"scratchformer: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"scratchformer: {e}", file=sys.stderr)
        return 128 + e.signum  # as a shell reports death by that signal
    except (ValueError, CheckpointError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"scratchformer: error: {msg}", file=sys.stderr)
        return 2
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
