"""One layer's causal self-attention, forward and backward, in each available form: whether
`jax.nn.dot_product_attention` (XLA's, or cuDNN's fused kernel on an NVIDIA GPU) would pay
over the model's own attention before the model is given the option.

    python benchmarks/attention_bench.py                    # the gpu preset's shape, bfloat16
    python benchmarks/attention_bench.py --batch 32 --t 128 --heads 4 --head-dim 48 --dtype float32

Forms: `ours` (attention.attend with the causal mask: what the `gpu` preset runs, model.attn_block=0),
`blocks:N` (attention.attend_causal in query blocks of N: what the CPU presets run), `xla` and
`cudnn` (jax.nn.dot_product_attention with is_causal=True and that implementation; a form the
device cannot run prints why and is skipped). Each is timed as one jitted call of the output and
the gradients of sum(y * g) with respect to q, k and v: median and best ms of --reps calls after
3 warm-up calls. The output and the gradients are compared with `ours` computed in float32
(the largest absolute difference), so a fast form that computes something else shows.
"""
import argparse
import statistics

import jax
import jax.numpy as jnp
from matmul_rate import call_seconds  # this folder's scripts: run as a script

from scratchformer.attention import attend, attend_causal, causal_mask


def form_fn(form: str):
    """y_BxTxD = f(q, k, v), each BxTxHxK."""
    if form == "ours":
        return lambda q, k, v: attend(q, k, v, causal_mask(q.shape[1]))[0]
    if form.startswith("blocks:") and form[7:].isdigit() and int(form[7:]) > 0:
        block = int(form[7:])
        return lambda q, k, v: attend_causal(q, k, v, block=block)
    if form in ("xla", "cudnn"):
        def f(q, k, v):
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=form)
            return y.reshape(*y.shape[:2], -1)
        return f
    raise ValueError(f"--forms: unknown form {form!r}; the forms are ours, blocks:N, xla and cudnn")


def with_grads(f):
    """(y, (dq, dk, dv)) of f at q, k, v for the output cotangent g, jitted."""
    def run(q, k, v, g):
        y, vjp = jax.vjp(f, q, k, v)
        return y, vjp(g.astype(y.dtype))
    return jax.jit(run)


def max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y))) for x, y in zip(jax.tree.leaves(a),
                                                                                     jax.tree.leaves(b)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--t", type=int, default=256, help="sequence length")
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--forms", nargs="+", default=["ours", "blocks:128", "xla", "cudnn"])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    try:  # a bad form fails before any work
        fns = {form: form_fn(form) for form in args.forms}
    except ValueError as e:
        ap.error(str(e))
    shape = (args.batch, args.t, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, g32 = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)
    g32 = g32.reshape(*shape[:2], -1)
    qkv = tuple(a.astype(args.dtype) for a in (q, k, v))
    reference = with_grads(fns.get("ours") or form_fn("ours"))(q, k, v, g32)
    print(f"jax {jax.__version__} {jax.devices()[0].device_kind}; B={args.batch} T={args.t} "
          f"H={args.heads} K={args.head_dim} {args.dtype}; forward and backward of one layer")
    for form, f in fns.items():
        fn = with_grads(f)
        try:
            ts = call_seconds(fn, (*qkv, g32), args.reps)
        except Exception as e:  # JAX's forms may have no kernel on this device: say so, time the others
            if form not in ("xla", "cudnn"):
                raise
            print(f"{form:>12}: not available here ({str(e).strip().splitlines()[0][:160]})")
            continue
        diff = max_diff(fn(*qkv, g32), reference)
        print(f"{form:>12}: median {statistics.median(ts) * 1e3:.3f} ms, best {ts[0] * 1e3:.3f} ms; "
              f"largest difference from ours in float32 {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
