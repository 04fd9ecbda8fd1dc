"""The two experiments as objects the training loop can drive: where the data comes
from, how a batch is drawn on device, how the model is evaluated, and what must be
saved with a checkpoint to use the model again (the vocabulary)."""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from .config import RunConfig
from .data import reverse, text
from .data.errors import DataError
from .loss import task_loss
from .parallel import chunks_on_mesh, host_value, make_mesh

# LM tokens per jitted evaluation call. On a CPU, calls of ~2k tokens keep the
# activations in the caches: 1.6-2x the tokens/s of 256-window calls at the
# cpu-quick, cpu and gpt-small shapes (BENCHMARKS.md, tenth session). An accelerator
# wants large calls: 65,536 tokens is the 256 windows of 256 that the gpu preset's
# figures were measured with; fewer where one layer's float32 attention
# probabilities (windows x heads x T x T) would pass EVAL_PROBS_BYTES.
EVAL_TOKENS_CPU = 2_048
EVAL_TOKENS_ACCELERATOR = 65_536
EVAL_PROBS_BYTES = 1 << 30


def eval_chunk(block: int, n_head: int, backend: str | None = None) -> int:
    """Windows of `block` tokens per LM evaluation call on this backend."""
    if (backend or jax.default_backend()) == "cpu":
        return max(1, EVAL_TOKENS_CPU // block)
    return max(1, min(EVAL_TOKENS_ACCELERATOR // block, EVAL_PROBS_BYTES // (4 * n_head * block * block)))


EVAL_SEQS = 1000  # reversal: sequences per evaluation call, and the periodic evaluation's subset


def _eval_loss(loss_fn, params, arrays: dict, chunk: int, mesh=None, on_chunk=None):
    """Sum a loss over fixed-size chunks split over the mesh (zero-weighted padding in
    the last), so the evaluation compiles once whatever the set's size. `on_chunk(w)`,
    if given, is called after each chunk with its weight (for progress).
    Returns (mean loss, total weight)."""
    total, weight = 0.0, 0.0
    for _, part in chunks_on_mesh(arrays, chunk, mesh or make_mesh()):
        s, w = loss_fn(params, part)
        total += float(host_value(s))
        w = float(host_value(w))
        weight += w
        if on_chunk:
            on_chunk(int(w))
    return total / max(weight, 1.0), int(weight)


class LMTask:
    """Character language model on a text file (Tiny Shakespeare by default)."""

    name = "lm"
    unit = "tok"
    mesh = None    # set by the training loop; None: all visible devices
    source = None  # {"path", "sha256"} of the text file (from_file), saved with each checkpoint

    def __init__(self, cfg: RunConfig, tokenizer: text.CharTokenizer, ids: np.ndarray | None = None):
        self.tokenizer = tokenizer
        self.cfg = replace(cfg, model=replace(cfg.model, vocab_size=len(tokenizer)))
        if ids is not None:
            self.train_ids, self.val_ids = text.split(ids, cfg.data.val_fraction)
            block = cfg.model.block_size
            if len(self.train_ids) <= block + 1:
                raise DataError(f"the text gives {len(self.train_ids)} training characters, fewer than one "
                                f"block (model.block_size={block}) plus one; use a longer text or a smaller block")
            text.eval_windows(self.val_ids, block)  # raises if validation is shorter than a block
        self._loss = jax.jit(lambda p, b: task_loss("lm")(p, b, cfg=self.cfg.model))

    @classmethod
    def from_text(cls, cfg: RunConfig, corpus: str) -> "LMTask":
        tok = text.CharTokenizer.from_text(corpus)
        return cls(cfg, tok, tok.encode(corpus))

    @classmethod
    def from_file(cls, cfg: RunConfig, path) -> "LMTask":
        """from_text on a UTF-8 file, remembering which file (its absolute path and
        sha256) so that `eval` can find it again and `--resume` can check it."""
        task = cls.from_text(cfg, text.read_text(path))
        task.source = text.file_identity(path)
        return task

    @classmethod
    def from_meta(cls, cfg: RunConfig, meta: dict) -> "LMTask":
        vocab = meta.get("vocab")
        if not isinstance(vocab, str):
            raise DataError("checkpoint metadata has no character vocabulary")
        return cls(cfg, text.CharTokenizer(vocab))

    def meta(self) -> dict:
        return {"vocab": self.tokenizer.chars}

    def tokens_per_step(self) -> int:
        return tokens_per_step(self.cfg)

    def device_data(self) -> dict:
        return {"train": jnp.asarray(self.train_ids)}

    def sample_batch(self, data: dict, key, batch: int):
        return text.sample_batch(key, data["train"], batch=batch, block=self.cfg.model.block_size)

    def evaluate(self, params, *, full: bool) -> dict:
        limit = 0 if full else self.cfg.train.eval_windows
        loss, n = self.loss_on(params, self.val_ids, limit)
        return {"val_loss": loss, "val_perplexity": float(np.exp(loss)), "val_tokens": n}

    def loss_on(self, params, ids, limit: int = 0, on_scored=None) -> tuple[float, int]:
        """(mean loss, targets scored) over token ids, each target scored once (all of
        them, or `limit` evenly spaced windows). `on_scored(n)`: called after each
        evaluation call with the number of targets it scored."""
        block = self.cfg.model.block_size
        windows = text.eval_windows(ids, block, limit)
        chunk = eval_chunk(block, self.cfg.model.n_head)
        return _eval_loss(self._loss, params, windows, chunk, self.mesh, on_scored)


class ReverseTask:
    """Encoder-decoder sequence reversal on generated data."""

    name = "reverse"
    unit = "seq"
    mesh = None
    source = None  # generated data: no file

    def __init__(self, cfg: RunConfig):
        d = cfg.data
        self.cfg = replace(cfg, model=replace(cfg.model, vocab_size=reverse.model_vocab(d.vocab_size)))
        self._eval = None
        self._loss = jax.jit(lambda p, b: task_loss("reverse")(p, b, cfg=self.cfg.model))

    @classmethod
    def from_meta(cls, cfg: RunConfig, meta: dict) -> "ReverseTask":
        return cls(cfg)

    def meta(self) -> dict:
        return {}

    def tokens_per_step(self) -> int:
        return tokens_per_step(self.cfg)

    def device_data(self) -> dict:
        return {}

    def sample_batch(self, data: dict, key, batch: int):
        d = self.cfg.data
        return reverse.sample_batch(key, batch=batch, n_symbols=d.vocab_size, min_len=d.min_len, max_len=d.max_len)

    def eval_set(self) -> dict:
        if self._eval is None:
            d = self.cfg.data
            self._eval = reverse.eval_set(size=d.eval_size, seed=d.eval_seed, n_symbols=d.vocab_size,
                                          min_len=d.min_len, max_len=d.max_len)
        return self._eval

    def evaluate(self, params, *, full: bool, beam: int = 1, on_decoded=None) -> dict:
        """Teacher-forced validation loss (periodic: the first 1,000 held-out sequences;
        full: all of them, plus exact match and token accuracy of decoded outputs;
        `on_decoded(n)` after each decoding call, as in seq2seq_accuracy)."""
        ev = self.eval_set()
        if not full:
            ev = {k: v[:EVAL_SEQS] for k, v in ev.items()}
        loss, _ = _eval_loss(self._loss, params, ev, EVAL_SEQS, self.mesh)
        out = {"val_loss": loss}
        if full:
            from .decode import seq2seq_accuracy
            out.update(seq2seq_accuracy(params, self.cfg.model, ev, beam=beam, mesh=self.mesh,
                                        on_decoded=on_decoded))
        return out


def tokens_per_step(cfg: RunConfig) -> int:
    """What one optimizer step trains on: tokens for the LM, sequences for reversal."""
    return cfg.train.batch_size * (cfg.model.block_size if cfg.task == "lm" else 1)


def task_from_meta(cfg: RunConfig, meta: dict):
    return ReverseTask.from_meta(cfg, meta) if cfg.task == "reverse" else LMTask.from_meta(cfg, meta)
