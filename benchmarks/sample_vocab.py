"""Cached sampling speed of the cpu-quick model shape (3x128, T=64) with random weights, by
vocabulary size: where the per-token cost of the sampling rule (noise, filtering, the
pick) shows, next to a forward step that is small. Prints one JSON object.

    PYTHONPATH=src python benchmarks/sample_vocab.py [--tokens 1000] [--runs 3]

Point PYTHONPATH at another checkout's src/ to time that version the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

import jax
import numpy as np

from scratchformer.decode import generate
from scratchformer.models import init_lm
from scratchformer.runconfig import make_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vocab", type=int, nargs="+", default=[65, 5000, 50257])
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.8, 0.0])
    a = ap.parse_args()
    base = make_config("lm", "cpu-quick").model
    rows = []
    for v in a.vocab:
        cfg = replace(base, vocab_size=v)
        params = init_lm(jax.random.PRNGKey(0), cfg)
        for t in a.temperature:
            run = lambda: generate(params, cfg, np.zeros((1,), np.int32), a.tokens, temperature=t)
            run()  # compile
            times = []
            for _ in range(a.runs):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            rows.append({"vocab": v, "temperature": t, "tokens": a.tokens,
                         "tokens_per_s": [round(a.tokens / s, 1) for s in times],
                         "median_tokens_per_s": round(a.tokens / statistics.median(times), 1)})
    print(json.dumps({"rows": rows, "jax": jax.__version__, "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
