"""Token files streamed from disk against batches drawn on the device, and prepare's speed.

    python benchmarks/stream_bench.py [--gb 2] [--steps 100] [--pairs 2] [--text FILE]

1. Makes a token-file folder of about --gb GB (Tiny Shakespeare's character ids repeated,
   uint16), in a temporary folder deleted at the end.
2. Trains the `cpu` preset's model on it, streamed (data.stream=on), and on Tiny Shakespeare's
   own token files with its batches drawn on the device (data.stream=off), in alternating
   runs; prints each run's training seconds per step and peak resident memory (the
   process's maximum RSS, from wait4), the medians, and the streamed/on-device ratio.
3. `scratchformer prepare` throughput in MB/s of text, character and BPE tokenizers.
Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "scratchformer", *map(str, args)]


def run(cmd) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.read()
    err = proc.stderr.read()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def big_token_files(small: Path, big: Path, gb: float) -> None:
    """`small`'s folder with its train.bin repeated to ~gb GB (meta.json to match)."""
    shutil.copytree(small, big)
    part = np.fromfile(small / "train.bin", np.uint16)
    reps = max(1, int(gb * 1e9 / part.nbytes))
    with open(big / "train.bin", "wb") as f:
        for _ in range(reps):
            part.tofile(f)
    meta = json.loads((small / "meta.json").read_text())
    meta["train"].update(tokens=len(part) * reps, file_bytes=part.nbytes * reps, sha256="repeated")
    (big / "meta.json").write_text(json.dumps(meta))


def train_step_s(data: Path, out: Path, steps: int, stream: str) -> tuple[float, int]:
    args = ["train", "lm", "--data", data, "--out", out, "--steps", steps, "--no-progress",
            "--set", f"data.stream={stream}", "--set", f"train.eval_every={steps}",
            "--set", f"train.checkpoint_every={steps}", "--set", "data.eval_windows=8",
            "--set", f"optim.warmup_steps={steps // 4}"]
    _, rss = run(cli(*args))
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out)
    return summary["train_time_s"] / steps, rss


def prepare_mb_s(text: Path, tmp: Path, copies: int, *tok_args) -> float:
    src = tmp / "corpus.txt"
    src.write_text(text.read_text() * copies)
    out = tmp / "prepared"
    seconds, _ = run(cli("prepare", src, "--out", out, *tok_args))
    shutil.rmtree(out)
    return src.stat().st_size / 1e6 / seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gb", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--text", type=Path, default=TEXT)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        tmp = Path(d)
        subprocess.run(cli("prepare", a.text, "--out", tmp / "small"), check=True, capture_output=True)
        big_token_files(tmp / "small", tmp / "big", a.gb)
        print(f"token file: {(tmp / 'big' / 'train.bin').stat().st_size / 1e9:.2f} GB", file=sys.stderr)
        rows = {"streamed": [], "on_device": []}
        for i in range(a.pairs):
            rows["streamed"].append(train_step_s(tmp / "big", tmp / "run", a.steps, "on"))
            rows["on_device"].append(train_step_s(tmp / "small", tmp / "run", a.steps, "off"))
            print(f"pair {i + 1}: streamed {rows['streamed'][-1][0] * 1e3:.1f} ms/step "
                  f"({rows['streamed'][-1][1] / 1e9:.2f} GB RSS), on device {rows['on_device'][-1][0] * 1e3:.1f} "
                  f"ms/step ({rows['on_device'][-1][1] / 1e9:.2f} GB RSS)", file=sys.stderr)
        shutil.rmtree(tmp / "big")
        med = {k: statistics.median(s for s, _ in v) for k, v in rows.items()}
        result = {"token_file_gb": a.gb, "steps": a.steps,
                  "ms_per_step": {k: [round(s * 1e3, 2) for s, _ in v] for k, v in rows.items()},
                  "peak_rss_gb": {k: [round(r / 1e9, 3) for _, r in v] for k, v in rows.items()},
                  "median_ms_per_step": {k: round(v * 1e3, 2) for k, v in med.items()},
                  "streamed_over_on_device": round(med["streamed"] / med["on_device"], 4),
                  "prepare_mb_s": {"char": round(prepare_mb_s(a.text, tmp, 20), 1),
                                   "bpe_1024": round(prepare_mb_s(a.text, tmp, 20, "--tokenizer", "bpe",
                                                                  "--vocab-size", "1024"), 1)}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
