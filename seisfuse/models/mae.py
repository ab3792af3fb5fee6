"""SFM: the ViT masked autoencoder of the Seismic Foundation Model, in Flax Linen.

A faithful port of SFM's PyTorch code (FAIR's MAE with timm 0.3.2 blocks); docs/sfm-downstream.md
describes the fine-tuning models built on its encoder (`features`). Differences of form only: images
are NHWC, the fused qkv projection is kept as three `(D, heads, head_dim)` kernels, and masking is
driven by an explicit `noise` array so that results are reproducible and comparable with the
original for the same noise.

The fixed sin-cos position tables live in `params` (as in the PyTorch state_dict) but receive no
gradient unless `learned_pos_embed` is set; optimizers should also leave them out (see
`seisfuse.train.optim.mae_trainable_mask`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seisfuse.models.layers import (
    PreNormBlock,
    bicubic_resize_matrix,
    check_attention_impl,
    drop_path_rates,
    layer_norm,
    logical,
    sincos_pos_embed_2d,
    uniform_init,
    use_per_example_attention,
)
from seisfuse.models.presets import PresetConfig


@dataclasses.dataclass(frozen=True)
class MAEConfig(PresetConfig):
    """Shape and behaviour of an SFM masked autoencoder (presets: tiny, base, large, *-dec512)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder: bool = True
    decoder_embed_dim: int = 256
    decoder_depth: int = 4
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    layer_norm_eps: float = 1e-6
    learned_pos_embed: bool = False
    dtype: str = "float32"
    attention_impl: str = "auto"  # "per_example" (fast on CPU), "fused" (accelerators) or "auto"

    def __post_init__(self) -> None:
        check_attention_impl(self.attention_impl)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, what in [(self.embed_dim, self.num_heads, "encoder"),
                                   (self.decoder_embed_dim, self.decoder_num_heads, "decoder")]:
            if width % heads:
                raise ValueError(f"{what} width {width} is not divisible by {heads} heads")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        """Values per patch in the reconstruction target: patch_size² · in_chans."""
        return self.patch_size**2 * self.in_chans


MAE_PRESETS: dict[str, MAEConfig] = {
    "tiny": MAEConfig(embed_dim=64, depth=2, num_heads=4,
                      decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4),
    "base": MAEConfig(embed_dim=768, depth=12, num_heads=12),
    "large": MAEConfig(embed_dim=1024, depth=24, num_heads=16),
    "base-dec512": MAEConfig(embed_dim=768, depth=12, num_heads=12,
                             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "large-dec512": MAEConfig(embed_dim=1024, depth=24, num_heads=16,
                              decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}
MAEConfig.PRESETS, MAEConfig.KIND = MAE_PRESETS, "MAE"


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, L, p·p·C]; tokens row-major, values ordered (row in patch, column, channel)."""
    b, h, w, c = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, gh, patch_size, gw, patch_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int) -> jax.Array:
    """Inverse of `patchify` for a square grid: [B, L, p·p·C] -> [B, H, W, C]."""
    b, length, _ = patches.shape
    grid = math.isqrt(length)
    if grid * grid != length:
        raise ValueError(f"unpatchify needs a square number of patches, got {length}")
    x = patches.reshape(b, grid, grid, patch_size, patch_size, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, grid * patch_size, grid * patch_size, channels)


def check_mask_ratio(mask_ratio: float) -> None:
    """At 1.0 MAE keeps no token, above it the keep count goes negative: refuse, naming the range."""
    if not isinstance(mask_ratio, jax.core.Tracer) and not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1) (the share of patches removed), got {mask_ratio}")


def random_masking(noise: jax.Array, mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MAE's per-sample shuffle: returns (ids_keep [B, keep], mask [B, L] with 1 = removed, ids_restore)."""
    check_mask_ratio(mask_ratio)
    batch, length = noise.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    mask = jnp.concatenate([jnp.zeros((batch, keep)), jnp.ones((batch, length - keep))], axis=1)
    mask = jnp.take_along_axis(mask, ids_restore, axis=1)
    return ids_shuffle[:, :keep], mask, ids_restore


def reconstruction_loss(target: jax.Array, pred: jax.Array, mask: jax.Array,
                        norm_pix: bool) -> jax.Array:
    """Per-patch MSE averaged over masked patches; norm_pix normalises each target patch (unbiased var)."""
    target = target.astype(jnp.float32)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch, computed as one matmul over non-overlapping patches."""

    cfg: MAEConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.cfg
        p, d = c.patch_size, c.embed_dim
        fan_in = p * p * c.in_chans
        kernel = self.param("kernel", logical(uniform_init(xavier_bound(fan_in, d)),
                                              (None, None, None, "embed")), (p, p, c.in_chans, d))
        bias = self.param("bias", logical(uniform_init(1 / math.sqrt(fan_in)), ("embed",)), (d,))
        b, h, w, ch = images.shape
        x = images.reshape(b, h // p, p, w // p, p, ch).astype(c.dtype)
        x = jnp.einsum("bhpwqc,pqcd->bhwd", x, kernel.astype(c.dtype))
        return x.reshape(b, -1, d) + bias.astype(c.dtype)


class MaskedAutoencoder(nn.Module):
    """SFM/MAE. `encode` -> (latent, mask, ids_restore); `__call__` -> (loss, pred, mask);
    `features` -> chosen blocks' outputs for downstream heads.

    drop_path_rate: stochastic depth of the encoder blocks in `features(train=True)` (SFM's
    fine-tuning `--drop_path`, timm's per-block linear ramp); pretraining never uses it.
    """

    cfg: MAEConfig
    drop_path_rate: float = 0.0

    def setup(self) -> None:
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        d, grid = c.embed_dim, c.grid_size
        per_example = use_per_example_attention(c.attention_impl)
        self.patch_embed = PatchEmbed(c)
        self.cls_token = self.param("cls_token", logical(nn.initializers.normal(0.02),
                                                         (None, None, "embed")), (1, 1, d))
        self.pos_embed = self._pos_param("pos_embed", d, grid)
        self.blocks = [
            PreNormBlock(c.num_heads, int(d * c.mlp_ratio), c.layer_norm_eps,
                         qkv_init=uniform_init(xavier_bound(d, 3 * d)), dtype=dtype,
                         per_example=per_example, drop_path=rate)
            for rate in drop_path_rates(self.drop_path_rate, c.depth)
        ]
        self.norm = layer_norm(c.layer_norm_eps, dtype, "norm")
        if not c.decoder:
            return
        dd = c.decoder_embed_dim
        self.decoder_embed = nn.Dense(
            dd, dtype=dtype,
            kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", "decoder_embed")),
            bias_init=logical(nn.initializers.zeros, ("decoder_embed",)))
        self.mask_token = self.param("mask_token", logical(nn.initializers.normal(0.02),
                                                           (None, None, "embed")), (1, 1, dd))
        self.decoder_pos_embed = self._pos_param("decoder_pos_embed", dd, grid)
        self.decoder_blocks = [
            PreNormBlock(c.decoder_num_heads, int(dd * c.mlp_ratio), c.layer_norm_eps,
                         qkv_init=uniform_init(xavier_bound(dd, 3 * dd)), dtype=dtype,
                         per_example=per_example)
            for _ in range(c.decoder_depth)
        ]
        self.decoder_norm = layer_norm(c.layer_norm_eps, dtype, "decoder_norm")
        self.decoder_pred = nn.Dense(c.patch_dim, dtype=dtype,
                                     kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", None)),
                                     bias_init=logical(nn.initializers.zeros, (None,)))

    def _pos_param(self, name: str, width: int, grid: int) -> jax.Array:
        if self.cfg.learned_pos_embed:
            init = nn.initializers.truncated_normal(0.02)
        else:
            table = sincos_pos_embed_2d(width, grid, grid)[None]

            def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
                return jnp.asarray(table, dtype)

        value = self.param(name, logical(init, (None, None, "embed")), (1, grid * grid + 1, width))
        return value if self.cfg.learned_pos_embed else jax.lax.stop_gradient(value)

    def _check_images(self, images: jax.Array) -> None:
        c = self.cfg
        expected = (c.img_size, c.img_size, c.in_chans)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            hint = (" (looks channels-first: seisfuse takes NHWC)"
                    if images.ndim == 4 and images.shape[1] == c.in_chans != images.shape[-1] else "")
            raise ValueError(f"MAE expects images of shape [B, {c.img_size}, {c.img_size}, "
                             f"{c.in_chans}] (NHWC), got {tuple(images.shape)}{hint}")
        if images.shape[0] == 0:
            raise ValueError("MAE got an empty batch (B = 0): pass at least one image")
        if not isinstance(images, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(images))):
            raise ValueError("images contain NaN or inf: clean or mask them before the MAE")

    def encode(self, images: jax.Array, *, noise: jax.Array | None = None,
               mask_ratio: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encoder tokens [B, 1+keep, D] (cls first, final norm applied), mask [B, L], ids_restore [B, L].

        With noise=None and mask_ratio=0 all tokens are kept in natural order. With noise [B, L]
        the tokens are shuffled by argsort(noise) and the first int(L·(1−mask_ratio)) kept.
        """
        self._check_images(images)
        check_mask_ratio(mask_ratio)
        x = self._embed_patches(images)
        batch, length, _ = x.shape
        if noise is None:
            if mask_ratio != 0.0:
                raise ValueError("mask_ratio > 0 needs a noise array [B, L] (e.g. jax.random.uniform)")
            mask = jnp.zeros((batch, length), jnp.float32)
            ids_restore = jnp.broadcast_to(jnp.arange(length), (batch, length))
        else:
            if tuple(noise.shape) != (batch, length):
                raise ValueError(f"noise must have shape [B, L] = {(batch, length)}, "
                                 f"got {tuple(noise.shape)}")
            ids_keep, mask, ids_restore = random_masking(noise, mask_ratio)
            x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
        x = self._prepend_cls(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def features(self, images: jax.Array, *, taps: Sequence[int] = (),
                 train: bool = False) -> tuple[list[jax.Array], jax.Array]:
        """The unmasked encoder pass of SFM's fine-tuning ViT, for downstream heads.

        Returns ([tokens after block k for k in taps], final-normed tokens), all [B, 1+L, D] with
        the cls token first; taps count blocks from 1 and are read before the final norm (SFM's
        segmentation taps). train=True turns on stochastic depth (rng stream "dropout").
        """
        bad = [k for k in taps if not 1 <= k <= self.cfg.depth]
        if bad:
            raise ValueError(f"taps {bad} are outside blocks 1..{self.cfg.depth}")
        self._check_images(images)
        x = self._prepend_cls(self._embed_patches(images))
        outputs = {}
        for index, block in enumerate(self.blocks, start=1):
            x = block(x, deterministic=not train)
            if index in taps:
                outputs[index] = x
        return [outputs[k] for k in taps], self.norm(x)

    def _embed_patches(self, images: jax.Array) -> jax.Array:
        return self.patch_embed(images) + self.pos_embed[:, 1:].astype(self.cfg.dtype)

    def _prepend_cls(self, x: jax.Array) -> jax.Array:
        cls = jnp.broadcast_to(self.cls_token + self.pos_embed[:, :1], (x.shape[0], 1, x.shape[-1]))
        return jnp.concatenate([cls.astype(x.dtype), x], axis=1)

    def decode(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        """Predicted patches [B, L, p·p·C] from encoder tokens and the un-shuffle order."""
        if not self.cfg.decoder:
            raise ValueError("this MAEConfig has decoder=False (encoder-only weights): cannot decode")
        x = self.decoder_embed(latent)
        batch, kept, width = x.shape
        length = ids_restore.shape[1]
        masked = jnp.broadcast_to(self.mask_token.astype(x.dtype), (batch, length + 1 - kept, width))
        tokens = jnp.concatenate([x[:, 1:], masked], axis=1)
        tokens = jnp.take_along_axis(tokens, ids_restore[..., None], axis=1)
        x = jnp.concatenate([x[:, :1], tokens], axis=1) + self.decoder_pos_embed.astype(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def __call__(self, images: jax.Array, *, noise: jax.Array,
                 mask_ratio: float = 0.75) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(loss, pred [B, L, p·p·C], mask [B, L]) exactly as SFM's forward(imgs, mask_ratio)."""
        latent, mask, ids_restore = self.encode(images, noise=noise, mask_ratio=mask_ratio)
        pred = self.decode(latent, ids_restore)
        target = patchify(images, self.cfg.patch_size)
        return reconstruction_loss(target, pred, mask, self.cfg.norm_pix_loss), pred, mask


def resize_pos_embed(pos_embed: np.ndarray, new_grid: int, num_prefix_tokens: int = 1) -> np.ndarray:
    """Resize a [1, prefix + g·g, D] position table to a new_grid² grid, as MAE's interpolate_pos_embed.

    Prefix (cls) rows are kept; the grid is resized with torch's bicubic (A = −0.75,
    align_corners=False, no antialias), computed in float64.
    """
    pos_embed = np.asarray(pos_embed)
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid_tokens.shape[1])
    if old_grid * old_grid != grid_tokens.shape[1]:
        raise ValueError(f"position table has {grid_tokens.shape[1]} grid tokens, not a square")
    if old_grid == new_grid:
        return pos_embed
    grid = grid_tokens.reshape(old_grid, old_grid, -1).astype(np.float64)
    matrix = bicubic_resize_matrix(old_grid, new_grid)
    resized = np.einsum("ih,jw,hwd->ijd", matrix, matrix, grid).reshape(1, new_grid**2, -1)
    return np.concatenate([prefix, resized.astype(pos_embed.dtype)], axis=1)


def for_image_size(cfg: MAEConfig, params: dict[str, Any], img_size: int) -> tuple[MAEConfig, dict[str, Any]]:
    """Adapt a checkpoint to another image size as SFM's fine-tuning does (e.g. 224 -> 768 for facies).

    Position tables are resized bicubically (`resize_pos_embed`) and become learned parameters, as
    in SFM's fine-tuning ViT; the rest of the params are shared unchanged.
    """
    new_cfg = dataclasses.replace(cfg, img_size=img_size, learned_pos_embed=True)
    names = ["pos_embed"] + (["decoder_pos_embed"] if cfg.decoder and "decoder_pos_embed" in params else [])
    resized = {name: jnp.asarray(resize_pos_embed(np.asarray(params[name]), new_cfg.grid_size))
               for name in names}
    return new_cfg, {**params, **resized}
