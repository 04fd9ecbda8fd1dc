"""benchmarks/torch_nanogpt.py's training mode against nanoGPT's own rules: the character
split of data/shakespeare_char/prepare.py, train.py's learning-rate schedule, and a tiny
loop's evaluations, iteration count, thresholds and --max-seconds stop."""

import importlib.util
import math

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")

spec = importlib.util.spec_from_file_location("torch_nanogpt", ROOT / "benchmarks" / "torch_nanogpt.py")
tn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tn)

TINY = {**tn.RECIPES["cpu"], "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "batch_size": 4,
        "eval_interval": 2, "eval_iters": 2, "max_iters": 4, "lr_decay_iters": 4, "warmup_iters": 1}


def test_characters_split_as_prepare_py(tmp_path):
    text = "hello world\n" * 10  # 120 characters: 108 train, 12 val
    path = tmp_path / "t.txt"
    path.write_text(text)
    train, val, vocab = tn.load_chars(path)
    assert vocab == len(set(text)) and (len(train), len(val)) == (108, 12)
    chars = sorted(set(text))
    assert "".join(chars[i] for i in train[:12]) == "hello world\n"


def test_schedule_as_train_py():
    r = tn.RECIPES["cpu"]
    assert tn.get_lr(0, r) == pytest.approx(1e-3 / 101)  # nanoGPT's warmup starts above zero since dc81cb3
    assert tn.get_lr(100, r) == pytest.approx(1e-3)
    assert tn.get_lr(1050, r) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 9e-4)
    assert tn.get_lr(2000, r) == pytest.approx(1e-4) and tn.get_lr(2001, r) == 1e-4


def test_tiny_loop_evaluates_at_0_and_every_interval_and_runs_max_iters_plus_one(tmp_path, tiny_text, capsys):
    path = tmp_path / "t.txt"
    path.write_text(tiny_text)
    out = tn.train(path, TINY, thresholds=[100.0, 0.0])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("iter ")]
    assert [x.split(":")[0] for x in lines] == ["iter 0", "iter 2", "iter 4"]
    assert out["iters_done"] == 5 and out["stopped_by"] == "max_iters" and out["last_eval"]["iter"] == 4
    assert out["thresholds"]["100.0"]["iter"] == 0 and out["thresholds"]["0.0"] is None
    assert out["median_s_per_iter"] > 0 and out["eval_batches_done"] == 3 * 2 * 2
    assert out["projected_loop_seconds"] == pytest.approx(
        5 * out["median_s_per_iter"] + 3 * 2 * 2 * out["median_s_per_eval_batch"], abs=0.1)


def test_max_seconds_cuts_the_first_evaluation(tmp_path, tiny_text, capsys):
    path = tmp_path / "t.txt"
    path.write_text(tiny_text)
    out = tn.train(path, TINY, thresholds=[100.0], max_seconds=1e-9)
    assert "evaluation cut by --max-seconds" in capsys.readouterr().out
    assert out["stopped_by"] == "max_seconds" and out["iters_done"] == 0 and out["last_eval"] is None
    assert out["thresholds"] == {"100.0": None} and out["median_s_per_iter"] is None
    assert out["eval_batches_done"] == 0 and out["projected_loop_seconds"] is None
