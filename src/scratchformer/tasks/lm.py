"""The language model: a decoder-only Transformer on a UTF-8 text (Tiny Shakespeare by
default, one token per character) or on token files made by `scratchformer prepare`
(characters or byte-level BPE), which are streamed from disk when they are large."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..config import RunConfig, check
from ..data import text
from ..data.bpe import end_of_text, tokenizer_from_json
from ..data.stream import WindowStream
from ..data.tokens import TokenFiles
from ..decode import generate
from ..errors import DataError, UsageError
from ..loss import lm_loss
from ..models import init_lm
from ..progress import counter
from .base import DrawnOnDevice, batch_key, eval_loss

# LM tokens per jitted evaluation call. On a CPU, calls of ~2k tokens keep the
# activations in the caches; an accelerator wants large calls: 65,536 tokens (256
# windows of 256), fewer where one layer's float32 attention probabilities
# (windows x heads x T x T) would pass EVAL_PROBS_BYTES.
EVAL_TOKENS_CPU = 2_048
EVAL_TOKENS_ACCELERATOR = 65_536
EVAL_PROBS_BYTES = 1 << 30
PROGRESS_TARGETS = 500_000  # an evaluation of more targets than this shows a bar (several seconds)
# The one rule for where batches are drawn: a training split of up to this many bytes (as
# int32 tokens) is put on every device and drawn from there; a larger one is streamed
# from its token file (BENCHMARKS.md, "Streaming from token files").
DEVICE_DATA_BYTES = 256 << 20
STREAM = ("auto", "on", "off")
ORDERS = ("random", "epoch")  # data.order: windows drawn at random offsets, or each once an epoch (text.epoch_starts)
MAX_SAMPLE_TOKENS = 10**9  # positions are int32; memory.check_fits catches far fewer on most machines


def eval_chunk(block: int, n_head: int, backend: str | None = None) -> int:
    """Windows of `block` tokens per LM evaluation call on this backend."""
    if (backend or jax.default_backend()) == "cpu":
        return max(1, EVAL_TOKENS_CPU // block)
    return max(1, min(EVAL_TOKENS_ACCELERATOR // block, EVAL_PROBS_BYTES // (4 * n_head * block * block)))


@dataclass(frozen=True)
class TextData:
    task: ClassVar[str] = "lm"
    stacks: ClassVar[int] = 1  # one stack of model.n_layer blocks: a decoder
    val_fraction: float = 0.1  # last 10% of the text is validation (nanoGPT's split)
    eval_windows: int = 256    # windows of the periodic evaluation (0 = the whole split)
    stream: str = "auto"       # token files: read batches from disk ("on"), from the devices ("off"), or
                               # by the size of the training split ("auto": DEVICE_DATA_BYTES)
    order: str = "random"      # "random": each row a window at a random offset (nanoGPT's); "epoch": the
                               # text cut into windows from a random shift, each read once an epoch, reshuffled

    def __post_init__(self):
        check(0 < self.val_fraction < 1, f"data.val_fraction={self.val_fraction!r} must be in (0, 1)")
        check(self.eval_windows >= 0, f"data.eval_windows={self.eval_windows} must be >= 0")
        check(self.stream in STREAM, f"data.stream={self.stream!r} is not one of {', '.join(STREAM)}")
        check(self.order in ORDERS, f"data.order={self.order!r} is not one of {', '.join(ORDERS)}")

    def check_run(self, cfg: RunConfig) -> None:
        """What this section needs of the rest of the run's config: nothing more."""

    def max_vocab(self, cfg: RunConfig) -> int:
        return cfg.model.vocab_size


FINETUNE_PRESET = "gpt2-finetune"
LORA_PRESET = "gpt2-lora"
# Fine-tuning a run (train lm --init-from RUN; the default preset then), as nanoGPT's
# finetune_shakespeare: a small constant-ish rate, few steps. block_size 256 keeps the
# first 256 of GPT-2's 1,024 positions: a step on a 2-core CPU takes seconds, not
# tens of seconds (README, "GPT-2").
FINETUNE = {
    "model.block_size": 256, "model.dropout": 0.0, "model.products": "auto",
    "optim.lr": 3e-5, "optim.min_lr": 3e-5, "optim.warmup_steps": 0, "optim.weight_decay": 0.0,
    "train.batch_size": 4, "train.steps": 200, "train.eval_every": 50, "train.checkpoint_every": 50,
    "train.steps_per_call": 1, "data.eval_windows": 16,
}
CPU_QUICK_CLASSIC = {  # AdamW on GPT-2's block: the seed's recipe, tuned for a 2-core CPU
    "model.n_layer": 3, "model.n_head": 4, "model.d_model": 128, "model.d_ff": 512,
    "model.block_size": 64, "model.dropout": 0.0, "model.products": "auto",
    "optim.lr": 5e-3, "optim.min_lr": 5e-4, "optim.warmup_steps": 30,
    "train.batch_size": 16, "train.steps": 1500, "train.eval_every": 250,
    "train.checkpoint_every": 500, "train.steps_per_call": 25,
}
CPU_CLASSIC = {  # AdamW on GPT-2's block, the seed's `cpu` preset: tuned on a 2-core CPU for 10 minutes
    "model.n_layer": 4, "model.n_head": 4, "model.d_model": 192, "model.d_ff": 768,
    "model.block_size": 128, "model.dropout": 0.0,
    "model.attn_block": 64,  # two query blocks at T=128: a little faster per step on a CPU ("Query-block attention")
    "model.products": "auto",  # bfloat16 products on a CPU with bfloat16 instructions (kernels.product_dtype)
    "optim.lr": 3e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 100,
    "train.batch_size": 32, "train.steps": 2500, "train.eval_every": 500,
    "train.checkpoint_every": 500, "train.steps_per_call": 20,
}
CPU = {**CPU_CLASSIC, "optim.name": "muon", "optim.muon_weight_decay": 0.2, "train.ema": 0.98, "train.steps": 1500}
PRESETS = {
    # A low validation loss within ~40 s on a 2-core CPU: the classic settings with Muon on
    # the hidden matrices (of the block options, the change that paid), weight decay on Muon's
    # matrices and the weights' moving average evaluated, at width 96 (3 heads of 32): its
    # steps are so much shorter than width 128's that more of them end lower in less time.
    # Zero-initialised output projections lowered the loss at this shape at no cost a step
    # and keep the GPT-2 block (exportable). 1,400 steps since bfloat16 products made them
    # fit; NorMuon lowered the loss there. (BENCHMARKS.md, "Muon against AdamW", "`cpu-quick`:
    # width 96, 1,400 steps, NorMuon", "Block options: RMSNorm, QK-norm, ReLU^2, zero-init,
    # untied head, softcap")
    "cpu-quick": {**CPU_QUICK_CLASSIC, "model.d_model": 96, "model.d_ff": 384, "model.n_head": 3,
                  "model.zero_init": True, "optim.name": "muon", "optim.muon_weight_decay": 0.1,
                  "optim.normuon_beta2": 0.95, "train.ema": 0.99, "train.steps": 1400},
    "cpu-quick-classic": CPU_QUICK_CLASSIC,
    FINETUNE_PRESET: FINETUNE,
    # The default with --lora R: the fine-tune's settings at the LoRA paper's rate for
    # GPT-2 (Hu et al. 2021, Table 11: 2e-4). Adapters whose B starts at zero move the
    # model far less per step than full fine-tuning's rate would: at 3e-5 they barely do.
    LORA_PRESET: {**FINETUNE, "optim.lr": 2e-4, "optim.min_lr": 2e-4},
    # The demo: `cpu-record`'s recipe without the prediction module and the gates, cut to
    # 1,250 steps, about 7 minutes on the AVX-512 EPYC (BENCHMARKS.md, "`cpu`: the record's
    # recipe in 1,250 steps").
    "cpu": {**CPU, "data.order": "epoch", "train.steps": 1250},
    # Muon on the classic settings for 1,500 steps: AdamW ends higher in more steps, and
    # Muon overfits past 1,500; its matrices decayed at 0.2, the regularisation that holds
    # the overfitting off, and the moving average evaluated; every window read once an
    # epoch, reshuffled: lower at every seed in the same steps. (BENCHMARKS.md, "Muon
    # against AdamW", "Weight decay on Muon's matrices", "The moving average of the
    # weights", "Data order: every window once an epoch"). Float32 products even where the
    # CPU has bfloat16 ones: their rounding raised seed 0 by 0.005 at 1,500 steps, a mean
    # at the 1.44 line (BENCHMARKS.md, "`cpu`: the record's recipe in 1,250 steps"). One
    # multi-token prediction module: 0.011 lower at every seed, a step 1.2-1.3x as long, the
    # whole command about 13 minutes (BENCHMARKS.md, "Multi-token prediction"). Head-wise
    # attention gates: 0.008 lower in the mean over four seeds, lower at each, p = 0.02, free
    # a step; a run no longer exports as GPT-2 (BENCHMARKS.md, "Value embeddings, ...").
    "cpu-record": {**CPU, "data.order": "epoch", "model.products": "float32", "model.mtp_depth": 1,
                   "model.attn_gate": True},
    "cpu-classic": CPU_CLASSIC,
    # nanoGPT's shakespeare_char GPU settings, but 2,500 steps (not 5,000) and bf16: the
    # validation loss bottoms out before 2,500 steps and then overfits, and bf16 trains
    # faster at a similar loss (BENCHMARKS.md, "`gpu`: 2,500 steps in bfloat16").
    "gpu": {
        "model.n_layer": 6, "model.n_head": 6, "model.d_model": 384, "model.d_ff": 1536,
        "model.block_size": 256, "model.dropout": 0.2, "model.dtype": "bfloat16",
        "model.attn_block": 0,  # the preset's loss was measured without query blocks (their dropout masks differ)
        "optim.lr": 1e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 100, "optim.b2": 0.99,
        "train.batch_size": 64, "train.steps": 2500, "train.eval_every": 250,
        "train.checkpoint_every": 500, "train.steps_per_call": 25, "data.eval_windows": 0,
    },
}


def encode(tokenizer, corpus: str, what) -> np.ndarray:
    """`corpus` as token ids; a one-line DataError (option data) for characters that a
    character tokenizer has no token for."""
    if tokenizer.kind == "char":
        unknown = sorted(set(corpus) - set(tokenizer.chars))
        if unknown:
            raise DataError(f"{what} holds {len(unknown)} character(s) the model has no token for "
                            f"({text.named_characters(unknown)}); it knows the {len(tokenizer)} characters "
                            "of the text it trained on", option="data")
    return tokenizer.encode(corpus)


def _quoted(text: str) -> str:
    """A piece of the user's or the model's text in a message: repr'd, cut after 30
    characters when longer than 40."""
    return repr(text) if len(text) <= 40 else repr(text[:30]) + "..."


class LMTask(DrawnOnDevice):
    """Language model on a text, or on token files."""

    name = "lm"
    unit = "tok"
    stacks = TextData.stacks
    Data = TextData
    presets = PRESETS
    default_preset = "cpu"
    finetune_preset = FINETUNE_PRESET  # with --init-from
    lora_preset = LORA_PRESET  # with --init-from and --lora
    sample_options = {"prompt": "\n", "tokens": 500, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 0,
                      "no_cache": False, "ignore_eos": False}
    # data: score this text file instead of the validation split; windows: only that many
    # evenly spaced windows of it (0: all), for a validation split too large to score whole
    eval_options = {"data": None, "windows": 0}
    mesh = None
    source = None  # {"path", "sha256"} of the text file (from_file), saved with each checkpoint

    def __init__(self, cfg: RunConfig, tokenizer, ids: np.ndarray | None = None, *, splits=None):
        """`tokenizer`: a CharTokenizer or a BpeTokenizer; the data: `ids` (split by
        data.val_fraction), or `splits` = (train, val) token arrays (memmaps of token files)."""
        self.tokenizer = tokenizer
        self.cfg = replace(cfg, model=replace(cfg.model, vocab_size=len(tokenizer)))
        if ids is not None:
            splits = text.split(ids, cfg.data.val_fraction)
        if splits is not None:
            self.train_ids, self.val_ids = splits
            block = cfg.model.block_size
            if len(self.train_ids) <= block + 1:
                raise DataError(f"the data gives {len(self.train_ids)} training tokens, fewer than one "
                                f"block (model.block_size={block}) plus one; use more text or a smaller block")
            if len(self.val_ids) < 2:  # a split shorter than a window is scored in one shorter window (loss_on)
                raise DataError(f"the data gives {len(self.val_ids)} validation token(s), fewer than 2 (a token "
                                "and the one that follows it); use more text or a larger data.val_fraction")
            if cfg.data.order == "epoch":
                self._check_epochs(cfg, len(self.train_ids))
        self._loss = jax.jit(lambda p, b: self.loss(p, b, cfg=self.cfg.model))
        self._token_bytes = tokenizer.token_bytes()

    @staticmethod
    def _check_epochs(cfg: RunConfig, n_tokens: int) -> None:
        """data.order=epoch needs a window at every shift below the block (2 x block tokens),
        and windows x batch within int32 (text.epoch_starts)."""
        block, batch = cfg.model.block_size, cfg.train.batch_size
        n = text.epoch_windows(n_tokens, block)
        if n < 1:
            raise DataError(f"data.order=epoch: the training split's {n_tokens} tokens hold no window of "
                            f"model.block_size={block} tokens at every shift (that needs {2 * block}); use "
                            "data.order=random, a smaller block or more text")
        if n * batch >= 2**31:
            raise DataError(f"data.order=epoch: {n:,} windows an epoch x train.batch_size={batch} passes 2**31; "
                            "use data.order=random or a smaller batch")

    def starts_of(self, rng, step, n_tokens: int):
        """Where step's windows start in a training split of `n_tokens`, by data.order."""
        block, batch = self.cfg.model.block_size, self.cfg.train.batch_size
        if self.cfg.data.order == "epoch":
            return text.epoch_starts(rng, step, n_tokens, block=block, batch=batch)
        return text.random_starts(batch_key(rng, step), n_tokens, block=block, batch=batch)

    # ------------------------------------------------------------ configuration
    @classmethod
    def tokens_per_step(cls, cfg: RunConfig) -> int:
        return cfg.train.batch_size * cfg.model.block_size

    # ------------------------------------------------------------ construction
    @classmethod
    def from_text(cls, cfg: RunConfig, corpus: str, tokenizer=None, *, what="the text") -> "LMTask":
        """The task on a text: its own characters are the vocabulary, or `tokenizer`
        (a fine-tune's: the run it starts from) encodes it. `what` names the text in errors."""
        tok = tokenizer or text.CharTokenizer.from_text(corpus)
        return cls(cfg, tok, encode(tok, corpus, what))

    @classmethod
    def from_file(cls, cfg: RunConfig, path, tokenizer=None) -> "LMTask":
        """from_text on a UTF-8 file, remembering which file (its absolute path and
        sha256) so that `eval` can find it again and a resumed run can check it."""
        task = cls.from_text(cfg, text.read_text(path), tokenizer, what=path)
        task.source = text.file_identity(path)
        return task

    @classmethod
    def from_token_files(cls, cfg: RunConfig, folder, tokenizer=None) -> "LMTask":
        """The task on a folder of token files (`scratchformer prepare`), its tokenizer
        theirs (which must be `tokenizer`, where one is given); the splits stay on disk
        (memmaps) until used."""
        files = TokenFiles(folder)
        if tokenizer is not None and files.tokenizer.to_json() != tokenizer.to_json():
            raise DataError(f"{folder} was prepared with another tokenizer than the run's; prepare the text with "
                            "the run's (scratchformer prepare TEXT --out DIR --tokenizer-from RUN), or pass the text "
                            "file itself", option="data")
        task = cls(cfg, files.tokenizer, splits=(files.train, files.val))
        task.source = files.identity()
        return task

    @classmethod
    def from_data(cls, cfg: RunConfig, path=None, like=None) -> "LMTask":
        """The task on a text file or a token-file folder; Tiny Shakespeare (downloaded
        once) without one. `like`: the task of the run a fine-tune starts from, whose
        tokenizer the data is read with."""
        tok = like.tokenizer if like is not None else None
        if path is not None and Path(path).is_dir():
            return cls.from_token_files(cfg, path, tok)
        return cls.from_file(cfg, path if path is not None else text.shakespeare_path(), tok)

    @classmethod
    def from_meta(cls, cfg: RunConfig, meta: dict) -> "LMTask":
        if isinstance(meta.get("tokenizer"), str):
            return cls(cfg, tokenizer_from_json(meta["tokenizer"], "the checkpoint's tokenizer"))
        vocab = meta.get("vocab")
        if not isinstance(vocab, str):
            raise DataError("checkpoint metadata has no character vocabulary")
        return cls(cfg, text.CharTokenizer(vocab))

    def meta(self) -> dict:
        """What a checkpoint carries to encode and decode as training did."""
        if self.tokenizer.kind == "char":
            return {"vocab": self.tokenizer.chars}
        return {"tokenizer": self.tokenizer.to_json()}

    def run_files(self) -> dict[str, str]:
        """Files written into the run folder beside config.json."""
        return {"tokenizer.json": self.tokenizer.to_json()}

    def with_training_data(self, meta: dict, run_dir) -> "LMTask":
        """The task again with the text it trained on (its splits), after checking that
        the file is still there and unchanged; a one-line DataError otherwise."""
        d = meta.get("data") or {}
        if meta.get("imported_from"):
            raise DataError(f"{run_dir} is an imported model with no data of its own; evaluate it on a text "
                            "with --data FILE")
        if not d.get("path"):
            raise DataError(f"{run_dir} records no text file (trained with LMTask.from_text); evaluation needs "
                            "one: train with LMTask.from_file or the command line")
        src = Path(str(d["path"]))
        if src.is_dir():
            fresh, what = LMTask.from_token_files(self.cfg, src, self._own_tokenizer()), "token files"
        elif not src.is_file():
            raise DataError(f"the run's text file {src} is gone; evaluation needs it")
        else:  # from_file hashes the file once; its source is compared below
            fresh, what = LMTask.from_file(self.cfg, src, self._own_tokenizer()), "text file"
        if fresh.source["sha256"] != d.get("sha256"):
            raise DataError(f"the run's {what} {src} changed since training (sha256 differs)")
        if fresh.tokenizer.to_json() != self.tokenizer.to_json():
            raise DataError(f"the vocabulary of {src} differs from the checkpoint's")
        return fresh

    def _own_tokenizer(self):
        """The tokenizer to read the run's data with again: a BPE's is the run's; a
        character run's is rebuilt from the text (and compared with the run's)."""
        return self.tokenizer if self.tokenizer.kind != "char" else None

    # ------------------------------------------------------------ training
    init_params = staticmethod(init_lm)  # (key, model config) -> params
    loss = staticmethod(lm_loss)  # (params, batch, *, cfg, train, key, label_smoothing) -> (sum, weight)

    def streams(self) -> bool:
        """Whether training batches are read from disk (data.stream; "auto": DEVICE_DATA_BYTES)."""
        if self.cfg.data.stream == "auto":
            return len(self.train_ids) * 4 > DEVICE_DATA_BYTES
        return self.cfg.data.stream == "on"

    def device_data(self) -> dict:
        return {"train": jax.numpy.asarray(np.asarray(self.train_ids, np.int32))}

    def input_spec(self, mesh, k: int) -> dict:
        if not self.streams():
            return super().input_spec(mesh, k)
        shape = (k, self.cfg.train.batch_size, self.cfg.model.block_size + 1)
        return {"windows": jax.ShapeDtypeStruct(shape, np.int32, sharding=WindowStream.sharding_of(mesh))}

    def feed(self, spec: dict, rng, first_step: int, k: int):
        if not self.streams():
            return super().feed(spec, rng, first_step, k)
        return WindowStream(self.train_ids, block=self.cfg.model.block_size, batch=self.cfg.train.batch_size,
                            rng=rng, mesh=spec["windows"].sharding.mesh, first_step=first_step, k=k,
                            starts_of=partial(self.starts_of, n_tokens=len(self.train_ids)))

    def batches(self, data: dict, rng, first_step, n_steps: int, batch: int) -> dict:
        if "windows" in data:  # streamed: the windows of these steps, read from disk
            w = data["windows"]
            return {"inputs": w[..., :-1], "targets": w[..., 1:]}
        if self.cfg.data.order == "epoch":
            tokens = data["train"]
            starts = jax.vmap(lambda s: self.starts_of(rng, s, tokens.shape[0]))(first_step + jnp.arange(n_steps))
            return text.windows(tokens, starts, self.cfg.model.block_size)
        return super().batches(data, rng, first_step, n_steps, batch)

    def sample_batch(self, data: dict, key, batch: int):
        return text.sample_batch(key, data["train"], batch=batch, block=self.cfg.model.block_size)

    # ------------------------------------------------------------ evaluation
    def evaluate(self, params, *, full: bool, progress: bool = False, data=None, windows: int = 0) -> dict:
        """Loss on the validation split (periodic: data.eval_windows windows of it; full:
        all of it, or `windows` evenly spaced windows), or on the text file `data`; with
        bits per byte of the text scored (loss per token over the bytes each token stands
        for: comparable across tokenizers)."""
        if data is not None:
            return self.evaluate_file(params, data, progress=progress, windows=windows)
        limit = windows if full else self.cfg.data.eval_windows
        loss, n, bpb = self.loss_on(params, self.val_ids, limit, progress=progress)
        return {"val_loss": loss, "val_perplexity": float(np.exp(loss)), "val_tokens": n, "bits_per_byte": bpb}

    def loss_on(self, params, ids, limit: int = 0, *, progress: bool = False,
                on_scored=None) -> tuple[float, int, float]:
        """(mean loss per token, targets scored, bits per byte) over token ids (an array
        or a memmap, read a chunk of windows at a time), each target scored once (all of
        them, or `limit` evenly spaced windows). `on_scored(n)`: called after each
        evaluation call with the number of targets it scored (else a bar, if `progress`).
        Ids shorter than a window (block_size + 1) are scored in one shorter window
        (`text.eval_block`): one more compiled shape, called once."""
        block = text.eval_block(len(ids), self.cfg.model.block_size)
        starts, weights = text.eval_starts(len(ids), block, limit)
        # a shorter window is the only one: a call of one window, not eval_chunk's many of padding
        chunk = eval_chunk(block, self.cfg.model.n_head) if block == self.cfg.model.block_size else 1
        targets = int(weights.sum())
        total = scored = text_bytes = 0.0
        with counter(targets, shown=progress and targets > PROGRESS_TARGETS, unit="tok", desc="scoring") as bar:
            for i in range(0, len(starts), chunk):
                windows = text.windows_at(ids, starts[i:i + chunk], weights[i:i + chunk], block)
                loss, n = eval_loss(self._loss, params, windows, chunk, self.mesh, on_scored or bar.update)
                total, scored = total + loss * n, scored + n
                text_bytes += float((self._token_bytes[windows["targets"]] * windows["weights"]).sum())
        mean = total / max(scored, 1.0)
        return mean, int(scored), total / math.log(2) / max(text_bytes, 1.0)

    def evaluate_file(self, params, path, *, progress: bool = False, windows: int = 0) -> dict:
        """The loss on a text of the user's choosing, every token of it after the first
        scored (or `windows` evenly spaced windows); a text shorter than a window, in one
        shorter window."""
        ids = encode(self.tokenizer, text.read_text(path), path)
        if len(ids) < 2:
            raise DataError(f"{path} has {len(ids)} token{'' if len(ids) == 1 else 's'}; scoring needs at least 2 "
                            "(a token and the one that follows it)", option="data")
        loss, n, bpb = self.loss_on(params, ids, windows, progress=progress)
        return {"data": str(path), "loss": loss, "perplexity": math.exp(loss), "tokens": n, "bits_per_byte": bpb}

    @staticmethod
    def describe(r: dict) -> str:
        if "data" in r:
            return (f"loss on {r['data']}: {r['loss']:.4f} (perplexity {r['perplexity']:.3f}, "
                    f"{r['bits_per_byte']:.4f} bits per byte) over {r['tokens']} tokens, checkpoint of step "
                    f"{r.get('step')}")
        ema = (f" with the weights' moving average ({r['val_loss_without_ema']:.4f} without)"
               if "val_loss_without_ema" in r else "")
        step = f", checkpoint of step {r['step']}" if r.get("step") is not None else ""  # eval's result
        return (f"validation loss {r['val_loss']:.4f} (perplexity {r['val_perplexity']:.3f}, "
                f"{r['bits_per_byte']:.4f} bits per byte) over {r['val_tokens']} tokens{ema}{step}")

    # ------------------------------------------------------------ use
    def sample(self, params, *, prompt, tokens, temperature, top_k, top_p, seed, no_cache,
               ignore_eos) -> tuple[str, str | None]:
        """The prompt and `tokens` generated tokens, as text; fewer where the model draws its
        end of text (a model's EOS, a BPE's <|endoftext|>), which ends the sample unshown,
        as transformers' generate ends there, unless `ignore_eos`. The note says so."""
        vocab = self.cfg.model.vocab_size
        if not 0 <= top_k <= vocab:
            raise UsageError(f"top_k={top_k} must be in [0, {vocab}]")
        if not prompt:
            raise UsageError("the prompt is empty; give at least one character")
        try:
            ids = self.tokenizer.encode(prompt)
        except DataError:
            if "\\" in prompt:  # a shell passed "\n" as two characters
                raise UsageError(f"\"{prompt}\" holds a backslash, which is not in the model's vocabulary; for a "
                                 "newline, pass a real one (bash: --prompt $'ROMEO:\\n')", option="prompt") from None
            raise
        if len(ids) == 0:
            raise UsageError(f"the prompt {prompt!r} encodes to no tokens")
        if len(ids) > self.cfg.model.block_size:
            raise UsageError(f"{_quoted(prompt)} is {len(ids):,} tokens long, longer than the model's context "
                             f"(model.block_size={self.cfg.model.block_size:,}); give a shorter one", option="prompt")
        if tokens > MAX_SAMPLE_TOKENS:
            raise UsageError(f"tokens={tokens:,} must be at most {MAX_SAMPLE_TOKENS:,}")
        stop = None if ignore_eos else end_of_text(self.tokenizer)
        out = generate(params, self.cfg.model, ids, tokens, seed=seed, temperature=temperature, top_k=top_k,
                       top_p=top_p, use_cache=not no_cache, stop=stop)
        made = len(out) - len(ids)
        if stop is None or out[-1] != stop:  # made >= 1: out[-1] is a generated token
            return self.tokenizer.decode(out), None
        end = _quoted(self.tokenizer.decode([stop]))
        return self.tokenizer.decode(out[:-1]), (f"the sample ended at {end}, the model's end of text, after "
                                                 f"{made:,} of {tokens:,} tokens (--ignore-eos goes on past it)")
