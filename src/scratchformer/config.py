"""Run configuration: frozen dataclasses that check their own values, and the tuples of
the names each setting accepts.

Every default lives here, or in the data section of the task that owns it (tasks/),
and nowhere else. A run is described by one `RunConfig`: the task's name, the model,
optim train and lora sections, and the task's own data section. This module imports none
of its users; runconfig.py composes a config from a preset, --config and --set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# config.json's layout: 1 had one data section holding both tasks' keys and
# train.eval_windows; 2 gives each task its own data section (runconfig.upgrade).
FORMAT = 2
DTYPES = ("float32", "bfloat16", "float64")  # float64: for numerical checks (needs jax_enable_x64)
POSITIONS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu2", "swiglu")
ROPE_SCALINGS = ("", "llama3")  # "": none
PRODUCTS = ("auto", "float32", "bfloat16")
MAX_BIGRAM_VOCAB = 1024  # model.bigram_embed's table has (V + 1) x V rows
LM_ONLY = ("value_embed", "unet_skips", "attn_gate", "bigram_embed", "mtp_depth")  # the decoder-only LM's alone
OPTIMIZERS = ("adamw", "muon")  # built by optim.optimizer
MUON_COEFFS = ("jordan", "polar_express")  # Newton-Schulz coefficient sets, optim/muon.py's NS_SCHEDULES
SCHEDULES = ("cosine", "wsd")   # built by optim.schedule
# The linear layers lora.targets may name (lora.py finds each in a block's params):
# attention's query, key, value and output projections (q, k, v: column blocks of the
# fused "qkv" matrix under model.fused_qkv), the MLP's two, or a gated MLP's three.
LORA_TARGETS = ("q", "k", "v", "out", "fc", "proj", "gate", "up", "down")

# Upper bounds that keep a tampered or mistyped config from allocating absurd
# arrays: they are far above anything a CPU or one GPU trains here.
MAX = {
    "n_layer": 256, "n_head": 1024, "head_dim": 4096, "d_model": 65536, "d_ff": 262144,
    "block_size": 131072, "vocab_size": 1 << 20, "batch_size": 1 << 20,
    "steps": 1 << 31, "grad_accum": 4096, "steps_per_call": 4096,
    "max_len": 4096, "eval_size": 1 << 24, "rank": 65536, "mtp_depth": 16,
}
MAX_PARAMS = 1 << 34  # ~17e9 parameters
SECTIONS = ("model", "optim", "train", "lora", "data")
DERIVED = {"model.vocab_size"}  # set by the task from the data; a person cannot set it


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_positive(obj, section: str, *names) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v > 0, f"{section}.{n}={v!r} must be > 0")


def check_bounded(obj, section: str, *names) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v <= MAX[n], f"{section}.{n}={v!r} is larger than the limit {MAX[n]}")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 4          # blocks (per stack for the encoder-decoder)
    n_head: int = 4
    n_kv_head: int = 0        # key/value heads (grouped-query attention, Ainslie et al. 2023): each serves
                              # n_head / n_kv_head query heads; 0 = n_head (multi-head attention)
    head_dim: int = 0         # width of one head; 0 = d_model / n_head (the effective value: head_width)
    d_model: int = 128
    d_ff: int = 512
    dropout: float = 0.0
    block_size: int = 64      # longest sequence the model sees (LM context; enc-dec max length)
    vocab_size: int = 0       # set from the data by the task, never by hand
    tie_embeddings: bool = True
    fused_qkv: bool = True
    positions: str = "learned"  # learned table, sinusoidal (Vaswani et al.) or rope (rotary, Su et al.)
    rope_theta: float = 10000.0  # rope: the base of the rotation frequencies theta^(-2i/K)
    rope_scaling: str = ""    # rope: "" or llama3 (Llama 3.1, 3.2: the long wavelengths' frequencies slowed)
    rope_factor: float = 8.0  # llama3: low frequencies divided by this
    rope_low_freq_factor: float = 1.0   # llama3: wavelengths over rope_original_positions / this are divided
    rope_high_freq_factor: float = 4.0  # llama3: under rope_original_positions / this kept; between, blended
    rope_original_positions: int = 8192  # llama3: the context the unscaled frequencies were trained at
    bias: bool = True
    qkv_bias: bool = False    # queries, keys and values have biases even with bias=false (Qwen2)
    ln_eps: float = 1e-5      # epsilon of every norm (and of qk_norm)
    norm: str = "layernorm"   # layernorm (Ba et al. 2016) or rmsnorm (Zhang & Sennrich 2019: a scale, no bias)
    qk_norm: bool = False     # RMS-normalise each head's queries and keys, no parameters (modded-nanogpt)
    activation: str = "gelu_tanh"  # feed-forward: gelu_tanh (GPT-2), gelu (exact, erf), relu2 (So et al. 2021)
                                   # or swiglu (Shazeer 2020: down(silu(gate(x)) * up(x)), LLaMA)
    zero_init: bool = False   # attention's and the MLP's output projections start at zero (modded-nanogpt)
    logit_softcap: float = 0.0  # c > 0: logits = c * tanh(logits / c) (Gemma 2); 0 = off
    dtype: str = "float32"    # activation / matmul dtype; params and optimizer stay float32
    products: str = "float32"  # float32 layers' matrix products: bfloat16 inputs with float32 sums, or
                               # float32; auto: bfloat16 where it is faster (kernels.product_dtype)
    attn_block: int = 128     # causal self-attention in query blocks of this many positions
                              # (skips the masked half) when T is a multiple >= 2x; 0 = off
    # Language-model options from the small-model speedruns (modded-nanogpt; Tiny Shakespeare's
    # record, BENCHMARKS.md "Value embeddings, U-net skips, attention gates, NorMuon, Polar Express, bigrams"):
    value_embed: bool = False  # a second token table added to every layer's values, times a learned gain
                               # per layer (value embeddings, modded-nanogpt; value residuals, Zhou et al. 2024)
    unet_skips: bool = False   # layer L-1-i also reads layer i's output, i < L/2, times a learned weight
                               # (modded-nanogpt's U-net)
    attn_gate: bool = False    # each head's attention output times sigmoid(x W_g), x the block's normed input,
                               # W_g starting at 0 (Qiu et al. 2025, a head-wise gate)
    bigram_embed: bool = False  # a row per (previous, current) symbol pair added to the token embedding,
                                # starting at zero; for character vocabularies (<= MAX_BIGRAM_VOCAB)
    mtp_depth: int = 0        # multi-token prediction in training (DeepSeek-V3; BENCHMARKS.md "Multi-token prediction"):
                              # module k, a block reading module k-1's output and token i+k, predicts token i+k+1
    mtp_weight: float = 0.3   # their losses' weight: loss + mtp_weight / mtp_depth * (sum of theirs); the
                              # training loss printed includes it, evaluation and sampling never use the modules

    def __post_init__(self):
        check_positive(self, "model", "n_layer", "n_head", "d_model", "d_ff", "block_size")
        check_bounded(self, "model", "n_layer", "n_head", "head_dim", "d_model", "d_ff", "block_size", "vocab_size")
        check(self.head_dim >= 0, f"model.head_dim={self.head_dim} must be >= 0 (0: model.d_model / model.n_head)")
        check(self.head_dim or self.d_model % self.n_head == 0,
              f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        check(self.n_kv_head >= 0, f"model.n_kv_head={self.n_kv_head} must be >= 0 (0: model.n_head)")
        check(self.n_head % self.kv_heads == 0,
              f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}")
        check(not self.fused_qkv or self.kv_heads == self.n_head,
              f"model.n_kv_head={self.n_kv_head} differs from model.n_head={self.n_head}, and model.fused_qkv=true "
              f"projects equal queries, keys and values; set model.fused_qkv=false")
        check(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout!r} must be in [0, 1)")
        check(self.vocab_size >= 0, f"model.vocab_size={self.vocab_size} must be >= 0")
        check(self.positions in POSITIONS, f"model.positions={self.positions!r} is not one of {', '.join(POSITIONS)}")
        width = (f"model.head_dim={self.head_dim}" if self.head_dim else
                 f"model.d_model / model.n_head = {self.d_model} / {self.n_head}")
        check(self.positions != "rope" or self.head_width % 2 == 0,
              f"model.positions='rope' rotates pairs of channels: the head width {width} must be even")
        self._check_rope()
        check(self.dtype in DTYPES, f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        check(self.products in PRODUCTS, f"model.products={self.products!r} is not one of {', '.join(PRODUCTS)}")
        check(self.attn_block >= 0, f"model.attn_block={self.attn_block} must be >= 0 (0 turns it off)")
        check(0.0 < self.ln_eps < 1.0, f"model.ln_eps={self.ln_eps!r} must be in (0, 1)")
        check(self.norm in NORMS, f"model.norm={self.norm!r} is not one of {', '.join(NORMS)}")
        check(self.activation in ACTIVATIONS,
              f"model.activation={self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        check(math.isfinite(self.logit_softcap) and self.logit_softcap >= 0,
              f"model.logit_softcap={self.logit_softcap!r} must be >= 0 (0 turns it off)")
        check(0 <= self.mtp_depth < self.block_size,
              f"model.mtp_depth={self.mtp_depth} must be in [0, model.block_size={self.block_size})")
        check_bounded(self, "model", "mtp_depth")
        check(math.isfinite(self.mtp_weight) and self.mtp_weight >= 0,
              f"model.mtp_weight={self.mtp_weight!r} must be >= 0")
        check(not self.unet_skips or self.n_layer >= 2,
              f"model.unet_skips=true pairs the first half's layers with the second's: model.n_layer="
              f"{self.n_layer} must be >= 2")

    def _check_rope(self):
        # Checked whatever model.positions is: a value that would be refused with rope is a mistake anyway.
        check(math.isfinite(self.rope_theta) and self.rope_theta > 1.0,
              f"model.rope_theta={self.rope_theta!r} must be > 1")
        check(self.rope_scaling in ROPE_SCALINGS,
              f"model.rope_scaling={self.rope_scaling!r} is not one of {', '.join(map(repr, ROPE_SCALINGS))}")
        # The ranges transformers' _validate_llama3_rope_parameters asks for.
        check(math.isfinite(self.rope_factor) and self.rope_factor >= 1.0,
              f"model.rope_factor={self.rope_factor!r} must be >= 1")
        check(math.isfinite(self.rope_low_freq_factor) and self.rope_low_freq_factor > 0,
              f"model.rope_low_freq_factor={self.rope_low_freq_factor!r} must be > 0")
        check(math.isfinite(self.rope_high_freq_factor) and self.rope_high_freq_factor > self.rope_low_freq_factor,
              f"model.rope_high_freq_factor={self.rope_high_freq_factor!r} must be larger than "
              f"model.rope_low_freq_factor={self.rope_low_freq_factor!r}")
        check(self.rope_original_positions > 0,
              f"model.rope_original_positions={self.rope_original_positions} must be > 0")

    @property
    def head_width(self) -> int:
        """K, the width of one head: model.head_dim, or d_model / n_head when that is 0."""
        return self.head_dim or self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: model.n_kv_head, or n_head when that is 0."""
        return self.n_kv_head or self.n_head


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"         # adamw, or muon: Muon on the hidden matrices, AdamW on the rest
    lr: float = 1e-3            # (AdamW's) peak learning rate, reached at the end of warmup
    min_lr: float = 1e-4        # floor the schedule decays to at the last step
    warmup_steps: int = 100
    schedule: str = "cosine"    # cosine (warmup + cosine) or wsd (warmup, stable, linear decay)
    decay_fraction: float = 0.2  # wsd: the linear decay takes this last fraction of train.steps
    weight_decay: float = 0.1   # decoupled, multiplied by lr (torch / optax convention)
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    clip_norm: float = 1.0      # global-norm clipping; 0 disables
    decay_embeddings: bool = True
    muon_lr: float = 0.02       # Muon's peak rate (Jordan et al.'s reference); the schedule scales it as lr
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    muon_coeffs: str = "jordan"  # Newton-Schulz's (a, b, c): jordan (one quintic) or polar_express (one per step)
    normuon_beta2: float = 0.0   # > 0: NorMuon, each neuron's Muon update over the RMS of its recent ones; 0 = off

    def __post_init__(self):
        check(self.name in OPTIMIZERS, f"optim.name={self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        check(self.schedule in SCHEDULES, f"optim.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        check(self.muon_coeffs in MUON_COEFFS,
              f"optim.muon_coeffs={self.muon_coeffs!r} is not one of {', '.join(MUON_COEFFS)}")
        check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr={self.lr!r} must be > 0")
        check(math.isfinite(self.muon_lr) and self.muon_lr > 0, f"optim.muon_lr={self.muon_lr!r} must be > 0")
        check(0 <= self.min_lr <= self.lr, f"optim.min_lr={self.min_lr!r} must be in [0, optim.lr={self.lr!r}]")
        check(self.warmup_steps >= 0, f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        check(0 < self.decay_fraction <= 1, f"optim.decay_fraction={self.decay_fraction!r} must be in (0, 1]")
        for n in ("weight_decay", "muon_weight_decay"):
            v = getattr(self, n)
            check(v >= 0, f"optim.{n}={v!r} must be >= 0")
        for n in ("b1", "b2", "muon_momentum"):
            v = getattr(self, n)
            check(0 <= v < 1, f"optim.{n}={v!r} must be in [0, 1)")
        check(self.eps > 0, f"optim.eps={self.eps!r} must be > 0")
        check(self.clip_norm >= 0, f"optim.clip_norm={self.clip_norm!r} must be >= 0 (0 disables)")
        check(0 <= self.normuon_beta2 < 1,
              f"optim.normuon_beta2={self.normuon_beta2!r} must be in [0, 1) (0 turns NorMuon off)")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    steps: int = 2000
    grad_accum: int = 1           # micro-batches per optimizer step
    steps_per_call: int = 10      # optimizer steps per jitted call (lax.scan); same numbers as 1
    eval_every: int = 250
    checkpoint_every: int = 500
    keep_checkpoints: int = 2     # latest K kept, plus the best
    seed: int = 0
    label_smoothing: float = 0.0
    ema: float = 0.0              # decay of a moving average of the weights, evaluated, sampled and exported
                                  # in their place (e.g. 0.999; optim/ema.py); 0 = off
    skip_nonfinite: bool = False  # skip a step whose loss/gradient is NaN/inf instead of stopping
    init_from: str = ""           # a run (folder or checkpoint) whose weights this run starts from (finetune.py)

    def __post_init__(self):
        check_positive(self, "train", "batch_size", "steps", "grad_accum", "steps_per_call",
                       "eval_every", "checkpoint_every", "keep_checkpoints")
        check_bounded(self, "train", "batch_size", "steps", "grad_accum", "steps_per_call")
        check(self.batch_size % self.grad_accum == 0,
              f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        check(0 <= self.label_smoothing < 1, f"train.label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        check(0 <= self.ema < 1, f"train.ema={self.ema!r} must be in [0, 1) (0 turns it off)")
        check(0 <= self.seed < 2**32, f"train.seed={self.seed} must be in [0, 2**32)")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (Hu et al. 2021; lora.py): rank-r adapters beside the frozen weights of the
    run train.init_from names; the defaults are PEFT's LoraConfig's."""
    rank: int = 0          # r of every adapter; 0 = off (the whole model trains)
    alpha: float = 8.0     # an adapter's output is scaled by alpha / rank (PEFT's lora_alpha)
    dropout: float = 0.0   # on an adapted layer's input, in the adapter's path only (PEFT's lora_dropout)
    targets: str = "q,v"   # comma-separated names from LORA_TARGETS: the paper's choice, PEFT's for Llama

    def __post_init__(self):
        check(self.rank >= 0, f"lora.rank={self.rank} must be >= 0 (0 turns LoRA off)")
        check_bounded(self, "lora", "rank")
        check(math.isfinite(self.alpha) and self.alpha > 0, f"lora.alpha={self.alpha!r} must be > 0")
        check(0.0 <= self.dropout < 1.0, f"lora.dropout={self.dropout!r} must be in [0, 1)")
        names, known = self.target_names, ", ".join(LORA_TARGETS)
        check(bool(names), f"lora.targets={self.targets!r} names no layer; choose from {known}")
        for n in names:
            check(n in LORA_TARGETS, f"lora.targets={self.targets!r}: {n!r} is not one of the linear layers {known}")
        check(len(set(names)) == len(names), f"lora.targets={self.targets!r} names a layer twice")

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.targets.split(",") if n.strip())


@dataclass(frozen=True)
class RunConfig:
    """A whole run. `data` is the task's own section (tasks/: TextData, ReverseData),
    which knows what its task needs of the other sections (`check_run`) and how large
    its vocabulary can be (`max_vocab`)."""
    task: str = "lm"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: Any = None  # the task's data section, given by whoever composes the config (runconfig.py)

    def __post_init__(self):
        check(getattr(self.data, "task", None) == self.task,
              f"the data section of a {self.task} run must be its task's, not {type(self.data).__name__}")
        check(self.optim.warmup_steps < self.train.steps,
              f"optim.warmup_steps={self.optim.warmup_steps} must be smaller than train.steps={self.train.steps} "
              f"(for a short run, also pass --set optim.warmup_steps=N with N < {self.train.steps})")
        if self.lora.rank:
            check(bool(self.train.init_from), f"lora.rank={self.lora.rank} adapts a trained model: name the run "
                  "whose weights it adapts with --init-from RUN (train.init_from)")
            check(self.optim.name == "adamw", f"optim.name={self.optim.name!r} with lora.rank={self.lora.rank}: "
                  "LoRA's adapters train with optim.name=adamw (Muon orthogonalises the update of a whole "
                  "matrix, not of the two thin factors of a low-rank one)")
        self.data.check_run(self)
        vocab = self.data.max_vocab(self)
        check(not self.model.bigram_embed or vocab <= MAX_BIGRAM_VOCAB,
              f"model.bigram_embed=true keeps (V + 1) x V rows, one per pair of symbols: the vocabulary's "
              f"{vocab:,} symbols are over {MAX_BIGRAM_VOCAB:,} (a character vocabulary fits); turn it off")
        n = approx_params(self.model, self.data.stacks, vocab)
        check(n <= MAX_PARAMS, f"the model would have ~{n:.3g} parameters, over the limit {MAX_PARAMS:.3g}")

    def to_dict(self) -> dict:
        """What config.json and every checkpoint hold."""
        return {"format": FORMAT, **dataclasses.asdict(self)}


def approx_params(m: ModelConfig, stacks: int, vocab: int) -> int:
    attn = 2 * m.d_model * m.head_width * (m.n_head + m.kv_heads)  # q and out; k and v
    per_block = attn + (3 if m.activation == "swiglu" else 2) * m.d_model * m.d_ff
    values = vocab * m.head_width * m.kv_heads if m.value_embed else 0
    bigrams = (vocab + 1) * vocab * m.d_model if m.bigram_embed else 0
    mtp = m.mtp_depth * (per_block + 2 * m.d_model * m.d_model)
    return (stacks * m.n_layer * per_block + vocab * m.d_model + m.block_size * m.d_model + values + bigrams
            + mtp)
