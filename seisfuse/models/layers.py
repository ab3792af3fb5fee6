"""Building blocks shared by the SFM (ViT-MAE) and SeisLM (wav2vec 2.0) ports.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, ...); the single table
in `seisfuse.parallel` maps them to mesh axes, so no mesh axis appears here.
Attention keeps PyTorch's fused/separate projections as three `(D, heads, head_dim)` kernels so that
tensor parallelism can split heads and the converters can map weights one-to-one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]
Dtype = jnp.dtype


def logical(init: Initializer, names: Sequence[str | None]) -> Initializer:
    """Attach logical axis names to an initializer (shorthand for nn.with_logical_partitioning)."""
    return nn.with_logical_partitioning(init, tuple(names))


def uniform_init(bound: float) -> Initializer:
    """U(-bound, bound), e.g. xavier_uniform computed on a differently shaped PyTorch view."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch's default GELU (erf form); `jax.nn.gelu` defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table, shape [grid_h*grid_w (+1), dim], float32.

    Token t = r*grid_w + c (row-major). Channels [0, dim/2) encode the column c and [dim/2, dim)
    the row r; each half is [sin(p*w_k)] ++ [cos(p*w_k)], w_k = 10000^(-k/(dim/4)). Computed in
    float64 like the original, then cast. The cls slot (row 0) is all zeros.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64), indexing="ij")
    table = np.concatenate([encode(cols), encode(rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table.astype(np.float32)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm with explicit eps (Flax defaults to 1e-6, PyTorch to 1e-5) and logical names."""
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, name=name,
        scale_init=logical(nn.initializers.ones, ("embed",)),
        bias_init=logical(nn.initializers.zeros, ("embed",)),
    )


def _attention_probs(q: jax.Array, k: jax.Array, key_mask: jax.Array, scale: float) -> jax.Array:
    """softmax(q·k·scale) of one example, float32 [heads, Lq, Lk]; q [Lq, h, d], k [Lk, h, d]."""
    scores = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(key_mask[None, None, :], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def per_example_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
                          scale: float) -> jax.Array:
    """jax.nn.dot_product_attention's result (q, k, v [B, L, heads, head_dim]; key_mask bool [B, L]),
    computed one example at a time, with a backward pass that recomputes the probabilities.

    Why: XLA:CPU materialises the [B, heads, L, L] scores several times over and keeps the
    probabilities for the backward; one example's scores stay in cache and nothing of size B·L²
    is stored. For L = 749, 12 heads of 20 (SeisLM-base) forward + backward is ~5x faster on a
    CPU. Accelerators should keep jax.nn.dot_product_attention (fused kernels, batch parallelism).
    """
    return _per_example_forward(q, k, v, key_mask, scale)


def _per_example_forward(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
                         scale: float) -> jax.Array:
    def one(args: tuple[jax.Array, ...]) -> jax.Array:
        q, k, v, mask = args
        return jnp.einsum("hqk,khd->qhd", _attention_probs(q, k, mask, scale).astype(v.dtype), v)

    return jax.lax.map(one, (q, k, v, key_mask))


def _per_example_fwd(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
                     scale: float) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out = _per_example_forward(q, k, v, key_mask, scale)
    return out, (q, k, v, key_mask, out)


def _per_example_bwd(scale: float, residuals: tuple[jax.Array, ...],
                     d_out: jax.Array) -> tuple[jax.Array | None, ...]:
    def one(args: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        q, k, v, mask, out, d_out = args
        p = _attention_probs(q, k, mask, scale)
        d_v = jnp.einsum("hqk,qhd->khd", p.astype(d_out.dtype), d_out)
        d_p = jnp.einsum("qhd,khd->hqk", d_out, v, preferred_element_type=jnp.float32)
        row = jnp.einsum("qhd,qhd->hq", d_out, out, preferred_element_type=jnp.float32)
        d_scores = (p * (d_p - row[..., None]) * scale).astype(q.dtype)
        return (jnp.einsum("hqk,khd->qhd", d_scores, k), jnp.einsum("hqk,qhd->khd", d_scores, q), d_v)

    d_q, d_k, d_v = jax.lax.map(one, (*residuals, d_out))
    return d_q, d_k, d_v, None


per_example_attention.defvjp(_per_example_fwd, _per_example_bwd)


ATTENTION_IMPLS = ("auto", "per_example", "fused")


def check_attention_impl(impl: str) -> None:
    """Validate the name without touching the backend (configs are built at import time, before a
    multi-host run may call jax.distributed.initialize)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def use_per_example_attention(impl: str) -> bool:
    """'auto' picks `per_example_attention` on CPU (faster on XLA:CPU) and the fused
    `jax.nn.dot_product_attention` on accelerators. Queries the backend: call at model build time."""
    check_attention_impl(impl)
    return jax.default_backend() == "cpu" if impl == "auto" else impl == "per_example"


class MultiHeadAttention(nn.Module):
    """Softmax attention: `query`/`key`/`value` kernels [D, heads, head_dim], `out` [heads, head_dim, D].

    per_example=True computes the same thing with `per_example_attention` (faster on CPU).
    """

    num_heads: int
    qkv_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer = nn.initializers.xavier_uniform()
    dtype: Dtype = jnp.float32
    per_example: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """x [B, L, D]; key_mask bool [B, L] (True = attend to this key) or None."""
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads

        def project(name: str) -> jax.Array:
            return nn.DenseGeneral(
                (self.num_heads, head_dim), dtype=self.dtype, name=name,
                kernel_init=logical(self.qkv_init, ("embed", "heads", "kv")),
                bias_init=logical(nn.initializers.zeros, ("heads", "kv")),
            )(x)

        q, k, v = project("query"), project("key"), project("value")
        if self.per_example:
            mask = jnp.ones(x.shape[:2], bool) if key_mask is None else key_mask.astype(bool)
            y = per_example_attention(q, k, v, mask, head_dim**-0.5)
        else:
            mask = None if key_mask is None else key_mask[:, None, None, :]
            y = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim**-0.5)
        return nn.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype, name="out",
            kernel_init=logical(self.out_init, ("heads", "kv", "embed")),
            bias_init=logical(nn.initializers.zeros, ("embed",)),
        )(y)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (names as timm's ViT MLP)."""

    hidden: int
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    dtype: Dtype = jnp.float32
    names: tuple[str, str] = ("fc1", "fc2")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = nn.Dense(self.hidden, dtype=self.dtype, name=self.names[0],
                     kernel_init=logical(self.kernel_init, ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros, ("mlp",)))(x)
        h = gelu_exact(h)
        return nn.Dense(width, dtype=self.dtype, name=self.names[1],
                        kernel_init=logical(self.kernel_init, ("mlp", "embed")),
                        bias_init=logical(nn.initializers.zeros, ("embed",)))(h)


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """timm's DropPath in training: each example's branch is zeroed with probability `rate`, and the
    kept ones are scaled by 1/(1 − rate) so the expectation is unchanged (stochastic depth)."""
    keep = 1.0 - rate
    kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(kept, x / keep, 0).astype(x.dtype)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth rates as timm's ViT sets them: linear from 0 to `rate` over depth."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    return [float(r) for r in np.linspace(0.0, rate, depth)]


class PreNormBlock(nn.Module):
    """timm ViT block: x + Attn(LN1 x), then x + MLP(LN2 x). Names norm1/attn/norm2/mlp.

    With `drop_path` > 0 and deterministic=False each residual branch goes through `drop_path`
    (two independent draws per block, as timm), using the rng stream "dropout".
    """

    num_heads: int
    mlp_hidden: int
    eps: float
    qkv_init: Initializer = nn.initializers.xavier_uniform()
    dtype: Dtype = jnp.float32
    per_example: bool = False
    drop_path: float = 0.0

    def _branch(self, y: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.drop_path == 0.0:
            return y
        return drop_path(y, self.drop_path, self.make_rng("dropout"))

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = x + self._branch(MultiHeadAttention(self.num_heads, qkv_init=self.qkv_init, dtype=self.dtype,
                                                per_example=self.per_example, name="attn")(
            layer_norm(self.eps, self.dtype, "norm1")(x)), deterministic)
        return x + self._branch(Mlp(self.mlp_hidden, dtype=self.dtype, name="mlp")(
            layer_norm(self.eps, self.dtype, "norm2")(x)), deterministic)


def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float64 matrix of torch's bicubic resize (A = -0.75, align_corners=False, no antialias).

    torch maps output pixel i to source (i + .5) * in/out - .5 without clamping, takes the four taps
    around floor(src) with Keys' cubic weights, and clamps tap indices to the border.
    """
    a = -0.75
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    t = src - base

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    matrix = np.zeros((out_size, in_size))
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), idx), weights[:, tap])
    return matrix


def align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(index0, index1, weight0, weight1) of torch's linear resize with align_corners=True, [out_size].

    Computed in float32 as torch's CPU kernel does: scale = (in − 1)/(out − 1) (0 for one output),
    source = scale·i, index0 = floor(source) clamped to in − 1, index1 = index0 + 1 unless at the
    border, weight1 = source − index0, weight0 = 1 − weight1.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    source = scale * np.arange(out_size, dtype=np.float32)
    index0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    index1 = np.minimum(index0 + 1, in_size - 1)
    weight1 = np.clip(source - index0.astype(np.float32), 0, 1).astype(np.float32)
    return index0, index1, np.float32(1) - weight1, weight1


def resize_bilinear_align_corners(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of NHWC `x` with align_corners=True (torch's F.interpolate / UpsamplingBilinear2d).

    `jax.image.resize` uses half-pixel centres (align_corners=False), which moves every sample.
    Two gathers and a weighted sum per axis (width first, then height, as torch's kernel), all in
    the input dtype: no matmul, so the result does not depend on the matmul precision.
    """

    def along(x: jax.Array, axis: int, size: int) -> jax.Array:
        index0, index1, weight0, weight1 = align_corners_taps(x.shape[axis], size)
        shape = [1] * x.ndim
        shape[axis] = size
        w0 = jnp.asarray(weight0.reshape(shape), x.dtype)
        w1 = jnp.asarray(weight1.reshape(shape), x.dtype)
        return w0 * jnp.take(x, index0, axis=axis) + w1 * jnp.take(x, index1, axis=axis)

    return along(along(x, 2, width), 1, height)
