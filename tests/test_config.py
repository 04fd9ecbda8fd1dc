"""Config files: any valid run config written as a run writes it (config.json) reads
back through `train --config` into the same config, whatever preset is given on top."""

import json

from hypothesis import given, settings, strategies as st

from scratchformer.config import make_config, overrides_from_file
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
