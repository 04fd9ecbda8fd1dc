"""Config files: any valid run config written as a run writes it (config.json) reads
back through `train --config` into the same config, whatever preset is given on top.
Bad values of the model's block options are one-line errors naming the value."""

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
            "model.norm": draw(st.sampled_from(["layernorm", "rmsnorm"])),
            "model.qk_norm": draw(st.booleans()),
            "model.activation": draw(st.sampled_from(["gelu_tanh", "gelu", "relu2"])),
            "model.zero_init": draw(st.booleans()),
            "model.logit_softcap": draw(st.sampled_from([0.0, 15.0, 30.0])),
            "train.steps": draw(st.integers(200, 3000))}
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
])
def test_bad_block_options_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as e:
        make_config("lm", "cpu-quick", {key: value})
    assert str(e.value) == message


def test_block_options_default_to_todays_model_and_parse_from_set():
    m = ModelConfig()
    assert (m.norm, m.qk_norm, m.activation, m.zero_init, m.logit_softcap) == ("layernorm", False, "gelu_tanh",
                                                                               False, 0.0)
    m = make_config("reverse", None, {"model.norm": "rmsnorm", "model.qk_norm": "true", "model.activation": "relu2",
                                      "model.zero_init": "yes", "model.logit_softcap": "30"}).model
    assert (m.norm, m.qk_norm, m.activation, m.zero_init, m.logit_softcap) == ("rmsnorm", True, "relu2", True, 30.0)
    with pytest.raises(ConfigError, match=r"^model.logit_softcap=nan must be >= 0"):
        ModelConfig(logit_softcap=float("nan"))
