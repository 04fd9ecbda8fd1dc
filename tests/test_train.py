"""The training step: compiles once, gradient accumulation is exact, runs are
reproducible from the seed, the package imports no NN library."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer.checkpoint import flatten
from scratchformer.parallel import make_mesh, replicated
from scratchformer.runconfig import make_config
from scratchformer.tasks import LMTask, ReverseTask
from scratchformer.train import init_sharded_state, init_state, make_train_call, make_train_step, steps_per_call

from conftest import TINY_MODEL, assert_params_close


def _lm_task(text, **over):
    cfg = make_config("lm", "cpu-quick-classic", {**TINY_MODEL, "train.batch_size": 8, "train.steps": 40,
                                                  "optim.warmup_steps": 5, **over})
    return LMTask.from_text(cfg, text)


def test_train_call_compiles_once_over_many_steps(tiny_text):
    task = _lm_task(tiny_text, **{"train.steps_per_call": 1})
    compiles = []  # lowering and compiling: a program loaded from the disk cache is lowered too
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if name.startswith("/jax/core/compile/") else None)
    call, shardings = make_train_call(task.cfg, task, 1)
    state = init_sharded_state(task.cfg, shardings)
    data = jax.device_put(task.device_data(), replicated(make_mesh()))
    n_before = None
    for i in range(25):
        state, m = call(state, data)
        if i == 0:
            n_before = len(compiles)
    assert call._cache_size() == 1
    assert len(compiles) == n_before, "the train step recompiled after the first step"
    assert int(state.step) == 25


def test_gradient_accumulation_equals_big_batch(tiny_text):
    base = _lm_task(tiny_text, **{"model.dropout": 0.0, "train.batch_size": 8})
    acc_cfg = dataclasses.replace(base.cfg, train=dataclasses.replace(base.cfg.train, grad_accum=4))
    key = jax.random.PRNGKey(7)
    batch = base.sample_batch(base.device_data(), key, 8)
    s1, m1 = jax.jit(make_train_step(base.cfg))(init_state(base.cfg), batch)
    s4, m4 = jax.jit(make_train_step(acc_cfg))(init_state(acc_cfg), batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
    assert_params_close(flatten(s4.params), flatten(s1.params), rtol=1e-5)


def test_gradient_accumulation_with_padding_weights():
    """Reversal batches have different numbers of real tokens per micro-batch; the
    accumulated step still equals the big-batch step (token-weighted mean)."""
    cfg = make_config("reverse", None, {"model.n_layer": 1, "model.d_model": 16, "model.d_ff": 32,
                                        "model.n_head": 2, "data.max_len": 6, "model.block_size": 8,
                                        "train.batch_size": 8})
    task = ReverseTask(cfg)
    batch = task.sample_batch({}, jax.random.PRNGKey(0), 8)
    acc = dataclasses.replace(task.cfg, train=dataclasses.replace(task.cfg.train, grad_accum=2))
    _, m1 = jax.jit(make_train_step(task.cfg))(init_state(task.cfg), batch)
    _, m2 = jax.jit(make_train_step(acc))(init_state(acc), batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)


def test_same_seed_same_run_and_scan_equals_single_steps(tiny_text):
    def run(k, seed):
        task = _lm_task(tiny_text, **{"model.dropout": 0.1, "train.steps_per_call": k, "train.seed": seed})
        call, shardings = make_train_call(task.cfg, task, k)
        # The state in its shardings, as the training loop starts (an uncommitted one would
        # compile the call a second time, for the committed state the first call returns).
        state, data, losses = init_sharded_state(task.cfg, shardings), task.device_data(), []
        for _ in range(20 // k):
            state, m = call(state, data)
            losses += list(np.asarray(m["loss"]))
        return np.array(losses), state
    a, sa = run(5, 0)
    b, sb = run(5, 0)
    c, sc = run(1, 0)
    d, _ = run(5, 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5)    # scan over steps = one step per call
    assert not np.allclose(a, d)                   # another seed, another run
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
        np.testing.assert_array_equal(x, y)


def test_dropout_masks_differ_between_steps(tiny_text):
    task = _lm_task(tiny_text, **{"model.dropout": 0.5})
    step = jax.jit(make_train_step(task.cfg))
    batch = task.sample_batch(task.device_data(), jax.random.PRNGKey(0), 8)
    s0 = init_state(task.cfg)
    _, m_a = step(s0, batch)
    s1 = s0._replace(step=jnp.int32(1))  # same params, next step number
    _, m_b = step(s1, batch)
    assert float(m_a["loss"]) != float(m_b["loss"])


def test_steps_per_call_divides_boundaries():
    cfg = make_config("lm", "cpu-quick-classic", {"train.steps": 1000, "train.eval_every": 250,
                                                  "train.checkpoint_every": 500, "train.steps_per_call": 40})
    k = steps_per_call(cfg)
    assert k <= 40 and 250 % k == 0 and 1000 % k == 0 and k == 25


def test_package_imports_no_nn_library():
    code = ("import sys, scratchformer, scratchformer.cli, scratchformer.train, scratchformer.decode, "
            "scratchformer.plots, scratchformer.checkpoint, scratchformer.parallel, scratchformer.bench\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('flax', 'optax', 'haiku', 'equinox', 'torch', 'tensorflow')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_train_step_under_strict_dtype_promotion(tiny_text):
    """Our own code never relies on implicit dtype promotion."""
    task = _lm_task(tiny_text, **{"model.dropout": 0.1})
    with jax.numpy_dtype_promotion("strict"):
        batch = task.sample_batch(task.device_data(), jax.random.PRNGKey(0), 8)
        state, m = jax.jit(make_train_step(task.cfg))(init_state(task.cfg), batch)
    assert np.isfinite(float(m["loss"]))


def test_bfloat16_mixed_precision_trains_like_float32(tiny_text):
    """bf16 activations/matmuls with f32 master weights reach nearly the f32 loss."""
    finals = {}
    for dt in ("float32", "bfloat16"):
        task = _lm_task(tiny_text, **{"model.dtype": dt, "train.steps": 150, "train.steps_per_call": 50,
                                      "optim.lr": 3e-3, "model.d_model": 32, "model.d_ff": 64})
        call, shardings = make_train_call(task.cfg, task, 50)
        state = init_sharded_state(task.cfg, shardings)
        data = jax.device_put(task.device_data(), replicated(make_mesh()))
        for _ in range(3):
            state, m = call(state, data)
        finals[dt] = float(np.mean(np.asarray(m["loss"])[-20:]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))  # master weights
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.opt_state.mu))
    assert finals["float32"] < 2.0  # it learned something (uniform is ln(30) = 3.4)
    assert abs(finals["bfloat16"] - finals["float32"]) < 0.05 * finals["float32"], finals


def _train_calls(task, k: int, calls: int):
    """`calls` training calls of k steps from the task's initial state: (state, losses)."""
    call, shardings = make_train_call(task.cfg, task, k)
    state = init_sharded_state(task.cfg, shardings)
    data = jax.device_put(task.device_data(), replicated(make_mesh()))
    losses = []
    for _ in range(calls):
        state, m = call(state, data)
        losses += list(np.asarray(m["loss"]))
    return state, losses


def test_muon_trains_and_differs_from_adamw(tiny_text):
    """optim.name=muon (Muon on the blocks' matrices, AdamW elsewhere) lowers the loss, to
    other parameters than AdamW's; both under the wsd schedule."""
    losses, params = {}, {}
    for name in ("adamw", "muon"):
        task = _lm_task(tiny_text, **{"optim.name": name, "optim.schedule": "wsd", "train.steps": 100,
                                      "train.steps_per_call": 50})
        state, out = _train_calls(task, 50, 2)
        losses[name], params[name] = np.array(out), flatten(state.params)
    for name, loss in losses.items():
        assert np.isfinite(loss).all() and loss[-10:].mean() < 0.6 * loss[0], (name, loss[0], loss[-10:].mean())
    moved = [k for k in params["muon"] if not np.allclose(params["muon"][k], params["adamw"][k], rtol=1e-3)]
    assert "blocks.0.mlp.fc.w" in moved and "embed.tokens" in moved, moved


BLOCK_OPTIONS = {"model.norm": "rmsnorm", "model.qk_norm": True, "model.activation": "relu2",
                 "model.zero_init": True, "model.logit_softcap": 15.0, "model.tie_embeddings": False}
# A Llama-architecture block (Qwen2's q/k/v biases): SwiGLU, 2 query heads over 1 key/value head.
LLAMA_OPTIONS = {"model.norm": "rmsnorm", "model.positions": "rope", "model.activation": "swiglu",
                 "model.n_kv_head": 1, "model.fused_qkv": False, "model.bias": False, "model.qkv_bias": True,
                 "model.tie_embeddings": False, "model.zero_init": True, "model.rope_theta": 500000.0}


@pytest.mark.parametrize("options,zeroed", [(BLOCK_OPTIONS, "blocks.0.mlp.proj.w"),
                                            (LLAMA_OPTIONS, "blocks.0.mlp.down.w")], ids=["block", "llama"])
def test_block_options_train_with_adamw_and_muon(tiny_text, options, zeroed):
    """Every block option on, zero-initialised output projections included (Muon then
    orthogonalises zero gradients for the matrices behind them at the first step): the
    loss falls, with both optimizers, and the zeroed projections move. Muon takes q, k,
    v (k and v narrower with grouped-query attention), gate, up and down as matrices."""
    for name in ("adamw", "muon"):
        task = _lm_task(tiny_text, **{**options, "optim.name": name, "train.steps": 60,
                                      "train.steps_per_call": 30, "optim.lr": 3e-3})
        state, losses = _train_calls(task, 30, 2)
        assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.7 * losses[0], (name, losses[0], losses[-10:])
        assert np.abs(np.asarray(flatten(state.params)[zeroed])).max() > 0


def test_encoder_decoder_trains_with_the_block_options():
    """A few steps of the reversal model with every block option on: finite, falling."""
    cfg = make_config("reverse", None, {**BLOCK_OPTIONS, "model.n_layer": 1, "model.d_model": 16, "model.d_ff": 32,
                                        "model.n_head": 2, "data.max_len": 6, "model.block_size": 8,
                                        "train.batch_size": 16, "train.steps": 60, "optim.warmup_steps": 5,
                                        "optim.lr": 3e-3})
    task = ReverseTask(cfg)
    call, shardings = make_train_call(task.cfg, task, 30)
    state = init_sharded_state(task.cfg, shardings)
    losses = []
    for _ in range(2):
        state, m = call(state, task.device_data())
        losses += list(np.asarray(m["loss"]))
    # From ln 23 = 3.14 towards the plateau of reversal's first ~100 steps (~2.7), not past it.
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.92 * losses[0], (losses[0], losses[-10:])
