"""Sequence reversal: an encoder-decoder learns to output its input reversed, on data
generated on the fly (a fresh batch every step, a fixed held-out set)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import jax

from ..config import LM_ONLY, RunConfig, check, check_bounded, check_positive
from ..data import reverse
from ..decode import seq2seq_accuracy, seq2seq_decode
from ..errors import UsageError
from ..loss import seq2seq_loss
from ..models import init_encdec
from ..progress import counter
from .base import DrawnOnDevice, eval_loss

EVAL_SEQS = 1000  # sequences per evaluation call, and the periodic evaluation's subset
PROGRESS_HYPOTHESES = 40_000  # a decoding of more (sequences x beam) than this shows a bar
MAX_BEAM = 64


@dataclass(frozen=True)
class ReverseData:
    task: ClassVar[str] = "reverse"
    stacks: ClassVar[int] = 2  # an encoder and a decoder, model.n_layer blocks each
    vocab_size: int = 20  # symbols 0..vocab_size-1 (plus PAD, BOS, EOS)
    min_len: int = 1
    max_len: int = 20
    eval_size: int = 10000
    eval_seed: int = 1234

    def __post_init__(self):
        check_positive(self, "data", "vocab_size", "min_len", "max_len", "eval_size")
        check_bounded(self, "data", "vocab_size", "max_len", "eval_size")
        check(self.min_len <= self.max_len, f"data.min_len={self.min_len} is larger than data.max_len={self.max_len}")

    def check_run(self, cfg: RunConfig) -> None:
        """What this section needs of the rest of the run's config: room for BOS/EOS, and
        no LoRA (lora.py adapts a decoder-only model's blocks, not cross-attention) and
        none of the LM's own block options (config.LM_ONLY)."""
        check(not cfg.lora.rank, f"lora.rank={cfg.lora.rank}: LoRA adapts language models (lm runs) only; the "
              "encoder-decoder of the reverse task has no adapters")
        for key in LM_ONLY:
            value = getattr(cfg.model, key)
            check(not value, f"model.{key}={str(value).lower()} is a language-model option (lm runs); the "
                  "encoder-decoder of the reverse task does not have it")
        need = cfg.data.max_len + 2
        check(cfg.model.block_size >= need, f"model.block_size={cfg.model.block_size} is too small for data.max_len="
              f"{cfg.data.max_len} (needs >= {need}: BOS/EOS)")

    def max_vocab(self, cfg: RunConfig) -> int:
        return max(cfg.model.vocab_size, reverse.model_vocab(cfg.data.vocab_size))


PRESETS = {
    # Learned positions leave the loss plateau that sinusoidal positions show on this task
    # early, so the preset reaches 100% in 800 steps. --set model.positions=sinusoidal gives
    # Vaswani et al.'s encoding (its token std: models.sinusoidal_token_std).
    "default": {
        "model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.d_ff": 128,
        "model.block_size": 22, "model.positions": "learned",
        "optim.lr": 3e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 100,
        "optim.weight_decay": 0.01, "optim.b2": 0.98,
        "train.batch_size": 128, "train.steps": 800, "train.eval_every": 200,
        "train.checkpoint_every": 400, "train.steps_per_call": 50,
    },
}


class ReverseTask(DrawnOnDevice):
    """Encoder-decoder sequence reversal on generated data."""

    name = "reverse"
    unit = "seq"
    stacks = ReverseData.stacks
    Data = ReverseData
    presets = PRESETS
    default_preset = "default"
    finetune_preset = "default"  # with --init-from
    lora_preset = "default"  # with --lora (which the reverse task's check_run refuses)
    sample_options = {"input": None, "beam": 1}
    eval_options = {"beam": 1}
    mesh = None
    source = None  # generated data: no file

    def __init__(self, cfg: RunConfig):
        self.cfg = replace(cfg, model=replace(cfg.model, vocab_size=reverse.model_vocab(cfg.data.vocab_size)))
        self._eval = None
        self._loss = jax.jit(lambda p, b: self.loss(p, b, cfg=self.cfg.model))

    # ------------------------------------------------------------ configuration
    @classmethod
    def tokens_per_step(cls, cfg: RunConfig) -> int:
        return cfg.train.batch_size

    # ------------------------------------------------------------ construction
    @classmethod
    def from_data(cls, cfg: RunConfig, path=None, like=None) -> "ReverseTask":
        if path is not None:
            raise UsageError(f"{path}: the reverse task generates its data and reads no file", option="data")
        return cls(cfg)

    @classmethod
    def from_meta(cls, cfg: RunConfig, meta: dict) -> "ReverseTask":
        return cls(cfg)

    def meta(self) -> dict:
        return {}

    def run_files(self) -> dict[str, str]:
        return {}

    def with_training_data(self, meta: dict, run_dir) -> "ReverseTask":
        return self

    # ------------------------------------------------------------ training
    init_params = staticmethod(init_encdec)  # (key, model config) -> params
    loss = staticmethod(seq2seq_loss)  # (params, batch, *, cfg, train, key, label_smoothing) -> (sum, weight)

    def device_data(self) -> dict:
        return {}

    def sample_batch(self, data: dict, key, batch: int):
        d = self.cfg.data
        return reverse.sample_batch(key, batch=batch, n_symbols=d.vocab_size, min_len=d.min_len, max_len=d.max_len)

    # ------------------------------------------------------------ evaluation
    def eval_set(self) -> dict:
        if self._eval is None:
            d = self.cfg.data
            self._eval = reverse.eval_set(size=d.eval_size, seed=d.eval_seed, n_symbols=d.vocab_size,
                                          min_len=d.min_len, max_len=d.max_len)
        return self._eval

    def evaluate(self, params, *, full: bool, progress: bool = False, beam: int = 1, on_decoded=None) -> dict:
        """Teacher-forced validation loss (periodic: the first 1,000 held-out sequences;
        full: all of them, plus exact match and token accuracy of decoded outputs;
        `on_decoded(n)` after each decoding call, as in seq2seq_accuracy)."""
        ev = self.eval_set()
        if not full:
            ev = {k: v[:EVAL_SEQS] for k, v in ev.items()}
        loss, _ = eval_loss(self._loss, params, ev, EVAL_SEQS, self.mesh)
        out = {"val_loss": loss}
        if full:
            n = len(ev["src"])
            with counter(n, shown=progress and n * beam > PROGRESS_HYPOTHESES, unit="seq", desc="decoding") as bar:
                out.update(seq2seq_accuracy(params, self.cfg.model, ev, beam=beam, mesh=self.mesh,
                                            on_decoded=on_decoded or bar.update))
        return out

    @staticmethod
    def describe(r: dict) -> str:
        return (f"held-out exact match {100 * r['exact_match']:.2f}% on {r['sequences']} sequences "
                f"(token accuracy {100 * r['token_accuracy']:.2f}%, val loss {r['val_loss']:.4f})")

    # ------------------------------------------------------------ use
    def sample(self, params, *, input=None, beam: int = 1) -> tuple[str, str | None]:
        """The reversal of `input` ('7 3 9 1'), and a note when the output is not a plain answer."""
        if input is None:
            raise UsageError("a reverse run reverses the symbols of --input, e.g. --input '7 3 9 1'; none were given")
        if not 1 <= beam <= MAX_BEAM:
            raise UsageError(f"beam={beam} must be in [1, {MAX_BEAM}]")
        d = self.cfg.data
        src = reverse.parse_symbols(input, n_symbols=d.vocab_size, max_len=d.max_len)
        out = seq2seq_decode(params, self.cfg.model, src, beam=beam)
        return " ".join(str(x) for x in reverse.output_symbols(out[0])), reverse.output_note(out[0])
