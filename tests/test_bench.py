"""`scratchformer bench --json` prints the object issue #5 specifies, with figures that are
consistent with each other. No timing is asserted (machines are shared and noisy): the
test runs the quick variant and checks structure, arithmetic and the FLOP formula."""

import json

from scratchformer import machine
from scratchformer.cli import main


def test_bench_json_schema_and_arithmetic(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    peak = r["matmul_peak_gflops"]
    assert r["machine"] == machine.as_dict()  # the figures say which machine kind they are from
    assert peak > 0 and [t["name"] for t in r["train"]] == ["nano-cpu", "gpt-small"]
    tokens = {"nano-cpu": 12 * 64, "gpt-small": 8 * 256}
    # 6 * N * tokens + 12 * L * D * T * tokens, N counted by hand: per layer QKV and output
    # projections (4 D^2 + 4 D), MLP (2 D F + F + D), two LayerNorms (4 D); the tied token
    # table V x D and the final LayerNorm; the position table left out.
    shape = {"nano-cpu": (4, 128, 512, 64), "gpt-small": (6, 384, 1536, 256)}
    for t in r["train"]:
        layers, d, f, block = shape[t["name"]]
        n = layers * (4 * d * d + 2 * d * f + 9 * d + f) + 65 * d + 2 * d
        n_tok = tokens[t["name"]]
        assert t["model_flops_per_step"] == 6 * n * n_tok + 12 * layers * d * block * n_tok
        assert abs(t["tokens_per_s"] - n_tok / (t["ms_per_step"] / 1e3)) <= 0.1 + 1e-3 * t["tokens_per_s"]
        assert abs(t["gflops"] - t["model_flops_per_step"] / t["ms_per_step"] / 1e6) <= 0.01 + 1e-3 * t["gflops"]
        assert abs(t["peak_fraction"] - t["gflops"] / peak) <= 1e-3
        assert t["compile_s"] > 0 and t["first_call_s"] >= t["compile_s"]
    s = r["sample"]
    assert s["tokens"] == 200 and s["cached_tokens_per_s"] > 0 and s["uncached_tokens_per_s"] > 0
    assert abs(s["speedup"] - s["cached_tokens_per_s"] / s["uncached_tokens_per_s"]) <= 0.01 + 1e-3 * s["speedup"]
