"""Training: the TrainState pytree, the jitted step, and the loop around it.

`train_step(state, batch) -> (state, metrics)` is the one training path. The loop
calls it through `make_train_call`, which draws each batch on device from the step
number and runs `steps_per_call` steps in a `lax.scan` per jitted call (with the
state donated) - a speed option that gives the same numbers as one step per call.

Randomness is a pure function of (seed, step): the batch of step s uses
fold_in(fold_in(rng, s), 0), its dropout fold_in(fold_in(rng, s), 1). A resumed run
therefore draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from . import checkpoint as ckpt
from .config import RunConfig
from .loss import task_loss
from .memory import check_fits, format_bytes, program_bytes, tree_bytes
from .models import init_model
from .optim import AdamWState, adamw_init, adamw_update, clip_by_global_norm, decay_mask
from .parallel import (batch_sharding, bytes_per_device, check_batch, host_value, is_main, make_mesh, put_global,
                       replicated, state_shardings)
from .schedule import warmup_cosine
from .stop import StopRequest


class TrainState(NamedTuple):
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any
    opt_state: AdamWState
    rng: jax.Array         # uint32[2] PRNG key of the run


class TrainingDiverged(RuntimeError):
    """Loss or gradient norm became NaN/inf."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM: the run stopped after saving a checkpoint (see stop.py)."""

    def __init__(self, signum: int, step: int, checkpoint: Path, run: Path):
        super().__init__(f"{signal.Signals(signum).name}: stopped at step {step}, saved {checkpoint}; "
                         f"to continue, run the same command with --out {run} --resume")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def init_state(cfg: RunConfig) -> TrainState:
    k_init, k_run = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    params = init_model(k_init, cfg.model, cfg.task)
    return TrainState(jnp.zeros((), jnp.int32), params, adamw_init(params), k_run)


def init_sharded_state(cfg: RunConfig, shardings) -> TrainState:
    """init_state created directly in its shardings (committed, as the train call returns it,
    so the first and later calls share one compiled executable)."""
    return jax.jit(lambda: init_state(cfg), out_shardings=shardings)()


def state_template(cfg: RunConfig):
    """Shapes and dtypes of the TrainState, without allocating it."""
    return jax.eval_shape(lambda: init_state(cfg))


def lr_at(cfg: RunConfig, step):
    o = cfg.optim
    return warmup_cosine(step, peak=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
                         total_steps=cfg.train.steps)


def make_train_step(cfg: RunConfig, micro_sharding=None):
    """The pure training step for this config: train_step(state, batch) -> (state, metrics)."""
    o, t = cfg.optim, cfg.train
    loss_fn = partial(task_loss(cfg.task), cfg=cfg.model, train=True, label_smoothing=t.label_smoothing)
    grad_fn = jax.value_and_grad(lambda p, b, k: loss_fn(p, b, key=k), has_aux=True)
    mask = decay_mask(state_template(cfg).params, decay_embeddings=o.decay_embeddings)

    def summed_grads(params, batch, key):
        """(sum of token losses, sum of weights, gradient of the sum) over the batch,
        accumulated over grad_accum micro-batches of consecutive rows."""
        if t.grad_accum == 1:
            (s, w), g = grad_fn(params, batch, key)
            return s, w, g
        micro = jax.tree.map(lambda x: x.reshape(t.grad_accum, -1, *x.shape[1:]), batch)

        def body(carry, inp):
            i, mb = inp
            if micro_sharding is not None:
                mb = jax.lax.with_sharding_constraint(mb, micro_sharding)
            (s, w), g = grad_fn(params, mb, jax.random.fold_in(key, i))
            return (carry[0] + s, carry[1] + w, jax.tree.map(jnp.add, carry[2], g)), None

        zero = jnp.zeros((), jnp.float32)
        init = (zero, zero, jax.tree.map(jnp.zeros_like, params))
        (s, w, g), _ = jax.lax.scan(body, init, (jnp.arange(t.grad_accum), micro))
        return s, w, g

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        s, w, g = summed_grads(state.params, batch, key)
        w = jnp.maximum(w, 1.0)
        loss = s / w
        grads, norm = clip_by_global_norm(jax.tree.map(lambda x: x / w, g), o.clip_norm)
        lr = lr_at(cfg, state.step)
        params, opt = adamw_update(grads, state.opt_state, state.params, lr=lr, b1=o.b1, b2=o.b2,
                                   eps=o.eps, weight_decay=o.weight_decay, mask=mask)
        if t.skip_nonfinite:
            ok = jnp.isfinite(loss) & jnp.isfinite(norm)
            params, opt = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                       (params, opt), (state.params, state.opt_state))
        return (TrainState(state.step + 1, params, opt, state.rng),
                {"loss": loss, "grad_norm": norm, "lr": lr})

    return train_step


def make_train_call(cfg: RunConfig, task, n_steps: int, mesh=None, *, fsdp: bool = False):
    """Jitted call running `n_steps` training steps, drawing each batch on device.
    Returns (fn, state_shardings); fn(state, data) -> (state, metrics of n_steps)."""
    mesh = mesh or make_mesh()
    check_batch(cfg.train.batch_size, cfg.train.grad_accum, mesh)
    bs = batch_sharding(mesh)
    step_fn = make_train_step(cfg, micro_sharding=bs if cfg.train.grad_accum > 1 else None)

    steps_bs = NamedSharding(mesh, P(None, *bs.spec))  # n_steps x batch x ..., batch split

    def call(state, data):
        # The batches of all n_steps steps drawn at once, before the loop: the same
        # numbers as drawing each inside its step (batch i depends on rng and step
        # only), but one vectorised random-bits computation instead of one per step
        # (on the CPU each is a loop of ~100 small ops): nano-cpu 18.5 -> 17.9 ms/step.
        def draw(step):
            key = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0)
            return task.sample_batch(data, key, cfg.train.batch_size)
        batches = jax.vmap(draw)(state.step + jnp.arange(n_steps))
        batches = jax.lax.with_sharding_constraint(batches, steps_bs)

        def body(st, batch):
            return step_fn(st, jax.lax.with_sharding_constraint(batch, bs))
        return jax.lax.scan(body, state, batches)

    shardings = state_shardings(state_template(cfg), mesh, fsdp=fsdp)
    fn = jax.jit(call, donate_argnums=0, in_shardings=(shardings, replicated(mesh)),
                 out_shardings=(shardings, replicated(mesh)))
    return fn, shardings


def steps_per_call(cfg: RunConfig) -> int:
    """Largest k <= train.steps_per_call that divides every boundary where the loop must
    stop (evaluation, checkpoint, end), so one compiled call serves the whole run."""
    t = cfg.train
    g = math.gcd(math.gcd(t.eval_every, t.checkpoint_every), t.steps)
    return max(d for d in range(1, min(t.steps_per_call, g) + 1) if g % d == 0)


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class RunFolder:
    """The files of one run: config.json, metrics.jsonl, summary.json, checkpoints/."""

    def __init__(self, path):
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"

    def prepare(self, *, resume: bool) -> None:
        try:
            (self.path / ckpt.CKPT_DIR).mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"--out {self.path} cannot be written ({e.strerror})") from None
        if not resume and (ckpt.latest(self.path) or self.metrics.exists()):
            raise ValueError(f"--out {self.path} already holds a run; pass --resume to continue it "
                             "or choose another --out")
        # Temp files of saves that a kill interrupted (the renamed files are complete).
        for d in (self.path, self.path / ckpt.CKPT_DIR):
            for stale in d.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def write_json(self, name: str, obj) -> None:
        ckpt.atomic_write_bytes(self.path / name, (ckpt.strict_json(obj, indent=2) + "\n").encode())

    def truncate_metrics(self, step: int) -> None:
        """Keep only rows up to `step` (those covered by the checkpoint being resumed);
        unreadable lines (one cut short by a kill) go too."""
        if not self.metrics.exists():
            return
        rows, _ = metrics_rows(self.metrics)
        kept = "".join(ckpt.strict_json(r) + "\n" for r in rows if r["step"] <= step)
        ckpt.atomic_write_bytes(self.metrics, kept.encode())

    def append(self, rows: list[dict]) -> None:
        with open(self.metrics, "a") as f:
            f.write("".join(ckpt.strict_json(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())


def metrics_rows(path) -> tuple[list[dict], list[int]]:
    """The rows of a metrics.jsonl, and the numbers of the lines that are not rows: a
    row is a JSON object with an integer "step" >= 0 whose other values are numbers,
    null (not finite) or true/false ("skipped"). An unreadable last line without its
    newline is a row still being written (or cut short by a kill): left out, not bad."""
    lines = Path(path).read_text(errors="replace").split("\n")
    rows, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if (isinstance(row, dict) and type(row.get("step")) is int and row["step"] >= 0
                and all(v is None or type(v) in (int, float, bool) for k, v in row.items() if k != "step")):
            rows.append(row)
        elif number < len(lines):  # the last element is "" after a final newline
            bad.append(number)
    return rows, bad


def _progress(total: int, initial: int, enabled: bool, per_call: int):
    """A tqdm bar on a terminal or in a notebook; plain lines where stderr is a file or a
    pipe (a log, CI), which a bar would fill with carriage returns on a single line."""
    if enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        return _LogLines(total, initial, per_call)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled,
               file=sys.stderr, mininterval=0.5, smoothing=0.1)
    bar.report = lambda step, text: bar.set_postfix_str(text, refresh=False)
    return bar


class _LogLines:
    """The progress bar's interface, printing `step S/N: loss=...` about every tenth of the
    run, at a multiple of the steps per jitted call (metrics arrive a call at a time)."""

    def __init__(self, total: int, initial: int, per_call: int):
        self.total, self.every = total, max(per_call, total // 10 // per_call * per_call)
        self.next = (initial // self.every + 1) * self.every

    def report(self, step: int, text: str) -> None:
        if step >= self.next or step == self.total:
            print(f"step {step}/{self.total}: {text}", file=sys.stderr, flush=True)
            self.next = (step // self.every + 1) * self.every

    def write(self, line: str, file=None) -> None:
        print(line, file=file or sys.stderr, flush=True)

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _config_difference(saved, now) -> str:
    """The first keys where two config dicts differ, as 'key: saved -> now'."""
    a, b = ckpt.flatten(saved or {}), ckpt.flatten(now)
    diff = [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]
    return ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")


def _footprint(cfg: RunConfig, n: int, fsdp: bool, n_devices: int) -> str:
    m, t = cfg.model, cfg.train
    spread = f", --fsdp over {n_devices} devices" if fsdp else ""
    return (f"training this model (model.n_layer={m.n_layer}, model.d_model={m.d_model}, model.d_ff={m.d_ff}, "
            f"model.block_size={m.block_size}: {n:,} parameters) at train.batch_size="
            f"{t.batch_size}{spread}")


def _memory_advice(fsdp: bool, n_devices: int) -> str:
    more = "; --fsdp splits the parameters and AdamW state over the devices" if n_devices > 1 and not fsdp else ""
    return ("choose a smaller model or train.batch_size (train.grad_accum keeps the tokens per step with a smaller "
            f"batch){more}")


def _header(cfg: RunConfig, n: int, task, compiled, out_dir) -> str:
    """One line before training starts: what is trained, how long, in how much memory."""
    m, t = cfg.model, cfg.train
    shape = f"{m.n_layer}+{m.n_layer} layers" if cfg.task == "reverse" else f"{m.n_layer} layers"
    per_step = f"{task.tokens_per_step():,} {'tokens' if task.unit == 'tok' else 'sequences'}"
    need = program_bytes(compiled)
    memory = f"; needs ~{format_bytes(need)} per device" if need else ""
    return (f"{cfg.task}: {n:,} parameters ({shape} x {m.d_model}, {m.n_head} heads, context "
            f"{m.block_size}, {m.dtype}); {t.steps:,} steps of {per_step}{memory}; run folder {out_dir}")


def fit(task, out_dir, *, resume: bool = False, fsdp: bool = False, progress: bool = True,
        dry_run: bool = False) -> dict:
    """Train `task` under its config (`task.cfg`), writing the run to `out_dir`.
    Returns the summary (also written to summary.json). `task.source` (the text file
    of an LMTask.from_file) is saved with each checkpoint and checked on resume.
    dry_run: compile the step and check that it fits in memory, then return
    {"parameters", "bytes_per_device", "header"} without allocating the training state
    or writing anything (the data is on the devices already: the check counts it)."""
    cfg = task.cfg
    run = RunFolder(out_dir)
    main = is_main()
    mesh = make_mesh()
    k = steps_per_call(cfg)
    call, shardings = make_train_call(cfg, task, k, mesh, fsdp=fsdp)  # validates before anything is written
    data = put_global(task.device_data(), replicated(mesh))
    # Compiled here, not at the first call, so that a run too big for the machine is an
    # error before the state is allocated or the run folder made.
    template = state_template(cfg)
    call = call.lower(template, data).compile()
    n = sum(x.size for x in jax.tree.leaves(template.params))
    check_fits(call, mesh.local_devices, what=_footprint(cfg, n, fsdp, mesh.size),
               advice=_memory_advice(fsdp, mesh.size), allocated=tree_bytes(data))  # replicated: a copy per device
    if dry_run:
        return {"parameters": n, "bytes_per_device": program_bytes(call), "header": _header(cfg, n, task, call, out_dir)}
    if main:
        run.prepare(resume=resume)
    source = getattr(task, "source", None) or {}  # a task of one's own need not have one
    meta_base = {"config": cfg.to_dict(), "task_meta": task.meta(), "data": source}

    best_val = math.inf
    path = ckpt.latest(run.path) if resume else None
    if resume and path is None and not (run.path / "config.json").is_file():
        raise ckpt.CheckpointError(f"--resume: {run.path} has no checkpoint to resume from")
    if path is not None:
        tensors, meta = ckpt.read(path)
        if meta.get("config") != cfg.to_dict():
            raise ckpt.CheckpointError(f"--resume: {path} was saved with a different config "
                                       f"({_config_difference(meta.get('config'), cfg.to_dict())}); a resumed "
                                       "run keeps its config: leave out --preset, --config, --set, --steps and "
                                       "--seed, or start a new run")
        saved = meta.get("data") or {}
        if source and saved.get("sha256") and saved["sha256"] != source.get("sha256"):
            raise ckpt.CheckpointError(f"--resume: the run was trained on {saved.get('path')}, not on "
                                       f"{source.get('path')} (sha256 differs); pass --data {saved.get('path')}")
        host_state = ckpt.restore(tensors, state_template(cfg), source=str(path))
        state = put_global(host_state, shardings)  # any device count: the file holds whole arrays
        best_val = meta.get("best_val_loss") or math.inf
        if main:
            run.truncate_metrics(int(host_state.step))
    else:
        # A fresh run, or a resumed one that was killed before its first checkpoint:
        # the initial state is a function of the seed, so starting over is exact.
        state = init_sharded_state(cfg, shardings)
        if main:
            run.truncate_metrics(0)
            run.write_json("config.json", cfg.to_dict())
    if main:  # once the run is set to start (an error above is the only line); with or without the bar
        print(_header(cfg, n, task, call, out_dir), file=sys.stderr)

    task.mesh = mesh
    start = int(host_value(state.step))
    t = cfg.train
    bar = _progress(t.steps, start, progress and main, k)
    rate_t0, rate_step0 = None, start
    t_start = time.perf_counter()

    def save(state, step, name=None):
        meta = {**meta_base, "step": step, "best_val_loss": _json_float(best_val)}
        path = (run.path / ckpt.CKPT_DIR / name) if name else ckpt.step_path(run.path, step)
        if main:
            ckpt.save(path, state, meta)
        else:
            ckpt.to_host(state)  # every process takes part in gathering sharded arrays
        if main and not name:
            ckpt.prune(run.path, t.keep_checkpoints)

    def consume(first_step, metrics) -> None:
        m = {key: host_value(v) for key, v in metrics.items()}
        rows = []
        for i in range(len(m["loss"])):
            s = first_step + i + 1
            bad = not (np.isfinite(m["loss"][i]) and np.isfinite(m["grad_norm"][i]))
            rows.append({"step": s, "loss": _json_float(m["loss"][i]),
                         "grad_norm": _json_float(m["grad_norm"][i]), "lr": float(m["lr"][i]),
                         **({"skipped": True} if bad and t.skip_nonfinite else {})})
            if bad and not t.skip_nonfinite:
                if main:
                    run.append(rows)
                last = ckpt.latest(run.path)
                raise TrainingDiverged(
                    f"loss or gradient norm is not finite at step {s} (loss={m['loss'][i]}, "
                    f"grad_norm={m['grad_norm'][i]}); stopped. Last good checkpoint: "
                    f"{last if last else 'none'} (train.skip_nonfinite=true skips such steps)")
        if main:
            run.append(rows)
        rate = ""
        if rate_t0 is not None and first_step + len(rows) > rate_step0:
            done = first_step + len(rows) - rate_step0  # steps finished since compilation
            rate = f", {task.unit}/s={done * task.tokens_per_step() / (time.perf_counter() - rate_t0):,.0f}"
        bar.report(first_step + len(rows), f"loss={m['loss'][-1]:.4f}, lr={m['lr'][-1]:.2e}{rate}")

    step = start
    pending = None
    stop = StopRequest(enabled=jax.process_count() == 1).install()
    try:
        while step < t.steps:
            state, metrics = call(state, data)
            if pending is not None:
                consume(*pending)
            pending = (step, metrics)
            step += k
            bar.update(k)
            if rate_t0 is None:
                jax.block_until_ready(metrics)  # the first call includes compilation
                rate_t0, rate_step0 = time.perf_counter(), step
            # The last step is always evaluated, so that best.safetensors (what eval and
            # sample load) can be the final state when a run ends between evaluations.
            at_eval = step % t.eval_every == 0 or step == t.steps
            at_ckpt = step % t.checkpoint_every == 0
            if at_eval or at_ckpt:
                consume(*pending)
                pending = None
                if at_eval:
                    ev = task.evaluate(state.params, full=False)
                    if main:
                        run.append([{"step": step, "val_loss": ev["val_loss"]}])
                        bar.write(f"step {step}: val_loss {ev['val_loss']:.4f} "
                                  f"({time.perf_counter() - t_start:.1f} s)", file=sys.stderr)
                    if ev["val_loss"] < best_val:
                        best_val = ev["val_loss"]
                        save(state, step, ckpt.BEST)
                if at_ckpt or step == t.steps:
                    save(state, step)
            if stop.signum is not None:
                if pending is not None:
                    consume(*pending)
                if not (at_ckpt or step == t.steps):  # else saved just above
                    save(state, step)
                raise TrainingInterrupted(stop.signum, step, ckpt.step_path(run.path, step), run.path)
    finally:
        stop.restore()
        bar.close()
    train_time = time.perf_counter() - t_start
    final = task.evaluate(state.params, full=True)
    per_device = bytes_per_device(state)
    summary = {"task": cfg.task, "steps": t.steps, "resumed_from": start if resume else None,
               "train_time_s": round(train_time, 2), **final, "best_periodic_val_loss": _json_float(best_val),
               "devices": mesh.size, "processes": jax.process_count(),
               "fsdp": fsdp, "state_bytes_total": tree_bytes(state),
               "state_bytes_per_device_max": max(per_device.values())}
    if main:
        run.write_json("summary.json", summary)
    return summary
