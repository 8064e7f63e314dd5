#!/usr/bin/env python3
"""CPU peer of `ela train`: the same LM and training step in JAX (jit, CPU, f32), one jitted
function per optimizer step (forward, backward by `jax.value_and_grad`, global-norm clipping,
AdamW, warm-up + cosine learning rate), timed on random byte batches.

What matches `ela train --link residual --lobe off --experts 0` (models/src/lm, nn/src,
models/src/train/run.rs, nn/src/optim):
- architecture: byte embedding (vocab 256, normal std 0.02), tied output head (logits = h E^T),
  `layers` pre-norm blocks h = x + Attn(RMSNorm(x)), x' = h + SwiGLU(RMSNorm(h)), final RMSNorm
  (eps 1e-6, weight initialised to 1); attention: q, k, v, o maps d -> d without bias (normal std
  1/sqrt(d)), `heads` heads of d/heads, causal Hadamard-Exp ELA (no 1/sqrt(d) scale, no RoPE);
  SwiGLU w_down(silu(w_gate x) * w_up x) without bias (normal std 0.02); mean cross-entropy over
  all batch x seq positions. Parameter count equals the one `ela train` prints ("model: N
  parameters") for the same flags.
- step: global gradient norm over all parameters, clipped to --clip (1.0) with scale
  clip / (norm + 1e-6) when norm > clip (nn/src/optim/clip.rs); AdamW beta 0.9/0.95, eps 1e-8,
  bias-corrected, decoupled decay p <- p (1 - lr wd) - lr/bc1 m / (sqrt(v)/sqrt(bc2) + eps)
  (core/src/cpu/optim.rs), weight decay 0.1 on rank >= 2 parameters only (run.rs:
  `exclude_from_weight_decay(|_, v| v.rank() < 2)`: the RMSNorm weights are not decayed); lr
  schedule WarmupCosine (nn/src/optim/schedule.rs) over warm-up-steps + steps updates, computed
  inside the jitted step from the step counter.
- ELA: the chunked form (C = --chunk, 64) is `ela_chunked` of benches/peers/ela_jax.py (imported,
  not copied): phi = exp(q - max_d q), psi = exp(k - max k) over (time, feature) per batch and
  head; both shifts cancel in num/den, so it is the same function as ELA-rs's (which keeps
  per-feature log-scales instead, docs/ela.md "Numerics"). The quadratic form (--form quadratic)
  uses the same shifts on the masked T x T product.
  Form used by default: CHUNKED (C = 64), the form `ela train` runs on the CPU, so both sides do
  the same attention FLOPs. Why: under jit at the benchmark size (d128 L4 H4 T128 B16) the two
  forms time the same within noise (paired runs of 20 steps on the 2 cores, 2026-12-04: chunked
  11,109 / 11,249 tokens/s against quadratic 10,988 / 10,956): at T = 128 attention is a small
  part of the step next to the projections, the FFN and the 256-way head, and the 2 chunks of 64
  save about half the T x T products that the quadratic form masks away. --form quadratic runs
  the other one.

What does not match:
- data: random bytes (numpy, fixed --seed), not the embedded corpus; tokens/s does not depend on
  the text, the loss does (it stays near ln 256 = 5.545 on random bytes);
- initial values: same distributions, different random streams;
- timing: `ela train`'s steady-state figure (cuda/benches/lm_steady.py over its metrics.jsonl)
  includes its per-step batch sampling, loss read-back, metrics line and progress bar; here all
  batches are made before timing and the loss stays on the device until the timed loop ends (one
  `block_until_ready` at the end), JAX's best case;
- autodiff differentiates ela_jax's shifts too (the max over q and k is not under
  stop_gradient; its gradient is zero up to rounding because the shift cancels): a little extra
  work for JAX that ELA-rs's fused ELA backward does not do;
- the non-finite-gradient check of `ela train` (stop or skip) is not done (the clip is skipped
  when the norm is not finite, as in clip.rs, but nothing stops);
- only --link residual, --lobe off, --experts 0, --attention ela, --kernel hadamard-exp and f32
  are supported; other values are refused.

Self-check before timing (so a broken peer cannot look fast): on a tiny config (d 16, 2 layers,
2 heads, ffn 32, seq 2 chunks, batch 2) the losses and gradient norms of two steps of the jitted
f32 train step equal two un-jitted float64 steps of the same code to 1e-5 relative, and the
chunked and quadratic ELA forms agree in float64 to 1e-10.

Usage (the sizes of `ela train`'s defaults; see benches/cpu_train_step.sh):
    python3 benches/peers/lm_jax.py --dim 128 --layers 4 --heads 4 --ffn-hidden 256 --seq 128 \
        --batch 16 --steps 150 --warmup-steps 5 --link residual --lobe off --experts 0
Prints JAX version, CPU count, XLA_FLAGS, parameter count, the self-check, then one line
"jax: N steps of BxT tokens in S s: X tokens/s (.. ms/step), loss first .. last ..".
"""
import argparse
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ela_jax import ela_chunked  # noqa: E402

# The chunked form by default: as fast as the quadratic one under jit at the benchmark size and
# the form `ela train` runs (see the docstring).
QUADRATIC_DEFAULT = False
FORM_NOTE = "chunked (C = --chunk)"

EPS_NORM = 1e-6


def ela_quadratic(q, k, v):
    """Causal Hadamard-Exp ELA as one masked T x T product per head (same shifts as the chunked
    form): y_i = sum_{j<=i} (phi_i . psi_j) v_j / sum_{j<=i} phi_i . psi_j."""
    t = q.shape[-2]
    phi = jnp.exp(q - jnp.max(q, axis=-1, keepdims=True))
    psi = jnp.exp(k - jnp.max(k, axis=(-2, -1), keepdims=True))
    a = jnp.einsum("bhtd,bhsd->bhts", phi, psi) * jnp.tril(jnp.ones((t, t), q.dtype))
    return jnp.einsum("bhts,bhsv->bhtv", a, v) / a.sum(-1, keepdims=True)


def rms_norm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + EPS_NORM) * w


def linear(x, w):
    # w is [out, in] as in ela's Linear; XLA folds the transpose into the dot.
    return x @ w.T


def init_params(cfg, seed):
    """Parameters as ela's ParamStore names and shapes them (random stream differs)."""
    rng = np.random.default_rng(seed)
    d, f = cfg.dim, cfg.ffn_hidden
    normal = lambda shape, std: (rng.standard_normal(shape) * std).astype(np.float32)  # noqa: E731
    layers = []
    for _ in range(cfg.layers):
        layers.append({
            "norm1": np.ones(d, np.float32),
            "attn": {n: normal((d, d), math.sqrt(1.0 / d)) for n in ("q", "k", "v", "o")},
            "norm2": np.ones(d, np.float32),
            "ffn": {"w_gate": normal((f, d), 0.02), "w_up": normal((f, d), 0.02), "w_down": normal((d, f), 0.02)},
        })
    return {"embed": normal((256, d), 0.02), "layers": layers, "final_norm": np.ones(d, np.float32)}


def make_loss(cfg, quadratic):
    heads, chunk = cfg.heads, cfg.chunk

    def attn(p, x):
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(linear(x, p[n])) for n in ("q", "k", "v"))
        y = ela_quadratic(q, k, v) if quadratic else ela_chunked(q, k, v, chunk)
        return linear(y.transpose(0, 2, 1, 3).reshape(b, t, d), p["o"])

    def loss(params, tokens):
        ids, tgt = tokens[:, :-1], tokens[:, 1:]
        h = params["embed"][ids]
        for lp in params["layers"]:
            h = h + attn(lp["attn"], rms_norm(h, lp["norm1"]))
            g = rms_norm(h, lp["norm2"])
            f = lp["ffn"]
            h = h + linear(jax.nn.silu(linear(g, f["w_gate"])) * linear(g, f["w_up"]), f["w_down"])
        logits = rms_norm(h, params["final_norm"]) @ params["embed"].T
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        return jnp.mean(logz - picked)

    return loss


def make_train_step(cfg, total_steps, quadratic):
    loss_fn = make_loss(cfg, quadratic)
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, cfg.weight_decay
    base, floor, warm = cfg.lr, cfg.min_lr, cfg.warmup

    def lr_at(step, dtype):
        # WarmupCosine::lr_at with a traced 0-based step (warm-up never divides by zero), in the
        # parameters' dtype (f32, or f64 in the self-check's reference).
        s = step.astype(dtype)
        warm_lr = base * (s + 1) / max(warm, 1)
        progress = jnp.clip((s - warm) / max(total_steps - warm, 1), 0.0, 1.0)
        cos_lr = floor + (base - floor) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(s < warm, warm_lr, jnp.where(s >= total_steps, floor, cos_lr))

    def train_step(state, tokens):
        params, m, v, step = state
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        leaves = jax.tree_util.tree_leaves(grads)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in leaves))
        scale = jnp.where(jnp.isfinite(norm) & (norm > cfg.clip), cfg.clip / (norm + 1e-6), 1.0)
        lr = lr_at(step, norm.dtype)
        t = step + 1
        bc1 = 1 - b1 ** t.astype(norm.dtype)
        bc2 = 1 - b2 ** t.astype(norm.dtype)

        def update(p, g, mi, vi):
            g = g * scale
            mi = b1 * mi + (1 - b1) * g
            vi = b2 * vi + (1 - b2) * g * g
            decay = 1 - lr * wd if p.ndim >= 2 else 1.0
            return p * decay - (lr / bc1) * (mi / (jnp.sqrt(vi) / jnp.sqrt(bc2) + eps)), mi, vi

        out = jax.tree_util.tree_map(update, params, grads, m, v)
        is_triple = lambda x: isinstance(x, tuple)  # noqa: E731
        new_p = jax.tree_util.tree_map(lambda o: o[0], out, is_leaf=is_triple)
        new_m = jax.tree_util.tree_map(lambda o: o[1], out, is_leaf=is_triple)
        new_v = jax.tree_util.tree_map(lambda o: o[2], out, is_leaf=is_triple)
        return (new_p, new_m, new_v, t), loss, norm

    return train_step


def init_state(params, dtype):
    p = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p)
    return p, zeros, jax.tree_util.tree_map(jnp.zeros_like, p), jnp.zeros((), jnp.int32)


def random_batches(n, batch, seq, seed):
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, 256, size=(n, batch, seq + 1), dtype=np.int32)


def self_check(cfg, quadratic):
    """Jitted f32 train step against the same code un-jitted in float64 (two steps)."""
    tiny = argparse.Namespace(**{**vars(cfg), "dim": 16, "layers": 2, "heads": 2, "ffn_hidden": 32,
                                 "seq": 2 * cfg.chunk, "batch": 2})
    params = init_params(tiny, cfg.seed)
    data = random_batches(2, tiny.batch, tiny.seq, cfg.seed)
    step = make_train_step(tiny, 10, quadratic)
    jitted = jax.jit(step)
    s32 = init_state(params, jnp.float32)
    got = []
    for i in range(2):
        s32, loss, norm = jitted(s32, jnp.asarray(data[i]))
        got.append((float(loss), float(norm)))
    with jax.enable_x64(True), jax.disable_jit():
        s64 = init_state(params, jnp.float64)
        want = []
        for i in range(2):
            s64, loss, norm = step(s64, jnp.asarray(data[i]))
            want.append((float(loss), float(norm)))
        rng = np.random.default_rng(cfg.seed)
        q, k, v = (jnp.asarray(rng.standard_normal((2, 2, 2 * cfg.chunk, 8))) for _ in range(3))
        form_err = float(jnp.max(jnp.abs(ela_chunked(q, k, v, cfg.chunk) - ela_quadratic(q, k, v))))
    rel = max(abs(g - w) / abs(w) for gw, ww in zip(got, want) for g, w in zip(gw, ww))
    ok = rel <= 1e-5 and form_err <= 1e-10 and all(math.isfinite(x) for gw in got for x in gw)
    print(f"self-check (d16 L2 H2 ffn32 T{tiny.seq} B2, {'quadratic' if quadratic else 'chunked'} ELA): "
          f"jit f32 vs un-jitted f64 losses/grad norms of 2 steps: {got} vs "
          f"{[(round(a, 7), round(b, 7)) for a, b in want]}, max rel diff {rel:.2e} (<= 1e-5); "
          f"chunked vs quadratic ELA in f64: max abs diff {form_err:.1e} (<= 1e-10): {'ok' if ok else 'FAILED'}",
          flush=True)
    if not ok:
        sys.exit("self-check failed: not timing a peer that computes something else")


def count_params(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn-hidden", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (compilation, warm-up)")
    ap.add_argument("--warmup", type=int, default=40, help="learning-rate warm-up steps (ela train --warmup)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--form", choices=["chunked", "quadratic"], default=None,
                    help=f"ELA form under jit (default: {FORM_NOTE})")
    # Accepted only at the one value this port implements, so a script cannot silently compare
    # against a different model.
    ap.add_argument("--link", default="residual")
    ap.add_argument("--lobe", default="off")
    ap.add_argument("--experts", type=int, default=0)
    ap.add_argument("--attention", default="ela")
    ap.add_argument("--kernel", default="hadamard-exp")
    ap.add_argument("--no-self-check", action="store_true")
    cfg = ap.parse_args()
    for name, want in [("link", "residual"), ("lobe", "off"), ("experts", 0), ("attention", "ela"),
                       ("kernel", "hadamard-exp")]:
        if getattr(cfg, name) != want:
            ap.error(f"--{name} {getattr(cfg, name)}: this port implements only --{name} {want}")
    if cfg.dim % cfg.heads:
        ap.error("--heads must divide --dim")
    quadratic = (cfg.form == "quadratic") if cfg.form else QUADRATIC_DEFAULT
    if not quadratic and cfg.seq % cfg.chunk:
        ap.error("the chunked form (ela_jax.ela_chunked) needs --seq a multiple of --chunk")
    if cfg.steps < 1:
        ap.error("--steps must be positive")

    print(f"jax {jax.__version__}, devices {jax.devices()}, os.cpu_count() {os.cpu_count()}, "
          f"usable CPUs {len(os.sched_getaffinity(0))}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')!r}",
          flush=True)
    if not cfg.no_self_check:
        self_check(cfg, quadratic)

    params = init_params(cfg, cfg.seed)
    total = cfg.warmup_steps + cfg.steps
    data = jnp.asarray(random_batches(total, cfg.batch, cfg.seq, cfg.seed))
    # The state buffers are donated: XLA updates parameters and moments in place, as ela does.
    step = jax.jit(make_train_step(cfg, total, quadratic), donate_argnums=(0,))
    state = init_state(params, jnp.float32)
    form = "quadratic" if quadratic else f"chunked C={cfg.chunk}"
    print(f"model: {count_params(params)} parameters (d{cfg.dim} L{cfg.layers} H{cfg.heads} ffn {cfg.ffn_hidden}, "
          f"residual link, no lobe, dense SwiGLU, tied embeddings, final RMSNorm, ELA {form}); "
          f"{cfg.warmup_steps} untimed + {cfg.steps} timed steps of {cfg.batch}x{cfg.seq} tokens", flush=True)
    losses = []
    t_compile = time.perf_counter()
    for i in range(cfg.warmup_steps):
        state, loss, _ = step(state, data[i])
        losses.append(loss)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(cfg.warmup_steps, total):
        state, loss, _ = step(state, data[i])
        losses.append(loss)
    jax.block_until_ready((state, losses[-1]))
    dt = time.perf_counter() - t0
    tok = cfg.steps * cfg.batch * cfg.seq
    print(f"untimed steps (incl. compilation): {t0 - t_compile:.2f} s", flush=True)
    print(f"jax: {cfg.steps} steps of {cfg.batch}x{cfg.seq} tokens in {dt:.2f} s: {tok / dt:.0f} tokens/s "
          f"({1e3 * dt / cfg.steps:.1f} ms/step), loss first {float(losses[0]):.4f} last {float(losses[-1]):.4f}",
          flush=True)


if __name__ == "__main__":
    main()
