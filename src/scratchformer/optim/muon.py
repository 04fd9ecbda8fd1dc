"""Hand-written Muon, and a hybrid optimizer: Muon on the hidden weight matrices, the
project's AdamW (optim/adamw.py) on every other leaf.

Muon, "MomentUm Orthogonalized by Newton-schulz" (Jordan et al. 2024), replaces each matrix's momentum by the nearest
semi-orthogonal matrix, approximated by a quintic Newton-Schulz iteration, so that a
step moves every singular direction by about the same amount. It is meant for the 2-D
weights of hidden layers only; embeddings, the output head, gains and biases stay on
AdamW, as in the reference and in Liu et al. 2025.

As AdamW in adamw.py: pure functions over small NamedTuple states, `muon_init(params)`
and `muon_update(grads, state, params, ...) -> (new_params, new_state)`, and the same
pair for the whole tree, `hybrid_init` / `hybrid_update`.

Weights are stored d_in x d_out (y = x @ w, layers.init_linear), the transpose of
torch's nn.Linear.weight (d_out x d_in) that the reference code indexes.

References:
  K. Jordan, Y. Jin, V. Boza, J. You, F. Cesista, L. Newhouse, J. Bernstein, "Muon: An
  optimizer for hidden layers in neural networks", 2024,
  https://kellerjordan.github.io/posts/muon/ (code: github.com/KellerJordan/Muon, and
  the modded-nanogpt speedrun, github.com/KellerJordan/modded-nanogpt).
  J. Liu et al., "Muon is Scalable for LLM Training" (Moonlight), arXiv:2502.16982, 2025.
  N. Amsel, D. Persson, C. Musco, R. M. Gower, "The Polar Express: Optimal Matrix Sign
  Methods and Their Application to the Muon Algorithm", arXiv:2505.16932, 2025.
  Z. Li et al., "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491,
  2025 (code: github.com/zichongli5/NorMuon).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .adamw import AdamWState, adamw_init, adamw_update

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # (a, b, c) of the reference's quintic iteration
# Polar Express (Amsel et al. 2025): a quintic of its own at each step, each the best one
# for where the singular values can be by then, so that they converge to 1 instead of
# spreading around it. The numbers are modded-nanogpt's (train_gpt.py, polar_express_coeffs,
# "computed for num_iters=5, safety_factor=2e-2, cushion=2"; nanochat's optim.py has the
# same), with its normalisation X = g / (||g||_F * (1 + 2e-2) + 1e-6): the margin keeps the
# spectral norm at most 1, the interval the quintics were fitted on, when rounding moves it.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# optim.muon_coeffs (config.MUON_COEFFS) -> (the (a, b, c) of each step, the last repeated
# past the end as in the Polar Express paper's code; safety factor; eps) of X <- g / (||g||_F *
# safety + eps). "jordan": the reference's one quintic and its normalisation.
NS_SCHEDULES = {"jordan": ((NS_COEFFS,), 1.0, 1e-7), "polar_express": (POLAR_EXPRESS_COEFFS, 1 + 2e-2, 1e-6)}
# Fused projections orthogonalised block by block: name of the linear -> number of
# equal column blocks (self-attention's q|k|v, cross-attention's k|v).
FUSED_BLOCKS = {"qkv": 3, "kv": 2}
# Newton-Schulz in float32 by default: on XLA's CPU backend a bfloat16 iteration is no
# faster and leaves the result much further from U V^T. With model.products=bfloat16 (the
# CPU presets on a CPU with bfloat16 instructions) the iteration keeps X in float32 and rounds only the
# products' inputs, for every matrix of a shape at once (`newton_schulz_stack`;
# BENCHMARKS.md, "Newton-Schulz: stacked by shape, not on the Gram matrix").
NS_DTYPE = jnp.float32


class MuonState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    mu: Any           # momentum, same tree as params
    # NorMuon's second moment: a d_out vector per matrix (`normuon`); None when NorMuon is
    # off, a tree without leaves, so that the state, its checkpoints and the program stay
    # those of plain Muon.
    nu: Any = None


class HybridState(NamedTuple):
    muon: MuonState   # over the Muon leaves (None, an empty subtree, at the others)
    adam: AdamWState  # over the other leaves (None at the Muon ones)


def muon_init(params, normuon: bool = False) -> MuonState:
    """normuon: with NorMuon's second moment, zeros of a d_in x d_out matrix's d_out columns."""
    nu = None
    if normuon:
        nu = jax.tree.map(lambda p: jnp.zeros(p.shape[1:], jnp.promote_types(p.dtype, jnp.float32)), params)
    return MuonState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params), nu)


def _schedule(coeffs: str, steps: int):
    """The (a, b, c) of each of `steps` steps of the coefficient set `coeffs`."""
    table = NS_SCHEDULES[coeffs][0]
    return [table[min(i, len(table) - 1)] for i in range(steps)]


def _normalised(x, norm, coeffs: str, eps):
    """x / (norm * safety + eps), eps None: the set's own. No product for a safety of 1
    (jordan), so that its program is the one from before the sets."""
    _, safety, own_eps = NS_SCHEDULES[coeffs]
    return x / ((norm if safety == 1 else norm * safety) + (own_eps if eps is None else eps))


def newton_schulz(g_MxN, steps: int = 5, dtype=NS_DTYPE, eps: float | None = None, coeffs: str = "jordan"):
    """Approximate U V^T for g = U S V^T (the reference's zeropower_via_newtonschulz5):

        X <- g / (||g||_F + eps)                      (singular values into [0, 1])
        X <- a X + (b A + c A^2) X,   A = X X^T       (`steps` times)

    with (a, b, c) = NS_COEFFS (coeffs="jordan"), chosen for a steep slope at zero rather
    than exact convergence: the singular values come out spread around 1 (about 0.7-1.2),
    not at 1. coeffs="polar_express": Polar Express's (a, b, c) of each step and its
    normalisation, ||g||_F * 1.02 + 1e-6 (NS_SCHEDULES; eps, if given, replaces the set's).
    A tall g is transposed first so that A is the smaller Gram matrix. The iteration
    runs in `dtype` (the reference uses bfloat16 on GPU); the result has g's dtype."""
    x = g_MxN.astype(jnp.promote_types(g_MxN.dtype, jnp.float32))
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = _normalised(x, jnp.linalg.norm(x), coeffs, eps).astype(dtype)
    for a, b, c in _schedule(coeffs, steps):
        a_MxM = x @ x.T
        x = a * x + (b * a_MxM + c * (a_MxM @ a_MxM)) @ x
    return (x.T if tall else x).astype(g_MxN.dtype)


def newton_schulz_stack(g_LxMxN, steps: int = 5, products=jnp.bfloat16, eps: float | None = None,
                        coeffs: str = "jordan"):
    """`newton_schulz` of each of L wide matrices (M <= N) at once, X in float32 and each
    product's inputs rounded to `products` with float32 sums (float64 inputs and
    products: float64 throughout, for the tests). One batched product per term instead
    of one per matrix: on XLA's CPU backend with AMX or AVX-512 BF16 that is faster than the float32
    iteration one matrix at a time, and batched float32 products are slower
    (BENCHMARKS.md, "Newton-Schulz: stacked by shape, not on the Gram matrix")."""
    x = g_LxMxN.astype(jnp.promote_types(g_LxMxN.dtype, jnp.float32))  # float64 stays (tests)

    def product(spec, a, b):
        return jnp.einsum(spec, a.astype(products), b.astype(products), preferred_element_type=x.dtype)

    x = _normalised(x, jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True)), coeffs, eps)
    for a, b, c in _schedule(coeffs, steps):
        a_LxMxM = product("lmn,lkn->lmk", x, x)
        x = a * x + product("lmk,lkn->lmn", b * a_LxMxM + c * product("lmk,lkj->lmj", a_LxMxM, a_LxMxM), x)
    return x


def orthogonalise_stacked(us, blocks, *, steps: int = 5, products=jnp.bfloat16, rms_scale=None,
                          eps: float | None = None, coeffs: str = "jordan", scale: bool = True):
    """`orthogonalise` of every matrix in the list `us` (with its number of fused
    `blocks`), the blocks of one shape (tall ones transposed) stacked into one
    `newton_schulz_stack`. Returns the list of scaled updates (scale=False: unscaled),
    shaped as `us`."""
    parts = []  # (matrix index, transposed?, block as NS reads it: wide)
    for i, (u, n) in enumerate(zip(us, blocks)):
        for p in jnp.split(u, n, axis=1):
            tall = p.shape[0] > p.shape[1]
            parts.append((i, tall, p.T if tall else p))
    by_shape = {}
    for j, (_, _, p) in enumerate(parts):
        by_shape.setdefault(p.shape, []).append(j)
    done = {}
    for at in by_shape.values():
        stack = jnp.stack([parts[j][2] for j in at])
        if len(at) == 1:  # two or more are copied into a new array; one is a reshape of its own
            # The barrier keeps a lone tall matrix's transpose out of the first product: XLA's
            # CPU backend folds it in, then has no bfloat16 product of that form ("Unsupported
            # element type for DotThunk").
            stack = jax.lax.optimization_barrier(stack)
        done.update(zip(at, newton_schulz_stack(stack, steps, products, eps, coeffs)))
    mine = [[] for _ in us]
    for j, (i, tall, _) in enumerate(parts):
        o = done[j].T if tall else done[j]
        o = o.astype(us[i].dtype)
        mine[i].append(shape_factor(*o.shape, rms_scale) * o if scale else o)
    return [jnp.concatenate(m, axis=1) for m in mine]


def shape_factor(d_in: int, d_out: int, rms_scale: float | None = None) -> float:
    """Multiplier of the orthogonalised update of a d_in x d_out matrix.

    rms_scale=None (default), the reference's max(1, d_out/d_in)**0.5 (modded-nanogpt and
    KellerJordan/Muon write max(1, p.size(-2)/p.size(-1))**0.5 on torch's d_out x d_in
    weight; optax.contrib.muon does the same): an update of unit spectral norm, made
    larger for a matrix that widens. A float s gives Moonlight's s * max(d_in, d_out)**0.5
    (Liu et al. 2025, sec. 2.2; s = 0.2 matches AdamW's update RMS, so AdamW's learning
    rate and weight decay carry over)."""
    if rms_scale is None:
        return max(1.0, d_out / d_in) ** 0.5
    return rms_scale * max(d_in, d_out) ** 0.5


def _blocks(path) -> int:
    """Number of fused column blocks of the leaf at `path` (1: not fused)."""
    names = [getattr(k, "key", None) for k in path]
    return FUSED_BLOCKS.get(names[-2], 1) if len(names) >= 2 else 1


def orthogonalise(u_MxN, *, blocks: int = 1, steps: int = 5, dtype=NS_DTYPE, rms_scale=None,
                  eps: float | None = None, coeffs: str = "jordan", scale: bool = True):
    """Scaled Newton-Schulz of each of `blocks` equal column blocks of u, side by side.
    A fused q|k|v weight (D x 3D) is three D x D blocks, orthogonalised separately as the
    reference does for its separate projections (a whole-matrix U V^T would couple q, k
    and v, and its shape factor would be that of a D x 3D matrix). scale=False: without
    the shape factor (NorMuon's statistics are of the unscaled update)."""
    parts = jnp.split(u_MxN, blocks, axis=1)
    factors = [shape_factor(*p.shape, rms_scale) if scale else 1.0 for p in parts]
    return jnp.concatenate([f * newton_schulz(p, steps, dtype, eps, coeffs) for f, p in zip(factors, parts)],
                           axis=1)


def normuon(o_MxN, nu_N, beta2: float, blocks: int = 1):
    """NorMuon's step (Li et al. 2025) on an orthogonalised update o (d_in x d_out) and
    the second moment nu of its d_out neurons, as modded-nanogpt writes it:

        nu <- beta2 nu + (1-beta2) mean_i o_ij^2          (neuron j: a column here)
        o' = o / sqrt(max(nu, 1e-10))                      (each column by its own RMS)
        o' <- o' ||o||_F / max(||o'||_F, 1e-10)            (o's size: the rate keeps its meaning)

    The paper's neuron is an output row of torch's d_out x d_in weight, a column of this
    project's d_in x d_out one (modded-nanogpt keeps the statistic along the longer side
    instead, which its authors call incorrect for some matrices and harmless). Each of
    the `blocks` fused column blocks is rescaled to its own norm, as if it were a matrix
    of its own; a column lies in one block, so nu is the same as the blocks' side by side.
    Computed in float32 at least. Returns (o', nu)."""
    x = o_MxN.astype(jnp.promote_types(o_MxN.dtype, jnp.float32))
    mean_sq = jnp.mean(jnp.square(x), axis=0)
    nu = beta2 * nu_N + (1 - beta2) * mean_sq
    step = jax.lax.rsqrt(jnp.maximum(nu, 1e-10))
    # The norms from the column means, as modded-nanogpt fuses them: ||o||^2 = M sum_j mean_sq_j.
    ms, st = mean_sq.reshape(blocks, -1), step.reshape(blocks, -1)
    norm = jnp.sqrt(x.shape[0] * jnp.sum(ms, axis=1, keepdims=True))
    new_norm = jnp.sqrt(x.shape[0] * jnp.sum(ms * jnp.square(st), axis=1, keepdims=True))
    return (x * (st * norm / jnp.maximum(new_norm, 1e-10)).reshape(-1)).astype(o_MxN.dtype), nu


def muon_update(grads, state: MuonState, params, *, lr, momentum: float = 0.95, nesterov: bool = True,
                ns_steps: int = 5, weight_decay: float = 0.0, mask=None, ns_dtype=NS_DTYPE,
                rms_scale: float | None = None, ns_eps: float | None = None, products=None,
                ns_coeffs: str = "jordan", normuon_beta2: float = 0.0):
    """One Muon step on a tree of 2-D matrices (Jordan et al. 2024):

        m <- beta m + (1-beta) g                          (beta = momentum)
        u = beta m + (1-beta) g   (nesterov)   or   u = m
        p <- p - lr * (s * NS(u) + weight_decay * p)      [decay only where mask]

    NS is `newton_schulz` with the coefficient set ns_coeffs (and its normalisation's eps,
    or ns_eps), run per block on a fused projection (a leaf under "qkv" or "kv", see
    `orthogonalise`); s is `shape_factor` (rms_scale). normuon_beta2 > 0: NorMuon,
    `normuon` between NS and s, its second moment in state.nu (muon_init(params,
    normuon=True)). The defaults are the reference's. products (a dtype): NS by
    `orthogonalise_stacked` instead, its products' inputs rounded to it (ns_dtype
    unused). The momentum is its EMA form without bias correction: NS ignores a scalar
    factor, so torch-style m <- beta m + g gives the same step (optax.contrib.muon's
    Nesterov, which bias-corrects m and g by different factors, does not, from step 2).
    As in optim.adamw_update, the decay is decoupled from the gradient and multiplied by
    the learning rate (the reference's p *= 1 - lr * wd).
    """
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: momentum * m + (1 - momentum) * g, state.mu, grads)
    if mask is None:
        mask = jax.tree.map(lambda _: True, params)

    us = jax.tree.map(lambda m, g: momentum * m + (1 - momentum) * g if nesterov else m, mu, grads)

    def step(p, o, decay):
        if decay and weight_decay:
            o = o + weight_decay * p
        return p - lr * o

    paths_us, treedef = jax.tree_util.tree_flatten_with_path(us)
    flat, blocks = [u for _, u in paths_us], [_blocks(path) for path, _ in paths_us]
    ns = dict(steps=ns_steps, rms_scale=rms_scale, eps=ns_eps, coeffs=ns_coeffs, scale=not normuon_beta2)
    if products is None:
        outs = [orthogonalise(u, blocks=n, dtype=ns_dtype, **ns) for u, n in zip(flat, blocks)]
    else:
        outs = orthogonalise_stacked(flat, blocks, products=products, **ns)
    nu = state.nu
    if normuon_beta2:
        if nu is None:
            raise ValueError("NorMuon's second moment is not in the state: muon_init(params, normuon=True)")
        outs, nus = _normuon_scaled(outs, jax.tree.leaves(nu), blocks, normuon_beta2, rms_scale)
        nu = jax.tree_util.tree_unflatten(treedef, nus)
    updates = jax.tree_util.tree_unflatten(treedef, outs)
    return jax.tree.map(step, params, updates, mask), MuonState(count, mu, nu)


def _normuon_scaled(outs, nus, blocks, beta2: float, rms_scale):
    """`normuon` of each unscaled update, then its blocks' shape factor (equal blocks, one
    factor). Returns (updates, second moments), lists as given."""
    pairs = [normuon(o, v, beta2, n) for o, v, n in zip(outs, nus, blocks)]
    scaled = [shape_factor(o.shape[0], o.shape[1] // n, rms_scale) * o for (o, _), n in zip(pairs, blocks)]
    return scaled, [v for _, v in pairs]


def muon_mask(params):
    """True for the leaves Muon should train: 2-D weight matrices inside "blocks" (the
    LM's, the encoder's and the decoder's). Embedding tables, the output head, LayerNorm
    gains and biases, and linear biases are False (AdamW's)."""
    def rule(path, leaf):
        return leaf.ndim == 2 and any(getattr(k, "key", None) == "blocks" for k in path)
    return jax.tree_util.tree_map_with_path(rule, params)


def _part(tree, mask, keep: bool):
    """`tree` with None in place of the leaves whose mask is not `keep`."""
    return jax.tree.map(lambda x, m: x if m == keep else None, tree, mask)


def _merge(mask, if_true, if_false):
    return jax.tree.map(lambda m, a, b: a if m else b, mask, if_true, if_false)


def hybrid_init(params, muon_mask, normuon: bool = False) -> HybridState:
    return HybridState(muon_init(_part(params, muon_mask, True), normuon), adamw_init(_part(params, muon_mask, False)))


def hybrid_update(grads, state: HybridState, params, *, muon_lr, adam_lr, muon_mask, decay_mask=None,
                  b1: float, b2: float, eps: float, weight_decay: float = 0.0,
                  muon_weight_decay: float | None = None, **muon_kw):
    """One step of Muon on the leaves where muon_mask is True and of optim.adamw_update
    (b1, b2, eps) on the others, each with its own learning rate. Weight decay is
    decoupled and multiplied by the leaf's learning rate, where decay_mask is True:
    weight_decay on the AdamW leaves, muon_weight_decay (None: weight_decay) on Muon's.
    muon_kw go to muon_update (momentum, nesterov, ns_steps, ns_dtype, rms_scale, ns_eps,
    products, ns_coeffs, normuon_beta2: hybrid_init(..., normuon=True) for the last).
    The masks are trees of Python bools (static under jit): `muon_mask(params)` and
    optim.decay_mask(params)."""
    if decay_mask is None:
        decay_mask = jax.tree.map(lambda _: True, params)
    parts = [(_part(t, muon_mask, True), _part(t, muon_mask, False)) for t in (grads, params, decay_mask)]
    (g_m, g_a), (p_m, p_a), (d_m, d_a) = parts
    if muon_weight_decay is None:
        muon_weight_decay = weight_decay
    new_m, muon_state = muon_update(g_m, state.muon, p_m, lr=muon_lr, weight_decay=muon_weight_decay, mask=d_m,
                                    **muon_kw)
    new_a, adam_state = adamw_update(g_a, state.adam, p_a, lr=adam_lr, b1=b1, b2=b2, eps=eps,
                                     weight_decay=weight_decay, mask=d_a)
    return _merge(muon_mask, new_m, new_a), HybridState(muon_state, adam_state)
