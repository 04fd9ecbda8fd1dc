"""benchmarks/ablation.py: a recipe of one's own (--recipe), and the step and seconds at which
a run first reached each loss, read from a run folder made here by hand."""

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = str(ROOT / "benchmarks" / "ablation.py")


def fake_run(folder, evals: dict[int, float], seconds: dict[int, float], *, steps: int, train_s: float):
    """The files the script reads of a finished run: summary.json, metrics.jsonl and the log
    with the training loop's evaluation lines."""
    run = folder / "mine-s0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"steps": steps, "train_time_s": train_s, "val_loss": 1.4621,
                                                  "best_periodic_val_loss": min(evals.values())}))
    rows = [{"step": 1, "loss": 2.0}] + [{"step": s, "val_loss": v} for s, v in evals.items()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "mine-s0.log").write_text("".join(f"step {s}: val_loss {evals[s]:.4f} ({t} s)\n"
                                                for s, t in seconds.items()))


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, "--data", "unused.txt", *args], capture_output=True, text=True)


def test_own_recipe_reads_the_first_step_at_each_loss(tmp_path):
    fake_run(tmp_path, {125: 1.62, 250: 1.49, 375: 1.4699, 500: 1.48}, {125: 3.5, 250: 7.25, 375: 11.0},
             steps=500, train_s=20.0)
    out = tmp_path / "runs.json"
    done = run_script("--out-dir", str(tmp_path), "--read-only", "--seeds", "0", "--thresholds", "1.50", "1.47",
                      "--recipe", "mine=optim.name=muon,train.steps=500", "--recipes", "mine", "--json", str(out))
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    assert saved["recipes"] == {"mine": ["optim.name=muon", "train.steps=500"]}
    (run,) = saved["runs"]
    # 1.5: first at step 250 (7.25 s from the log); 1.47: at 375 (1.4699), not 500 (1.48, above)
    assert run["reached"] == {"1.5": {"step": 250, "s": 7.25}, "1.47": {"step": 375, "s": 11.0}}
    assert run["ms_per_step"] == 40.0 and "| mine | 1 | 1.4621" in done.stdout


def test_a_step_missing_from_the_log_is_timed_from_the_mean_step(tmp_path):
    fake_run(tmp_path, {100: 1.45}, {}, steps=400, train_s=20.0)
    done = run_script("--out-dir", str(tmp_path), "--read-only", "--seeds", "0", "--thresholds", "1.47",
                      "--recipe", "mine=train.steps=400", "--recipes", "mine")
    run = json.loads((tmp_path / "ablation.json").read_text())["runs"][0]
    assert done.returncode == 0 and run["reached"] == {"1.47": {"step": 100, "s": 5.0}}


def test_bad_recipes_are_one_line_errors(tmp_path):
    unknown = run_script("--out-dir", str(tmp_path), "--recipes", "preset", "nonesuch")
    assert unknown.returncode == 2 and "unknown recipe(s) nonesuch; known: classic, new" in unknown.stderr
    malformed = run_script("--out-dir", str(tmp_path), "--recipe", "mine", "--recipes", "mine")
    assert malformed.returncode == 2 and "--recipe 'mine': expected NAME=KEY=VALUE" in malformed.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_welch_p_against_the_formula():
    """Welch's t-test as its formula gives it: t = (mean a - mean b) / sqrt(va/na + vb/nb),
    Welch-Satterthwaite degrees of freedom, two-sided p from Student's t (numerically
    integrated density here, not scipy's CDF)."""
    import importlib.util
    import math

    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    a, b = [1.4612, 1.4655, 1.4630], [1.4702, 1.4671, 1.4733]
    ma, mb = sum(a) / 3, sum(b) / 3
    va, vb = (sum((x - ma) ** 2 for x in a) / 2) / 3, (sum((x - mb) ** 2 for x in b) / 2) / 3
    t = abs(ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    density = lambda x: (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731 (unnormalised)
    steps = 200_000  # midpoint rule; the tail past 100 is below 1e-6 at these degrees of freedom
    area = lambda lo, hi: sum(density(lo + (i + 0.5) * (hi - lo) / steps) for i in range(steps)) * (hi - lo) / steps  # noqa: E731
    p = area(t, 100.0) / area(0.0, 100.0)
    assert abs(ablation.welch_p(a, b) - p) < 1e-3, (ablation.welch_p(a, b), p)
    assert ablation.welch_p([1.0, 1.0], [1.0, 1.0]) is None and ablation.welch_p([1.0], [2.0, 3.0]) is None
