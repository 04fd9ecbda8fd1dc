"""Pictures of a run: loss curves (loss.png) and attention weights (attention.png):
for reversal the decoder's cross-attention on one held-out example, for the LM every
layer's and head's causal self-attention over a line of held-out text. And several
runs of one task compared on one figure (their losses, labelled by what differs)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .checkpoint import flatten
from .data.reverse import BOS, OFFSET, output_symbols
from .decode import generate, greedy
from .errors import DataError, UsageError
from .files import atomic_write_bytes
from .models import PAD_ID, decode, encode, lm_attention, memory_kv
from .runs import load, read_metrics, read_run
from .tasks import task_class


def _matplotlib():
    # Imported here, by the figures alone: pyplot takes longer to import than most commands
    # take to run (BENCHMARKS.md, "Start-up").
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    head = c[1:window] / np.arange(1, window)
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def plot_loss(run_dir, tokens_per_step: int, unit: str) -> Path:
    """Losses (top) and, below on the same steps, the gradient norm before clipping and
    the learning rate the schedule gave each step."""
    plt = _matplotlib()
    train, evals, not_finite = read_metrics(run_dir)
    fig, (ax, low) = plt.subplots(2, 1, figsize=(8, 7), dpi=120, sharex=True, height_ratios=(2.4, 1))
    if train:
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train], np.float64)
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (per step)")
        w = max(1, len(steps) // 50)
        ax.plot(steps, _smooth(loss, w), color="tab:blue", lw=1.8, label=f"train loss ({w}-step mean)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange",
                lw=1.8, label="validation loss")
    if not_finite:  # steps that train.skip_nonfinite skipped, or where a diverged run stopped
        ax.plot(not_finite, np.zeros(len(not_finite)), "|", color="tab:red", ms=12, mew=1.5,
                transform=ax.get_xaxis_transform(), label=f"loss or gradient not finite ({len(not_finite):,} steps)")
    ax.set_ylabel("cross-entropy (nats / token)")
    values = [r["loss"] for r in train] + [r["val_loss"] for r in evals]
    _log_if_near_zero(ax, values)
    ax.grid(True, which="both", alpha=0.3)
    if train or evals or not_finite:
        ax.legend()
    else:  # a run that has not finished its first jitted call
        ax.text(0.5, 0.5, "no rows in metrics.jsonl yet", transform=ax.transAxes, ha="center", va="center")
    top = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step / 1e6,
                                               lambda t: t * 1e6 / tokens_per_step))
    top.set_xlabel(f"{'tokens' if unit == 'tok' else 'sequences'} seen (millions)")
    ax.set_title(f"{Path(run_dir).name}: loss", pad=12)
    _plot_optimizer(low, train)
    out = Path(run_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _plain_log_labels():
    """Matplotlib's choice of which log-axis ticks to label, written as plain numbers."""
    from matplotlib.ticker import LogFormatter  # matplotlib loads with the figures alone (_matplotlib)

    class Plain(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""
    return Plain()


def _log_if_near_zero(ax, losses) -> None:
    """Losses that go to ~0 (reversal) read better on a log axis, labelled 0.3, 1, 2."""
    if losses and min(losses) < 0.3:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_log_labels())
        ax.yaxis.set_minor_formatter(_plain_log_labels())


def _plot_optimizer(ax, train: list[dict]) -> None:
    """Gradient norm (left axis, log) and learning rate (right axis) per step."""
    ax.set_xlabel("optimizer step")
    rows = [r for r in train if r.get("grad_norm") is not None]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["grad_norm"] for r in rows], color="tab:green", lw=0.8, label="gradient norm (before clipping)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain_log_labels())  # 0.6, 1, 2 rather than 6x10^-1
    ax.yaxis.set_minor_formatter(_plain_log_labels())
    ax.set_ylabel("gradient norm")
    ax.grid(True, which="major", alpha=0.3)
    lr = ax.twinx()
    lr.plot(steps, [r["lr"] for r in rows], color="tab:red", lw=1.5, label="learning rate")
    lr.set_ylabel("learning rate")
    lr.set_ylim(bottom=0)
    lines = ax.get_lines() + lr.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)


def plot_cross_attention(run_dir, task, params, meta: dict) -> Path:
    """Decoder cross-attention (every layer and head) for the first held-out example,
    with the model's own output as the decoder input."""
    cfg = task.cfg.model
    ev = task.eval_set()
    i = int(np.argmax((ev["src"] != PAD_ID).sum(1) >= min(12, task.cfg.data.max_len)))  # a longish example
    src = jnp.asarray(ev["src"][i:i + 1])
    out = np.asarray(greedy(params, src, cfg=cfg, max_out=src.shape[1] + 1))
    n_src = int((ev["src"][i] != PAD_ID).sum())
    n_out = len(output_symbols(out[0])) + 1  # + EOS
    tgt_in = jnp.concatenate([jnp.full((1, 1), BOS, jnp.int32), jnp.asarray(out[:, :-1])], axis=1)
    kvs = memory_kv(params, encode(params, src, cfg=cfg), cfg)
    _, _, probs = decode(params, tgt_in, kvs, src != PAD_ID, cfg=cfg)
    src_labels = [str(t - OFFSET) for t in ev["src"][i][:n_src]]
    out_labels = [str(t - OFFSET) for t in out[0][:n_out - 1]] + ["EOS"]
    return _attention_grid(Path(run_dir) / "attention.png", [np.asarray(p[0, :, :n_out, :n_src]) for p in probs],
                           out_labels, src_labels, ylabel="output symbol", xlabel="source symbol",
                           title="decoder cross-attention on a held-out example\n(reversal: expect the anti-diagonal)")


def _char_label(c: str) -> str:
    return {" ": "\u2423", "\n": "\u21b5", "\t": "\u2192"}.get(c, c if c.isprintable() else repr(c)[1:-1])


LABEL_CHARS = 12  # a longer token's label is cut, so that a long BPE merge leaves the heat maps their room


def token_labels(tokenizer, ids) -> list[str]:
    """One label per token: its own text, spaces and newlines made visible, cut to
    LABEL_CHARS with an ellipsis."""
    labels = ["".join(_char_label(c) for c in tokenizer.decode([int(i)])) for i in ids]
    return [s if len(s) <= LABEL_CHARS else s[:LABEL_CHARS - 1] + "\u2026" for s in labels]


def lm_snippet(task, params, meta: dict, run_dir, length: int = 40) -> tuple[np.ndarray, str]:
    """Token ids to look at the LM's attention on, and what they are: held-out text from
    the validation split's first line that is not empty, when the run's text file is at
    hand, else the model's own sample (seed 0, temperature 0.8)."""
    length = min(length, task.cfg.model.block_size)
    try:
        val = task.with_training_data(meta, run_dir).val_ids
    except DataError:
        ids = generate(params, task.cfg.model, [0], length - 1, seed=0, temperature=0.8)
        return ids, "the model's own sample (the run's text file is not at hand)"
    newline = task.tokenizer.encode("\n")[-1]  # one symbol for characters and byte-level BPE alike
    starts = np.flatnonzero((val[:-length - 1] == newline) & (val[1:-length] != newline))
    start = int(starts[0]) + 1 if len(starts) else 0
    return val[start:start + length], "held-out text"


def plot_lm_attention(run_dir, task, params, meta: dict) -> Path:
    """Causal self-attention of every layer and head over `lm_snippet`'s tokens (characters
    for a character-level run), each labelled by its own text."""
    ids, what = lm_snippet(task, params, meta, run_dir)
    probs = lm_attention(params, jnp.asarray(ids)[None], cfg=task.cfg.model)
    labels = token_labels(task.tokenizer, ids)
    unit = "character" if task.tokenizer.kind == "char" else "token"
    return _attention_grid(Path(run_dir) / "attention.png", [np.asarray(p[0]) for p in probs], labels, labels,
                           ylabel="position (query)", xlabel="attends to (key)",
                           title=f"causal self-attention on {what}: row = a {unit}, columns = the "
                                 f"{unit}s up to it")


def _attention_grid(path: Path, probs_per_layer, row_labels, col_labels, *, ylabel: str, xlabel: str,
                    title: str) -> Path:
    """One heat map per layer (rows of the figure) and head (columns): HxTxS arrays."""
    plt = _matplotlib()
    n_l, n_h = len(probs_per_layer), probs_per_layer[0].shape[0]
    side = max(3.0, 0.1 * len(row_labels))  # room for a 6-point label per row
    fig, axes = plt.subplots(n_l, n_h, figsize=((side + 0.4) * n_h, side * n_l + 0.6), dpi=120, squeeze=False)
    for layer, probs in enumerate(probs_per_layer):
        for head in range(n_h):
            ax = axes[layer][head]
            image = ax.imshow(probs[head], cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks(range(len(col_labels)), col_labels, fontsize=6,
                          rotation=90 if max(map(len, col_labels)) > 1 else 0)  # tokens of several characters
            ax.set_yticks(range(len(row_labels)), row_labels, fontsize=6)
            if head == 0:
                ax.set_ylabel(ylabel)
            if layer == n_l - 1:
                ax.set_xlabel(xlabel)
    fig.suptitle(title)
    right = 1 - 0.9 / fig.get_figwidth()  # ~0.9 inch on the right for the colour scale
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.colorbar(image, cax=fig.add_axes((right + 0.1 / fig.get_figwidth(), 0.3, 0.12 / fig.get_figwidth(), 0.4)),
                 label="attention weight")
    fig.savefig(path)
    plt.close(fig)
    return path


ATTENTION = {"reverse": plot_cross_attention, "lm": plot_lm_attention}  # attention.png, by task


def plot_run(run_dir) -> list[Path]:
    """loss.png and attention.png in the run folder (an imported model: attention.png only)."""
    if Path(run_dir).is_file():
        raise UsageError(f"{run_dir} is a file; plot takes the run folder (it reads metrics.jsonl beside the "
                         "checkpoints)")
    task, params, meta = load(run_dir)
    attention = ATTENTION[task.name](run_dir, task, params, meta)
    if meta.get("imported_from") and not (Path(run_dir) / "metrics.jsonl").exists():
        return [attention]  # imported weights: no training of ours to plot
    return [plot_loss(run_dir, task.tokens_per_step(task.cfg), task.unit), attention]


def run_labels(runs: list[dict], most: int = 3) -> list[str]:
    """Each run's folder name and its values of the config keys on which the runs differ."""
    flat = [flatten(r["cfg"].to_dict()) for r in runs]
    keys = sorted(k for k in set().union(*flat) if len({repr(f.get(k)) for f in flat}) > 1)
    labels = []
    for r, f in zip(runs, flat):
        shown = [f"{k}={f.get(k)}" for k in keys[:most]]
        more = f", +{len(keys) - most} more" if len(keys) > most else ""
        labels.append(f"{r['name']}" + (f" ({', '.join(shown)}{more})" if shown else ""))
    return labels


def plot_comparison(ax, runs: list[dict]) -> str:
    """Validation loss (points) and smoothed training loss (thin) of each run, against the
    optimizer step, or against what was seen when the runs' steps differ in size.
    Returns the x axis's name."""
    spec = task_class(runs[0]["cfg"].task)
    sizes = [spec.tokens_per_step(r["cfg"]) for r in runs]
    unit = spec.unit
    by_step = len(set(sizes)) == 1
    xname = "optimizer step" if by_step else f"{'tokens' if unit == 'tok' else 'sequences'} seen (millions)"
    for i, (r, label, size) in enumerate(zip(runs, run_labels(runs), sizes)):
        x = (lambda s: np.asarray(s, np.float64)) if by_step else (lambda s: np.asarray(s, np.float64) * size / 1e6)
        color = f"C{i % 10}"
        if r["train"]:
            loss = np.array([t["loss"] for t in r["train"]], np.float64)
            ax.plot(x([t["step"] for t in r["train"]]), _smooth(loss, max(1, len(loss) // 50)), color=color,
                    lw=0.8, alpha=0.5)
        if r["evals"]:
            ax.plot(x([e["step"] for e in r["evals"]]), [e["val_loss"] for e in r["evals"]], "o-", color=color,
                    lw=1.8, ms=3, label=label)
    ax.set_xlabel(xname)
    ax.set_ylabel("cross-entropy (nats / token)")
    _log_if_near_zero(ax, [e["val_loss"] for r in runs for e in r["evals"]])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return xname


def compare_runs(run_dirs, out) -> tuple[Path, list[dict]]:
    """One figure of several runs of one task (`plot_comparison`), written to `out`
    whole or not at all, and each run's figures for a table: steps, the best periodic
    validation loss and its step, the final one (summary.json; none while a run is
    unfinished) and the training time."""
    runs = [read_run(d) for d in run_dirs]
    tasks = sorted({r["cfg"].task for r in runs})
    if len(tasks) > 1:
        raise UsageError(f"the runs are of different tasks ({', '.join(tasks)}); compare runs of one task")
    out = Path(out)
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} for {out} does not exist")
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out} must end in .png", option="out")
    _note_other_tokenizers(runs)
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    plot_comparison(ax, runs)
    ax.set_title("validation loss (points) and training loss (thin, smoothed)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    rows = []
    for r in runs:
        best = min(r["evals"], key=lambda e: e["val_loss"], default={})
        # a finished run's summary counts every step (rows of skipped, non-finite steps have no loss)
        steps = r["summary"].get("steps") or max((e["step"] for e in r["train"] + r["evals"]), default=0)
        rows.append({"run": str(r["dir"]), "steps": steps,
                     "best_val_loss": best.get("val_loss"), "best_step": best.get("step"),
                     "final_val_loss": r["summary"].get("val_loss"),  # whole held-out set, at the end
                     "train_time_s": r["summary"].get("train_time_s")})
    return out, rows


def _note_other_tokenizers(runs: list[dict]) -> None:
    """A note on stderr where LM runs' tokens differ in kind (characters, BPE) or BPE
    vocabulary: their losses are per token of different sizes, so the curves do not compare
    (bits per byte do). Character runs with other character sets are all per character."""
    texts = {(r["dir"] / "tokenizer.json").read_text() for r in runs if (r["dir"] / "tokenizer.json").is_file()}
    if len(texts) > 1 and not all(map(_is_characters, texts)):
        sizes = ", ".join(f"{r['name']} {r['cfg'].model.vocab_size:,} symbols" for r in runs)
        print(f"scratchformer: note: the runs have different tokenizers ({sizes}): their losses are per token of "
              "different sizes and do not compare; `eval RUN --json` gives each one's bits per byte, which do",
              file=sys.stderr)


def _is_characters(tokenizer_json: str) -> bool:
    """A character tokenizer's JSON (CharTokenizer.to_json); False for anything else."""
    try:
        return json.loads(tokenizer_json).get("kind") == "char"
    except (ValueError, AttributeError):  # not JSON, or not an object: not ours
        return False


def table(rows: list[dict]) -> str:
    """compare_runs' rows as a text table."""
    lines = [f"{'run':<30} {'steps':>7} {'best val loss (step)':>22} {'final val loss':>15} {'train s':>8}"]
    for r in rows:
        best = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f} ({r['best_step']})"
        final = "-" if r["final_val_loss"] is None else f"{r['final_val_loss']:.4f}"
        secs = "-" if r["train_time_s"] is None else f"{r['train_time_s']:.1f}"
        lines.append(f"{r['run']:<30} {r['steps']:>7} {best:>22} {final:>15} {secs:>8}")
    return "\n".join(lines)
