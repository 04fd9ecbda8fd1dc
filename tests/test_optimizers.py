"""The optimizers a config names: AdamW is optim.adamw.adamw_update; Muon is the
hybrid of optim/muon.py with its own peak rate, momentum and weight decay, its rate
following optim.lr's schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer import config, optim
from scratchformer.optim import muon
from scratchformer.config import ConfigError
from scratchformer.models import init_lm
from scratchformer.optim import optimizer
from scratchformer.optim.adamw import AdamWState, adamw_init, adamw_update, decay_mask
from scratchformer.optim.muon import HybridState, hybrid_init, hybrid_update, muon_mask
from scratchformer.runconfig import make_config

from conftest import TINY_MODEL


def _setup(**over):
    cfg = make_config("lm", "cpu-quick-classic", {**TINY_MODEL, **over})
    model = cfg.model.__class__(**{**cfg.model.__dict__, "vocab_size": 11})
    params = init_lm(jax.random.PRNGKey(0), model)
    grads = jax.tree.map(lambda x: jnp.sin(37.0 * x) + 0.1, params)
    return cfg.optim, params, grads


def _same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_adamw_is_adamw_update_with_the_decay_mask():
    o, params, grads = _setup(**{"optim.name": "adamw"})
    opt = optimizer(o, params)
    assert isinstance(opt.init(params), AdamWState)
    got = jax.jit(opt.update)(grads, opt.init(params), params, 2e-3)
    want = jax.jit(lambda g, s, p: adamw_update(g, s, p, lr=2e-3, b1=o.b1, b2=o.b2, eps=o.eps,
                                                weight_decay=o.weight_decay, mask=decay_mask(params)))(
        grads, adamw_init(params), params)
    _same(got, want)


def test_muon_is_the_hybrid_with_its_own_rate_momentum_and_decay():
    o, params, grads = _setup(**{"optim.name": "muon", "optim.muon_lr": 0.05, "optim.muon_momentum": 0.9,
                                 "optim.muon_weight_decay": 0.01})
    opt = optimizer(o, params)
    mask = muon_mask(params)
    state = opt.init(params)
    assert isinstance(state, HybridState)
    _same(state, hybrid_init(params, mask))
    lr = jnp.float32(2e-3)  # a scheduled rate of optim.lr (5e-3): Muon's is 2e-3 * 0.05 / 5e-3
    got = jax.jit(opt.update)(grads, state, params, lr)
    want = jax.jit(lambda g, s, p, lr: hybrid_update(
        g, s, p, muon_lr=lr * (0.05 / o.lr), adam_lr=lr, muon_mask=mask, decay_mask=decay_mask(params), b1=o.b1,
        b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, muon_weight_decay=0.01, momentum=0.9))(
        grads, state, params, lr)
    _same(got, want)


def test_muon_coeffs_and_normuon_reach_the_hybrid():
    """optim.muon_coeffs and optim.normuon_beta2 go to hybrid_update, and NorMuon's second
    moment is in the state only where it is on."""
    o, params, grads = _setup(**{"optim.name": "muon", "optim.muon_coeffs": "polar_express",
                                 "optim.normuon_beta2": 0.9})
    opt, mask = optimizer(o, params), muon_mask(params)
    state = opt.init(params)
    _same(state, hybrid_init(params, mask, normuon=True))
    assert len(jax.tree.leaves(state.muon.nu)) == sum(jax.tree.leaves(mask))
    got = jax.jit(opt.update)(grads, state, params, 2e-3)
    want = jax.jit(lambda g, s, p: hybrid_update(
        g, s, p, muon_lr=2e-3 * (o.muon_lr / o.lr), adam_lr=2e-3, muon_mask=mask, decay_mask=decay_mask(params),
        b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, muon_weight_decay=o.muon_weight_decay,
        momentum=o.muon_momentum, ns_coeffs="polar_express", normuon_beta2=0.9))(grads, state, params)
    _same(got, want)
    plain = optimizer(_setup(**{"optim.name": "muon"})[0], params)
    assert plain.init(params).muon.nu is None
    plain_params = jax.jit(plain.update)(grads, plain.init(params), params, 2e-3)[0]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(plain_params)))


def test_zero_gradient_moves_each_group_by_its_own_decay():
    """NS(0) = 0 and AdamW's m^/(sqrt(v^)+eps) = 0: a leaf moves only by lr_group * wd_group * p."""
    o, params, _ = _setup(**{"optim.name": "muon", "optim.muon_lr": 0.04, "optim.weight_decay": 0.1,
                             "optim.muon_weight_decay": 0.5})
    opt = optimizer(o, params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    lr = o.lr / 2  # half-way through the schedule
    new, _ = jax.jit(opt.update)(zeros, opt.init(params), params, lr)
    mask, decay = muon_mask(params), decay_mask(params)
    expect = jax.tree.map(lambda p, m, d: p * (1 - 0.02 * 0.5) if m else (p * (1 - lr * 0.1) if d else p),
                          params, mask, decay)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new, expect)


@pytest.mark.parametrize("key,value,match", [
    ("optim.name", "sgd", "optim.name='sgd' is not one of adamw, muon"),
    ("optim.schedule", "linear", "optim.schedule='linear' is not one of cosine, wsd"),
    ("optim.muon_lr", 0.0, "optim.muon_lr=0.0 must be > 0"),
    ("optim.muon_momentum", 1.0, "optim.muon_momentum=1.0 must be in [0, 1)"),
    ("optim.muon_weight_decay", -0.1, "optim.muon_weight_decay=-0.1 must be >= 0"),
    ("optim.muon_coeffs", "newton", "optim.muon_coeffs='newton' is not one of jordan, polar_express"),
    ("optim.normuon_beta2", 1.0, "optim.normuon_beta2=1.0 must be in [0, 1) (0 turns NorMuon off)"),
    ("optim.normuon_beta2", -0.5, "optim.normuon_beta2=-0.5 must be in [0, 1) (0 turns NorMuon off)"),
    ("optim.decay_fraction", 0.0, "optim.decay_fraction=0.0 must be in (0, 1]"),
    ("optim.decay_fraction", 1.5, "optim.decay_fraction=1.5 must be in (0, 1]"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    with pytest.raises(ConfigError) as e:
        make_config("lm", "cpu-quick", {key: value})
    assert str(e.value) == match


def test_every_name_config_accepts_is_built():
    """config.py's tuples of names and optim's builders agree, both ways."""
    assert set(optim._BUILD_OPTIMIZER) == set(config.OPTIMIZERS)
    assert set(optim._BUILD_SCHEDULE) == set(config.SCHEDULES)
    assert set(muon.NS_SCHEDULES) == set(config.MUON_COEFFS)
