"""Test set-up: one CPU device (sharding tests start their own processes with fake
devices), tiny configs, deterministic keys. Strict dtype promotion is checked by a
test of its own (test_train.py): optax, the oracle, relies on standard promotion."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# The suite compiles the same programs many times over: in test after test, and in every
# process the CLI tests start (a resumed run compiles its killed run's step again). JAX's
# disk cache loads them instead (measured in BENCHMARKS.md, "The AMD EPYC without AVX-512").
# A fresh private folder for each run of the suite, so no state is carried between runs;
# xdist's workers and every subprocess inherit it through the environment. Setting a size
# limit turns on the cache's file lock, so that processes compiling side by side (the
# two-process tests, xdist's workers) never read an entry another is still writing.
if "PYTEST_XDIST_WORKER" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="scratchformer-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"  # JAX's 1 s leaves out the tiny models' programs

TINY_MODEL = {"model.n_layer": 2, "model.n_head": 2, "model.d_model": 16, "model.d_ff": 32,
              "model.block_size": 16}


@pytest.fixture
def tiny_text():
    """A small corpus with a learnable structure (and every letter of the alphabet)."""
    base = "the quick brown fox jumps over the lazy dog. " * 60
    return base + "ROMEO: O, she doth teach the torches to burn bright!\n" * 20


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small text file for command-line runs, one for the whole session (the tests only
    read it): one sentence of 29 characters, which the CLI tests' messages count, 80 times."""
    p = tmp_path_factory.mktemp("data") / "tiny.txt"
    p.write_text("the quick brown fox jumps over the lazy dog.\n" * 80)
    return p


@pytest.fixture
def shakespeare_path():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not present")
    return SHAKESPEARE


def float64():
    """Context in which JAX computes in float64 (for finite differences). jax.enable_x64
    is JAX >= 0.7's name; older releases (0.6.2 is the newest for Python 3.10) have
    jax.experimental.enable_x64."""
    import jax
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64(True)


def run_cli(*args, env=None, timeout=600, cwd=None):
    """Run `python -m scratchformer ARGS` in a fresh process; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "scratchformer", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)


def key_bias_free(name: str, x):
    """Drop the attention key bias from a parameter: its gradient is exactly zero
    (softmax ignores a shift shared by all keys), so what an optimizer does to it is
    rounding noise that differs between any two summation orders."""
    import numpy as np
    if name.endswith("attn.qkv.b"):
        d = x.shape[0] // 3
        return np.delete(np.asarray(x), np.s_[d:2 * d])
    if name.endswith("attn.k.b"):
        return np.zeros(0)
    return np.asarray(x)


def assert_params_close(a: dict, b: dict, rtol: float):
    """Per-tensor relative error in norm, ||a - b|| / ||b|| <= rtol, for flat {name: array}
    dicts, ignoring attention key biases (see key_bias_free)."""
    import numpy as np
    assert a.keys() == b.keys()
    for k in a:
        x, y = key_bias_free(k, a[k]), key_bias_free(k, b[k])
        err = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)
        assert err <= rtol, (k, err)


def as_multi_head(params, cfg):
    """(params, cfg) of the multi-head model that computes what a grouped-query one does:
    each key/value head's columns of k and v (and their biases) repeated for the
    n_head / n_kv_head query heads that read it (query head h reads head h // R)."""
    import dataclasses

    import jax.numpy as jnp
    r, k = cfg.n_head // cfg.kv_heads, cfg.head_width

    def widen(x):  # the last axis, G K wide, to H K
        return jnp.repeat(x.reshape(*x.shape[:-1], -1, k), r, axis=-2).reshape(*x.shape[:-1], -1)

    def walk(tree):
        if isinstance(tree, list):
            return [walk(t) for t in tree]
        if not isinstance(tree, dict):
            return tree
        return {n: ({leaf: widen(x) for leaf, x in t.items()} if n in ("k", "v") else walk(t)) for n, t in tree.items()}
    return walk(params), dataclasses.replace(cfg, n_kv_head=0)


def latest_first_draw(ids, start: int) -> tuple[int, int]:
    """The id of ids[start:] whose first appearance comes last, and where that is: a stop id
    that ends a sample late."""
    firsts = {}
    for i, t in enumerate(ids[start:].tolist(), start):
        firsts.setdefault(t, i)
    return max(firsts.items(), key=lambda kv: kv[1])
