"""Test set-up: one CPU device (sharding tests start their own processes with fake
devices), strict dtype promotion, tiny configs and deterministic keys."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest



ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

TINY_MODEL = {"model.n_layer": 2, "model.n_head": 2, "model.d_model": 16, "model.d_ff": 32,
              "model.block_size": 16}


@pytest.fixture
def tiny_text():
    """A small corpus with a learnable structure (and every letter of the alphabet)."""
    base = "the quick brown fox jumps over the lazy dog. " * 60
    return base + "ROMEO: O, she doth teach the torches to burn bright!\n" * 20


@pytest.fixture
def shakespeare_path():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not present")
    return SHAKESPEARE


def run_cli(*args, env=None, timeout=600, cwd=None):
    """Run `python -m scratchformer.cli ARGS` in a fresh process; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "scratchformer.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)
