"""Write the optimized HLO of the programs that matter for speed, with source metadata
stripped, so that two versions of the code can be compared file by file (`diff -r`):
a change meant to move code, not to change what runs, must leave them byte-identical.

The programs: `bench`'s two training calls (nano-cpu, gpt-small), the training calls of
the `cpu-quick` and `cpu` presets (vocabulary 65, as Tiny Shakespeare's), and the cached
and uncached samplers at gpt-small's shape.

  python benchmarks/hlo_dump.py OUT_DIR
"""

import re
import sys
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp

from scratchformer import bench
from scratchformer.decode import _generate
from scratchformer.runconfig import make_config

METADATA = re.compile(r",? ?metadata=\{[^}]*\}|, ?stack_frame_id=\d+")
TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")  # numbered rows follow each


def stripped(compiled) -> str:
    """The optimized HLO without source locations (which move whenever a line does)."""
    lines, in_table = [], False
    for line in METADATA.sub("", compiled.as_text()).splitlines():
        if line in TABLES:
            in_table = True
        elif in_table and re.match(r"^\d+ ", line):
            continue
        else:
            in_table = False
            if line.strip():
                lines.append(line)
    return "\n".join(line for line in lines if line not in TABLES) + "\n"


def training(cfg, k: int):
    call, state, data, _ = bench.random_token_training(cfg, k)
    return call.lower(state, data).compile()


def programs():
    over = {"train.steps": 10_000, "model.dropout": 0.0, "model.products": "float32"}
    for name, shape in bench.SHAPES.items():
        yield f"train-{name}", training(make_config("lm", bench.BENCH_PRESET, {**shape, **over}), 2)
    for preset in ("cpu-quick", "cpu"):
        cfg = make_config("lm", preset, {"model.products": "float32"})
        yield f"train-{preset}", training(cfg, cfg.train.steps_per_call)
    cfg, params = bench.sampling_model()
    tokens, key = jnp.zeros((33,), jnp.int32), jax.random.PRNGKey(0)
    for cache in (True, False):
        yield f"sample-{'cached' if cache else 'uncached'}", _generate.lower(
            params, tokens, key, cfg=replace(cfg), n_prompt=1, n_new=32, temperature=0.8, top_k=0, top_p=1.0,
            use_cache=cache).compile()


def main(out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, compiled in programs():
        (Path(out) / f"{name}.hlo").write_text(stripped(compiled))
        print(name)


if __name__ == "__main__":
    main(sys.argv[1])
