"""The README's Python blocks run as they stand, and do what the README says they do."""

import contextlib
import io
import math
import re

from conftest import ROOT


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def run_block(code: str) -> tuple[dict, str]:
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace, out.getvalue()


def test_readme_has_the_two_blocks():
    assert len(python_blocks()) == 2


def test_hand_written_loop_learns_its_text():
    ns, out = run_block(python_blocks()[0])
    assert float(ns["loss"]) < 0.2, out  # from ln(V) ~ 2.8 at the start
    assert out.splitlines()[-1].startswith("to be, ")  # greedy continuation of the prompt


def test_fit_then_load(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.txt").write_text(tiny_text * 2)
    ns, out = run_block(python_blocks()[1])
    vocab = len(ns["tok"])
    assert ns["summary"]["steps"] == 300 and ns["summary"]["val_loss"] < 0.5 * math.log(vocab), out
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "best.safetensors").is_file()
    assert ns["meta"]["data"]["path"] == str(tmp_path / "my.txt")
    assert abs(float(ns["probs"].sum()) - 1.0) < 1e-5 and ns["tok"].decode(ns["ids"]).startswith("ROMEO:")
