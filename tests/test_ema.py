"""The moving average of the weights (train.ema): a naive loop's average, no effect on
training itself, and what a run evaluates, saves and hands to sample, eval and export."""

import jax
import numpy as np
import pytest

from scratchformer import checkpoint as ckpt
from scratchformer.checkpoint import flatten
from scratchformer.loop import fit
from scratchformer.runconfig import make_config
from scratchformer.runs import load
from scratchformer.tasks import LMTask
from scratchformer.train import init_state, make_train_step

from conftest import TINY_MODEL


def _task(text, **over):
    cfg = make_config("lm", "cpu-quick-classic", {**TINY_MODEL, "train.batch_size": 8, "train.steps": 20,
                                                  "optim.warmup_steps": 5, "train.eval_every": 10,
                                                  "train.checkpoint_every": 10, "train.steps_per_call": 5, **over})
    return LMTask.from_text(cfg, text)


def test_ema_is_the_average_a_naive_loop_keeps_and_leaves_training_alone(tiny_text):
    """Step by step, in float64 beside the jitted step: avg <- d * avg + (1 - d) * params
    with d = min(train.ema, (1 + s) / (10 + s)) after step s; the trained weights and
    losses are bitwise those of the same run without an average."""
    task, plain = _task(tiny_text, **{"train.ema": 0.9}), _task(tiny_text)
    step, step_plain = jax.jit(make_train_step(task.cfg)), jax.jit(make_train_step(plain.cfg))
    state, other = init_state(task.cfg), init_state(plain.cfg)
    assert other.ema is None
    avg = {k: np.asarray(v, np.float64) for k, v in flatten(state.params).items()}
    data = task.device_data()
    for s in range(30):
        batch = task.sample_batch(data, jax.random.PRNGKey(s), 8)
        state, m = step(state, batch)
        other, m_plain = step_plain(other, batch)
        assert float(m["loss"]) == float(m_plain["loss"])
        d = min(0.9, (1 + s) / (10 + s))
        for k, v in flatten(state.params).items():
            avg[k] = d * avg[k] + (1 - d) * np.asarray(v, np.float64)
    for k, v in flatten(other.params).items():
        np.testing.assert_array_equal(np.asarray(flatten(state.params)[k]), np.asarray(v), err_msg=k)
    ema = flatten(state.ema)
    assert ema.keys() == avg.keys()
    for k in avg:
        np.testing.assert_allclose(np.asarray(ema[k]), avg[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert all(not np.array_equal(np.asarray(ema[k]), np.asarray(v)) for k, v in flatten(state.params).items()
               if v.ndim == 2)


def test_a_run_with_ema_evaluates_saves_and_loads_the_average(tiny_text, tmp_path):
    """The checkpoint holds params and the average; load (sample, eval, export, --init-from)
    returns the average; the summary's val_loss is the average's over the whole split,
    val_loss_without_ema the trained weights'. Without train.ema nothing changes."""
    task = _task(tiny_text, **{"train.ema": 0.8})
    summary = fit(task, tmp_path / "ema", progress=False)
    tensors, _ = ckpt.read(ckpt.latest(tmp_path / "ema"))
    _, loaded, _ = load(tmp_path / "ema", which="latest")
    for k, v in flatten(loaded).items():
        np.testing.assert_array_equal(np.asarray(v), tensors["ema." + k], err_msg=k)
    params = ckpt.subtree(tensors, "params")
    assert any(not np.array_equal(params[k], tensors["ema." + k]) for k in params)
    assert summary["val_loss"] == task.evaluate(loaded, full=True)["val_loss"]
    restored = {k: jax.numpy.asarray(v) for k, v in params.items()}
    trained = jax.tree_util.tree_unflatten(jax.tree.structure(loaded), [restored[k] for k in flatten(loaded)])
    assert summary["val_loss_without_ema"] == task.evaluate(trained, full=True)["val_loss"]
    assert summary["val_loss"] != summary["val_loss_without_ema"]

    plain = fit(_task(tiny_text), tmp_path / "plain", progress=False)
    assert "val_loss_without_ema" not in plain
    assert not [k for k in ckpt.read(ckpt.latest(tmp_path / "plain"))[0] if k.startswith("ema.")]


def test_a_weights_only_file_loads_its_params_whatever_the_config_says(tiny_text, tmp_path):
    """An imported model (gpt2.save_weights_run) has only `params.*`; a config that asks for
    an average (as the presets do) still loads them, while a training state must hold it."""
    from scratchformer.gpt2 import save_weights_run
    task = _task(tiny_text, **{"train.ema": 0.9})
    params = task.init_params(jax.random.PRNGKey(3), task.cfg.model)
    save_weights_run(tmp_path / "w", task, params, {})
    _, loaded, _ = load(tmp_path / "w")
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(np.asarray(flatten(loaded)[k]), np.asarray(v), err_msg=k)

    state = init_state(task.cfg)  # a training state saved without its average: refused, named
    ckpt.save(tmp_path / "no-ema.safetensors", {"params": state.params, "opt_state": state.opt_state},
              {"config": task.cfg.to_dict(), "step": 0, "task_meta": task.meta()})
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        load(tmp_path / "no-ema.safetensors")
