"""The reversal task: source = random symbols, target = the same symbols reversed.

Token ids: 0 PAD, 1 BOS, 2 EOS, symbol s -> s + 3. Shapes: B batch, S = max_len
source slots, T = max_len + 1 target slots (the reversed symbols, then EOS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DataError

PAD, BOS, EOS = 0, 1, 2
OFFSET = 3


def model_vocab(n_symbols: int) -> int:
    return n_symbols + OFFSET


def make_examples(lengths_B, symbols_BxS):
    """Build one batch from per-example lengths and raw symbols (0..n-1).

    Returns {"src": BxS, "tgt_in": BxT, "tgt_out": BxT} int32, where
    tgt_in = BOS, reversed... and tgt_out = reversed..., EOS, both PAD-filled."""
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    b, s = symbols_BxS.shape
    pos = jnp.arange(s)[None, :]
    valid = pos < lengths_B[:, None]
    src = jnp.where(valid, jnp.asarray(symbols_BxS, jnp.int32) + OFFSET, PAD)
    rev_idx = jnp.clip(lengths_B[:, None] - 1 - pos, 0, s - 1)
    rev = jnp.where(valid, jnp.take_along_axis(src, rev_idx, axis=1), PAD)
    pad_col = jnp.full((b, 1), PAD, jnp.int32)
    tgt_out = jnp.concatenate([rev, pad_col], axis=1)
    tgt_out = jnp.where(jnp.arange(s + 1)[None, :] == lengths_B[:, None], EOS, tgt_out)
    tgt_in = jnp.concatenate([jnp.full((b, 1), BOS, jnp.int32), rev], axis=1)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


def sample_batch(key, *, batch: int, n_symbols: int, min_len: int, max_len: int):
    """A fresh random batch, drawn on device inside the jitted step."""
    k_len, k_sym = jax.random.split(key)
    lengths = jax.random.randint(k_len, (batch,), min_len, max_len + 1)
    symbols = jax.random.randint(k_sym, (batch, max_len), 0, n_symbols)
    return make_examples(lengths, symbols)


def eval_set(*, size: int, seed: int, n_symbols: int, min_len: int, max_len: int) -> dict:
    """The fixed held-out set: numpy's generator from its own seed, the same every run."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=size)
    symbols = rng.integers(0, n_symbols, size=(size, max_len))
    return {k: np.asarray(v) for k, v in make_examples(lengths, jnp.asarray(symbols)).items()}


def parse_symbols(text: str, *, n_symbols: int, max_len: int) -> np.ndarray:
    """'7 3 9 1' -> source ids (1 x max_len, PAD-filled); one-line errors for bad input."""
    parts = text.split()
    if not parts:
        raise DataError(f"{text!r} is empty; give space-separated integers 0..{n_symbols - 1}", option="input")
    if len(parts) > max_len:
        raise DataError(f"{text!r} has {len(parts)} symbols; the model accepts at most {max_len}", option="input")
    ids = np.full((1, max_len), PAD, np.int32)
    for i, p in enumerate(parts):
        if not p.isdigit() or int(p) >= n_symbols:
            raise DataError(f"{text!r}: symbol {p!r} is unknown; symbols are integers 0..{n_symbols - 1}", option="input")
        ids[0, i] = int(p) + OFFSET
    return ids


def output_symbols(ids_T) -> list[int]:
    """Decoder output ids -> symbols, up to (not including) the first EOS."""
    out = []
    for t in np.asarray(ids_T).tolist():
        if t < OFFSET:  # EOS (or PAD/BOS, which a trained model does not emit) ends it
            break
        out.append(t - OFFSET)
    return out


def output_note(ids_T) -> str | None:
    """Why a decoder output is not a plain answer (None when it is symbols then EOS)."""
    ids = np.asarray(ids_T).tolist()
    n = len(output_symbols(ids))
    if n == len(ids):
        return f"no EOS within the {len(ids)} output tokens; the output stops there"
    end = {EOS: "EOS", PAD: "PAD", BOS: "BOS"}[ids[n]]
    if end != "EOS":
        return f"the output ended with a {end} token after {n} symbol(s), which a trained model does not emit"
    return "the output is empty: the model emitted EOS first" if n == 0 else None
