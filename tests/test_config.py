"""Config files: any valid run config written as a run writes it (config.json) reads
back through `train --config` into the same config, whatever preset is given on top.
Bad values of the model's block options are one-line errors naming the value."""

import dataclasses
import json

import pytest
from hypothesis import given, settings, strategies as st

from scratchformer.config import ModelConfig
from scratchformer.errors import ConfigError
from scratchformer.runconfig import make_config, overrides_from_file
from scratchformer.tasks import TASKS

PRESETS = {name: task.presets for name, task in TASKS.items()}


@st.composite
def run_configs(draw):
    task = draw(st.sampled_from(sorted(PRESETS)))
    n_head = draw(st.sampled_from([1, 2, 4]))
    over = {"model.n_layer": draw(st.integers(1, 4)), "model.n_head": n_head,
            "model.d_model": n_head * draw(st.sampled_from([4, 8, 16])),
            "model.dropout": draw(st.sampled_from([0.0, 0.1])),
            "model.positions": draw(st.sampled_from(["learned", "sinusoidal", "rope"])),
            "optim.lr": draw(st.sampled_from([1e-3, 3e-3])), "train.seed": draw(st.integers(0, 2**32 - 1)),
            "optim.name": draw(st.sampled_from(["adamw", "muon"])),
            "optim.schedule": draw(st.sampled_from(["cosine", "wsd"])),
            "optim.muon_coeffs": draw(st.sampled_from(["jordan", "polar_express"])),
            "optim.normuon_beta2": draw(st.sampled_from([0.0, 0.95])),
            "model.norm": draw(st.sampled_from(["layernorm", "rmsnorm"])),
            "model.qk_norm": draw(st.booleans()),
            "model.activation": draw(st.sampled_from(["gelu_tanh", "gelu", "relu2", "swiglu"])),
            "model.qkv_bias": draw(st.booleans()),
            "model.rope_theta": draw(st.sampled_from([10000.0, 5e5])),
            "model.rope_scaling": draw(st.sampled_from(["", "llama3"])),
            "model.zero_init": draw(st.booleans()),
            "model.logit_softcap": draw(st.sampled_from([0.0, 15.0, 30.0])),
            "train.steps": draw(st.integers(200, 3000))}
    kv = draw(st.sampled_from([0, 1, n_head]))
    over.update({"model.n_kv_head": kv, "model.fused_qkv": kv in (0, n_head) and draw(st.booleans())})
    if task == "reverse":
        over["data.max_len"] = draw(st.integers(1, 20))
        over["model.block_size"] = over["data.max_len"] + 2 + draw(st.integers(0, 4))
    else:
        over["data.val_fraction"] = draw(st.sampled_from([0.05, 0.1, 0.2]))
        over["data.eval_windows"] = draw(st.sampled_from([0, 16, 256]))
    preset = draw(st.sampled_from(sorted(PRESETS[task])))
    return task, make_config(task, preset, over)


@settings(max_examples=60, deadline=None)
@given(run_configs(), st.data())
def test_a_config_json_reads_back_as_the_same_config(tmp_path_factory, drawn, data):
    task, cfg = drawn
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    other_preset = data.draw(st.sampled_from(sorted(PRESETS[task])))  # the file's values win over it
    assert make_config(task, other_preset, overrides_from_file(path, task)) == cfg
    assert json.loads(path.read_text())["task"] == task


@pytest.mark.parametrize("key,value,message", [
    ("model.norm", "batchnorm", "model.norm='batchnorm' is not one of layernorm, rmsnorm"),
    ("model.norm", "RMSNorm", "model.norm='RMSNorm' is not one of layernorm, rmsnorm"),
    ("model.activation", "geglu", "model.activation='geglu' is not one of gelu_tanh, gelu, relu2, swiglu"),
    ("model.activation", "gelu_new", "model.activation='gelu_new' is not one of gelu_tanh, gelu, relu2, swiglu"),
    ("model.logit_softcap", "-1", "model.logit_softcap=-1.0 must be >= 0 (0 turns it off)"),
    ("model.logit_softcap", "inf", "model.logit_softcap='inf' is not a valid float"),
    ("model.qk_norm", "maybe", "model.qk_norm='maybe' is not a valid bool (true/false, 1/0, yes/no, on/off)"),
    ("model.zero_init", "2", "model.zero_init='2' is not a valid bool (true/false, 1/0, yes/no, on/off)"),
    # cpu-quick has 3 heads and a fused q|k|v
    ("model.n_kv_head", "2", "model.n_head=3 is not divisible by model.n_kv_head=2"),
    ("model.n_kv_head", "-1", "model.n_kv_head=-1 must be >= 0 (0: model.n_head)"),
    ("model.n_kv_head", "1", "model.n_kv_head=1 differs from model.n_head=3, and model.fused_qkv=true projects "
                             "equal queries, keys and values; set model.fused_qkv=false"),
    ("model.head_dim", "-4", "model.head_dim=-4 must be >= 0 (0: model.d_model / model.n_head)"),
    ("model.head_dim", "5000", "model.head_dim=5000 is larger than the limit 4096"),
    ("model.rope_theta", "0.5", "model.rope_theta=0.5 must be > 1"),
    ("model.rope_scaling", "yarn", "model.rope_scaling='yarn' is not one of '', 'llama3'"),
    ("model.rope_factor", "0.5", "model.rope_factor=0.5 must be >= 1"),
    ("model.rope_low_freq_factor", "0", "model.rope_low_freq_factor=0.0 must be > 0"),
    ("model.rope_high_freq_factor", "1", "model.rope_high_freq_factor=1.0 must be larger than "
                                         "model.rope_low_freq_factor=1.0"),
    ("model.rope_original_positions", "0", "model.rope_original_positions=0 must be > 0"),
    ("model.value_embed", "2", "model.value_embed='2' is not a valid bool (true/false, 1/0, yes/no, on/off)"),
    ("model.mtp_depth", "64", "model.mtp_depth=64 must be in [0, model.block_size=64)"),
    ("model.mtp_depth", "-1", "model.mtp_depth=-1 must be in [0, model.block_size=64)"),
    ("model.mtp_weight", "-0.5", "model.mtp_weight=-0.5 must be >= 0"),
])
def test_bad_block_options_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as e:
        make_config("lm", "cpu-quick", {key: value})
    assert str(e.value) == message


def test_attention_options_read_from_set_and_check_together():
    """A Llama-shaped model from --set: 6 query heads of a stated width 16 (d_model is no
    multiple of it) over 2 key/value heads; an odd stated width is refused with rope."""
    m = make_config("lm", "cpu-quick", {"model.n_head": "6", "model.n_kv_head": "2", "model.fused_qkv": "false",
                                        "model.head_dim": "16", "model.d_model": "80", "model.positions": "rope",
                                        "model.rope_theta": "500000", "model.rope_scaling": "llama3",
                                        "model.qkv_bias": "true", "model.activation": "swiglu"}).model
    assert (m.head_width, m.kv_heads, m.rope_theta, m.rope_scaling, m.qkv_bias) == (16, 2, 5e5, "llama3", True)
    assert (ModelConfig().head_width, ModelConfig().kv_heads) == (128 // 4, 4)  # 0: derived from d_model, n_head
    with pytest.raises(ConfigError, match=r"^model.positions='rope' rotates pairs of channels: the head width "
                                          r"model.head_dim=5 must be even$"):
        ModelConfig(positions="rope", head_dim=5)
    with pytest.raises(ConfigError, match=r"^model.d_model=30 is not divisible by model.n_head=4$"):
        ModelConfig(d_model=30)
    ModelConfig(d_model=30, head_dim=8)  # a stated width need not divide d_model


def test_every_model_option_is_a_key_of_train_help():
    from dataclasses import fields

    from scratchformer.runconfig import describe_keys
    listed = {row.split()[0] for row in describe_keys()}
    new = {"n_kv_head", "head_dim", "qkv_bias", "rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor",
           "rope_high_freq_factor", "rope_original_positions"}
    assert new <= {f.name for f in fields(ModelConfig)}
    assert {f"model.{f.name}" for f in fields(ModelConfig)} - listed == {"model.vocab_size"}  # derived from the data


def test_block_options_default_to_todays_model_and_parse_from_set():
    m = ModelConfig()
    assert (m.norm, m.qk_norm, m.activation, m.zero_init, m.logit_softcap) == ("layernorm", False, "gelu_tanh",
                                                                               False, 0.0)
    m = make_config("reverse", None, {"model.norm": "rmsnorm", "model.qk_norm": "true", "model.activation": "relu2",
                                      "model.zero_init": "yes", "model.logit_softcap": "30"}).model
    assert (m.norm, m.qk_norm, m.activation, m.zero_init, m.logit_softcap) == ("rmsnorm", True, "relu2", True, 30.0)
    with pytest.raises(ConfigError, match=r"^model.logit_softcap=nan must be >= 0"):
        ModelConfig(logit_softcap=float("nan"))


def test_lm_options_need_a_decoder_only_model_and_two_layers_for_skips():
    """The U-net pairs layers, so one layer is refused; the encoder-decoder of the reverse
    task has none of the LM's value embeddings, skips or gates."""
    with pytest.raises(ConfigError) as e:
        make_config("lm", "cpu-quick", {"model.unet_skips": "true", "model.n_layer": "1"})
    assert str(e.value) == ("model.unet_skips=true pairs the first half's layers with the second's: "
                            "model.n_layer=1 must be >= 2")
    for key, value in [("value_embed", "true"), ("unet_skips", "true"), ("attn_gate", "true"),
                       ("bigram_embed", "true"), ("mtp_depth", "2")]:
        with pytest.raises(ConfigError) as e:
            make_config("reverse", None, {f"model.{key}": value})
        assert str(e.value) == (f"model.{key}={value} is a language-model option (lm runs); the encoder-decoder "
                                "of the reverse task does not have it")
    m = make_config("lm", "cpu-quick", {f"model.{k}": "true" for k in ("value_embed", "unet_skips", "attn_gate")})
    assert (m.model.value_embed, m.model.unet_skips, m.model.attn_gate) == (True, True, True)
    big = make_config("lm", "cpu-quick", {"model.bigram_embed": "true"})
    assert dataclasses.replace(big, model=dataclasses.replace(big.model, vocab_size=65)).model.bigram_embed
    with pytest.raises(ConfigError) as e:  # the vocabulary comes from the data: a BPE corpus's is too large
        dataclasses.replace(big, model=dataclasses.replace(big.model, vocab_size=8192))
    assert str(e.value) == ("model.bigram_embed=true keeps (V + 1) x V rows, one per pair of symbols: the "
                            "vocabulary's 8,192 symbols are over 1,024 (a character vocabulary fits); turn it off")
