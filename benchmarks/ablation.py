"""Block options and Muon, one at a time: recipes x seeds at an LM preset, each a run of
`scratchformer train lm` in its own process, with the time to reach a validation loss.

    python benchmarks/ablation.py --data tinyshakespeare.txt --out-dir runs/ablation \
        [--preset cpu-quick-classic] [--seeds 0 1 2] [--recipes classic new ...] [--eval-every 100]

Recipes: `classic` (the preset as it is), `new` (every technique in NEW), `new-X` (new
without technique X: the preset's own setting for it), and the extras `new+wsd`,
`new+dropout` and `classic+muon` (not run unless named); from a preset that has its
recipe already (`--preset cpu`: the classic block with Muon), `preset` (= `classic`) and
`preset+X`, one change of ON_PRESET at a time, and `preset-X`, one of the preset's own
techniques (OFF_PRESET) turned off. Runs go in seed-major order, so a stopped
ablation has whole seeds. A run whose folder holds a summary.json is read, not run again
(--read-only: nothing is run; a partial ablation's table). `--recipe NAME=KEY=VALUE,...`
names a recipe of one's own (benchmarks/gpu_profile.sh's Muon recipes for the `gpu` preset).

Per run: the final validation loss (whole split, summary.json), the training time and
time per step (summary's train_time_s / steps: periodic evaluations and checkpoints
included), and the step and seconds at which the periodic validation loss (data.eval_windows
windows, every --eval-every steps) first reached each of --thresholds; the seconds are those
the training loop prints with each evaluation (from the loop's start, compilation of the
training call excluded, as train_time_s). Load averages are recorded before and after each
run. Prints a line per run, then a markdown table of medians over seeds (min-max for the
final loss); writes every run to --json as it finishes.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scipy import stats  # a dependency of JAX's

THRESHOLDS = (1.60, 1.55, 1.50)  # the cpu preset's range; --thresholds 1.80 1.75 1.70 suits cpu-quick

# Each technique as the --set values that turn it on; `new` is all of them.
NEW = {
    "muon": ["optim.name=muon"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "qk_norm": ["model.qk_norm=true"],
    "relu2": ["model.activation=relu2"],
    "zero_init": ["model.zero_init=true"],
    "untied": ["model.tie_embeddings=false"],
    "softcap": ["model.logit_softcap=15"],
}
EXTRAS = {
    "new+wsd": ["optim.schedule=wsd"],
    "new+dropout": ["model.dropout=0.1"],
}

# One change at a time from a preset's own recipe (`preset+X`).
ON_PRESET = {
    "ema": ["train.ema=0.98"],
    "qk_norm": ["model.qk_norm=true"],
    "dropout": ["model.dropout=0.1"],
    "muon_wd": ["optim.muon_weight_decay=0.1"],
    "context256": ["model.block_size=256", "train.batch_size=16", "model.attn_block=128"],  # tokens per step kept
    "adamw": ["optim.name=adamw"],
    "epoch_order": ["data.order=epoch"],  # every window once an epoch, reshuffled
    "value_embed": ["model.value_embed=true"],  # the LM options of the speedruns (models.py)
    "unet_skips": ["model.unet_skips=true"],
    "attn_gate": ["model.attn_gate=true"],
    "lm_options": ["model.value_embed=true", "model.unet_skips=true", "model.attn_gate=true"],
    "bigram_embed": ["model.bigram_embed=true"],
    "polar_express": ["optim.muon_coeffs=polar_express"],  # Muon's variants (optim/muon.py)
    "normuon": ["optim.normuon_beta2=0.95"],
    "mtp": ["model.mtp_depth=1"],  # multi-token prediction: one module, DeepSeek-V3's weight 0.3
    # the block options and schedule of NEW and EXTRAS that the Muon presets leave off
    "rmsnorm": NEW["rmsnorm"], "relu2": NEW["relu2"], "zero_init": NEW["zero_init"],
    "untied": NEW["untied"], "softcap": NEW["softcap"], "wsd": EXTRAS["new+wsd"],
}
# What the Muon presets turn on, turned off (`preset-X`).
OFF_PRESET = {
    "ema": ["train.ema=0"],
    "muon_wd": ["optim.muon_weight_decay=0"],
}


def recipes() -> dict[str, list[str]]:
    """Every recipe's --set values, by name, in the default running order."""
    new = [s for sets in NEW.values() for s in sets]
    out = {"classic": [], "new": new}
    for name in NEW:
        out[f"new-{name}"] = [s for k, sets in NEW.items() if k != name for s in sets]
    for name, sets in EXTRAS.items():
        out[name] = new + sets
    out["classic+muon"] = NEW["muon"]  # the one technique that moves the loss most, alone
    out["preset"] = []
    for name, sets in ON_PRESET.items():
        out[f"preset+{name}"] = sets
    for name, sets in OFF_PRESET.items():
        out[f"preset-{name}"] = sets
    return out


DEFAULT_RECIPES = ["classic", "new"] + [f"new-{n}" for n in NEW]
EVAL_LINE = re.compile(r"^step (\d+): val_loss (\S+) \(([\d.]+) s\)$", re.M)


def train(name: str, sets: list[str], seed: int, args) -> dict:
    run_dir = Path(args.out_dir) / f"{name}-s{seed}"
    log = Path(args.out_dir) / f"{name}-s{seed}.log"
    cmd = [sys.executable, "-m", "scratchformer", "train", "lm", "--preset", args.preset, "--data", args.data,
           "--seed", str(seed), "--out", str(run_dir), "--no-progress",
           "--set", f"train.eval_every={args.eval_every}"]
    for s in sets + args.set:
        cmd += ["--set", s]
    load_before = os.getloadavg()
    wall = None
    if not (run_dir / "summary.json").exists():
        if args.read_only:
            return None
        t0 = time.perf_counter()
        with open(log, "w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed (exit {done.returncode}); see {log}")
    return read_run(name, seed, run_dir, log, cmd=cmd, wall=wall, load=(load_before, os.getloadavg()),
                    thresholds=args.thresholds)


def read_run(name: str, seed: int, run_dir: Path, log: Path, *, cmd, wall, load, thresholds) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    seconds = {int(m[1]): float(m[3]) for m in EVAL_LINE.finditer(log.read_text())} if log.exists() else {}
    steps, train_s = summary["steps"], summary["train_time_s"]
    reached = {}
    for thr in thresholds:
        hit = next((s for s in sorted(evals) if evals[s] is not None and evals[s] <= thr), None)
        reached[f"{thr:g}"] = None if hit is None else {"step": hit, "s": seconds.get(hit, hit * train_s / steps)}
    return {"recipe": name, "seed": seed, "val_loss": summary["val_loss"], "best_periodic_val_loss":
            summary["best_periodic_val_loss"], "train_time_s": train_s, "ms_per_step": 1000 * train_s / steps,
            "steps": steps, "wall_s": wall, "load_before": load[0], "load_after": load[1], "reached": reached,
            "periodic": evals, "command": " ".join(cmd)}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that a and b have the same mean (None with
    fewer than two of either, or no spread in both)."""
    if min(len(a), len(b)) < 2 or statistics.pvariance(a) + statistics.pvariance(b) == 0:
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def table(runs: list[dict], order: list[str], thresholds) -> str:
    """Per recipe: the final loss's mean and standard deviation over seeds, Welch's p
    against the first recipe (the baseline), and medians; a threshold's median counts only
    seeds that reached it (n/N says how many did)."""
    head = ["recipe", "seeds", "val loss mean", "sd", "p", "median (min-max)", "train s", "ms/step"]
    base = [r["val_loss"] for r in runs if r["recipe"] == order[0]]
    for thr in thresholds:
        head.append(f"<= {thr:g}: step / s (n)")
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    for name in order:
        rs = [r for r in runs if r["recipe"] == name]
        if not rs:
            continue
        vals = [r["val_loss"] for r in rs]
        sd = statistics.stdev(vals) if len(vals) > 1 else None
        p = None if name == order[0] else welch_p(vals, base)
        cells = [name, str(len(rs)), f"{statistics.mean(vals):.4f}", fmt(sd, ".4f"), fmt(p, ".3f"),
                 f"{median(vals):.4f} ({min(vals):.4f}-{max(vals):.4f})",
                 fmt(median([r["train_time_s"] for r in rs]), ".1f"), fmt(median([r["ms_per_step"] for r in rs]), ".1f")]
        for thr in thresholds:
            hits = [r["reached"][f"{thr:g}"] for r in rs if r["reached"][f"{thr:g}"]]
            if not hits:
                cells.append(f"- (0/{len(rs)})")
            else:
                cells.append(f"{median([h['step'] for h in hits]):.0f} / {median([h['s'] for h in hits]):.1f} "
                             f"({len(hits)}/{len(rs)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def line(r: dict) -> str:
    hits = ", ".join(f"<={k}: " + (f"step {v['step']} {v['s']:.1f} s" if v else "-") for k, v in r["reached"].items())
    wall = fmt(r["wall_s"], ".1f")
    return (f"{r['recipe']} seed {r['seed']}: val {r['val_loss']:.4f}, train {r['train_time_s']:.1f} s, "
            f"{r['ms_per_step']:.1f} ms/step, whole {wall} s; {hits}; load {r['load_before'][0]:.2f} -> "
            f"{r['load_after'][0]:.2f}")


def main(argv=None) -> None:
    every = recipes()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the LM's text file")
    ap.add_argument("--out-dir", required=True, help="folder for the run folders and their logs")
    ap.add_argument("--preset", default="cpu-quick-classic")  # AdamW: the recipes add Muon themselves
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="recipes to run, in order")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
                    help="a recipe of one's own: its name and --set values (repeatable)")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between periodic evaluations")
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                    help="validation losses whose first step and time are reported")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run, after the recipe's")
    ap.add_argument("--read-only", action="store_true",
                    help="run nothing: the table of the runs already in OUT_DIR (load figures are then today's)")
    ap.add_argument("--json", help="write the runs here (default OUT_DIR/ablation.json)")
    args = ap.parse_args(argv)
    for spec in args.recipe:
        name, _, sets = spec.partition("=")
        if not name or "=" not in sets:
            ap.error(f"--recipe {spec!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
        every[name] = sets.split(",")
    unknown = [n for n in args.recipes if n not in every]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(every)}")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(args.json or Path(args.out_dir) / "ablation.json")
    runs = []
    for seed in args.seeds:
        for name in args.recipes:
            run = train(name, every[name], seed, args)
            if run is None:
                continue
            runs.append(run)
            print(line(run), flush=True)
            out.write_text(json.dumps({"preset": args.preset, "recipes": {n: every[n] for n in args.recipes},
                                       "runs": runs}, indent=1) + "\n")
    print(table(runs, args.recipes, args.thresholds))


if __name__ == "__main__":
    main()
