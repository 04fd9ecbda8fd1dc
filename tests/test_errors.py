"""The one family of user errors: what a person caused is one line and exit 2, with
the command-line option named by the command line only; anything else is a bug and
keeps its traceback. And run folders written before the per-task data sections
(config format 1) still open."""

import json

import pytest
from safetensors.numpy import save as st_save

from scratchformer import checkpoint as ckpt, errors
from scratchformer.cli import main
from scratchformer.files import strict_json

from test_cli import REV_TINY, cli


def test_every_user_error_is_a_scratchformer_error_and_no_value_error():
    kinds = [errors.ConfigError, errors.DataError, errors.CheckpointError, errors.OutOfMemory, errors.UsageError,
             errors.ResumeMismatch]
    for kind in kinds:
        assert issubclass(kind, errors.ScratchformerError) and not issubclass(kind, ValueError)


@pytest.mark.parametrize("bug", [ValueError("internal: a shape did not match"), OSError(5, "Input/output error"),
                                 KeyError("step")])
def test_a_bug_keeps_its_traceback(monkeypatch, capsys, bug):
    """A ValueError (or OSError, KeyError) from our own code is not the user's fault:
    main does not turn it into a one-line error and exit 2."""
    from scratchformer import cli as cli_module

    def broken(a):
        raise bug
    monkeypatch.setitem(cli_module.RUN, "plot", broken)
    with pytest.raises(type(bug)):
        main(["plot", "runs/any"])
    assert "scratchformer: error" not in capsys.readouterr().err


def test_library_errors_name_the_value_and_the_command_line_adds_the_flag(tmp_path, capsys):
    from scratchformer.runconfig import make_config
    from scratchformer.tasks import LMTask
    missing = tmp_path / "nope.txt"
    with pytest.raises(errors.DataError) as e:
        LMTask.from_file(make_config("lm"), missing)
    assert str(e.value) == f"{missing}: no such file" and e.value.option == "data"
    assert cli(capsys, "train", "lm", "--data", missing)[2] == f"scratchformer: error: --data {missing}: no such file\n"


def _to_format_1(cfg: dict) -> dict:
    """A config as scratchformer wrote it before each task had its own data section: one
    data section with both tasks' keys, and the LM's eval_windows under train."""
    old = {k: v for k, v in cfg.items() if k != "format"}
    old["data"] = {"vocab_size": 20, "min_len": 1, "max_len": 20, "eval_size": 10000, "eval_seed": 1234,
                   "val_fraction": 0.1, **cfg["data"]}
    old["data"].pop("eval_windows", None)
    old["train"] = {**cfg["train"], "eval_windows": cfg["data"].get("eval_windows", 256)}
    return old


def test_a_run_folder_of_config_format_1_still_opens(tmp_path, capsys):
    run = tmp_path / "rev"
    assert cli(capsys, "train", "reverse", "--steps", 40, "--out", run, "--no-progress", *REV_TINY)[0] == 0
    before = json.loads(cli(capsys, "eval", run, "--json")[1])
    new = json.loads((run / "config.json").read_text())
    assert new["format"] == 2 and "eval_windows" not in new["train"] and "val_fraction" not in new["data"]
    (run / "config.json").write_text(json.dumps(_to_format_1(new)))
    for path in (run / ckpt.CKPT_DIR).glob("*.safetensors"):
        tensors, meta = ckpt.read(path)
        meta["config"] = _to_format_1(meta["config"])
        path.write_bytes(st_save(tensors, metadata={"scratchformer": strict_json(meta)}))

    assert json.loads(cli(capsys, "eval", run, "--json")[1]) == before
    assert cli(capsys, "plot", run)[0] == 0
    code, out, err = cli(capsys, "train", "reverse", "--out", run, "--resume", "--no-progress")
    assert code == 0 and "the run had already trained its 40 steps" in out, err

    (run / "config.json").write_text(json.dumps({**new, "format": 3}))
    code, _, err = cli(capsys, "train", "reverse", "--config", run, "--dry-run")
    assert code == 2 and err == (f"scratchformer: error: --config {run / 'config.json'}: config format 3 is not one "
                                 "this version reads (1 or 2); a newer scratchformer wrote it\n")
