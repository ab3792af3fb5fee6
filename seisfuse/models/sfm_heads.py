"""SFM's downstream models in Flax: the segmentation (facies, salt) and regression (denoising,
reflectivity, interpolation) heads on the SFM ViT encoder, as in SFM's fine-tuning code.

Both run the encoder without masking (`MaskedAutoencoder.features`) at the fine-tuning image size.
The segmenter reads the patch tokens after blocks k·(depth//4), k = 1..4, *without* the final
norm, and decodes them with SETR's MLA head; the regressor reads the final-normed tokens and
decodes them with a TransUNet-style cup whose last block concatenates a convolution of the input
image. BatchNorm follows torch (see `BatchNorm`); every upsampling is torch's bilinear resize with
align_corners=True (`resize_bilinear_align_corners`). docs/sfm-downstream.md lists the quirks kept.

Parameter trees: {"encoder": the MAE encoder's params (cls_token, pos_embed, patch_embed,
blocks_i, norm), "decoder": ..., "segmentation_head": ..., "head": ...}. `head` (timm's classifier)
and, in the segmenter, `segmentation_head` are never read by the forward: the original models
hold them, so they are kept to write checkpoints that load with strict=True.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seisfuse.models.layers import logical, resize_bilinear_align_corners, uniform_init
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder, for_image_size

MLA_TAPS = 4
UPSAMPLE_TO = 16  # the segmenter's final resize is to 16·grid, hard-coded in the original
CUP_CHANNELS = (256, 128, 64, 64)
CUP_SKIP_CHANNELS = 32
ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed", "norm")


def _torch_default(fan_in: int) -> nn.initializers.Initializer:
    """torch's default Conv2d/Linear init for weight and bias: U(±1/√fan_in)."""
    return uniform_init(1.0 / math.sqrt(fan_in))


def _axes(features: int) -> str | None:
    """Logical name of a conv's output axis: sharded over fsdp unless it is a small class count."""
    return "conv_out" if features >= 32 else None


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d over the last (channel) axis.

    train=True: normalise with the batch mean and biased variance over (B, H, W) and move the
    running statistics by `momentum` (torch convention: new = (1 − m)·old + m·batch), the variance
    with the *unbiased* batch variance as torch does (Flax's BatchNorm uses the biased one).
    train=False: normalise with the running statistics. Output x·α + β with α = γ/√(var + ε),
    β = b − mean·α, the form torch's CPU kernel computes.
    """

    epsilon: float = 1e-5
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        names = (_axes(features),)
        scale = self.param("scale", logical(nn.initializers.ones, names), (features,))
        bias = self.param("bias", logical(nn.initializers.zeros, names), (features,))
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            count = math.prod(x.shape[:-1])
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (count / max(count - 1, 1))
        else:
            mean, var = running_mean.value, running_var.value
        alpha = scale / jnp.sqrt(var + self.epsilon)
        return x * alpha + (bias - mean * alpha)


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU: the Sequential blocks of both SFM heads."""

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k = self.kernel_size
        x = nn.Conv(self.features, (k, k), padding=k // 2, use_bias=False, name="conv",
                    kernel_init=logical(_torch_default(k * k * x.shape[-1]),
                                        (None, None, "conv_in", _axes(self.features))))(x)
        return nn.relu(BatchNorm(name="bn")(x, train))


class Unused(nn.Module):
    """Weights the original model holds but its forward never reads; zero-initialised, no gradient."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @nn.compact
    def __call__(self) -> None:
        for name, shape in self.shapes:
            self.param(name, nn.initializers.zeros, shape)


def _conv(features: int, kernel_size: int, fan_in: int, name: str) -> nn.Conv:
    init = logical(_torch_default(fan_in), (None, None, "conv_in", _axes(features)))
    return nn.Conv(features, (kernel_size, kernel_size), padding=kernel_size // 2, name=name,
                   kernel_init=init, bias_init=logical(_torch_default(fan_in), (_axes(features),)))


def _check_images(model: str, cfg: MAEConfig, images: jax.Array) -> None:
    expected = (cfg.img_size, cfg.img_size, cfg.in_chans)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        hint = (" (looks channels-first: seisfuse takes NHWC)"
                if images.ndim == 4 and images.shape[1] == cfg.in_chans != images.shape[-1] else "")
        raise ValueError(
            f"{model} expects images of shape [B, {cfg.img_size}, {cfg.img_size}, {cfg.in_chans}] "
            f"(NHWC), got {tuple(images.shape)}{hint}. Its position table is fixed to "
            f"{cfg.img_size}²: for another size build the model with encoder_params_from_mae")
    if not isinstance(images, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(images))):
        raise ValueError(f"{model}: the images contain NaN or inf values")


def _encoder(cfg: MAEConfig, drop_path_rate: float) -> MaskedAutoencoder:
    return MaskedAutoencoder(dataclasses.replace(cfg, decoder=False), drop_path_rate=drop_path_rate,
                             name="encoder")


def _to_grid(tokens: jax.Array, grid: int) -> jax.Array:
    """Patch tokens [B, 1+L, D] (cls first) -> [B, grid, grid, D] (row-major, as the original's view)."""
    return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, tokens.shape[-1])


class MLAHead(nn.Module):
    """SETR's VIT_MLAHead as SFM uses it: per tap two ConvBNReLU then bilinear ×4; concat; 3×3 `cls`."""

    num_classes: int
    head_channels: int

    @nn.compact
    def __call__(self, grids: list[jax.Array], train: bool) -> jax.Array:
        upsampled = []
        for index, x in enumerate(grids, start=2):
            for layer in range(2):
                x = ConvBNReLU(self.head_channels, name=f"head{index}_{layer}")(x, train)
            upsampled.append(resize_bilinear_align_corners(x, 4 * x.shape[1], 4 * x.shape[2]))
        x = jnp.concatenate(upsampled, axis=-1)
        return _conv(self.num_classes, 3, 9 * x.shape[-1], "cls")(x)


class SFMSegmenter(nn.Module):
    """SFM's segmentation model (`models_Segmentation.VisionTransformer`): logits [B, H, W, classes].

    cfg: the encoder (img_size is the input size; the decoder fields are ignored). The output is
    16·grid on each side (= H for patch 16; the original hard-codes 16). No softmax.
    BatchNorm uses batch statistics and updates `batch_stats` when train=True (apply with
    mutable=["batch_stats"]); train=True also turns on drop_path (rng stream "dropout").
    """

    cfg: MAEConfig
    num_classes: int
    head_channels: int = 128
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.cfg.depth < MLA_TAPS:
            raise ValueError(f"SFMSegmenter taps blocks k·(depth//4), k = 1..4: it needs depth >= 4, got "
                             f"{self.cfg.depth} (the original divides by zero)")
        if self.num_classes < 1 or self.head_channels < 1:
            raise ValueError(f"num_classes and head_channels must be positive, got {self.num_classes} "
                             f"and {self.head_channels}")
        super().__post_init__()

    @property
    def taps(self) -> tuple[int, ...]:
        """Blocks (counted from 1) whose outputs feed the head: depth 12 -> 3, 6, 9, 12."""
        step = self.cfg.depth // MLA_TAPS
        return tuple(step * k for k in range(1, MLA_TAPS + 1))

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        c = self.cfg
        _check_images("SFMSegmenter", c, images)
        tapped, _ = _encoder(c, self.drop_path_rate).features(images, taps=self.taps, train=train)
        grids = [_to_grid(tokens, c.grid_size) for tokens in tapped]
        logits = MLAHead(self.num_classes, self.head_channels, name="decoder")(grids, train)
        Unused((("kernel", (c.embed_dim, self.num_classes)), ("bias", (self.num_classes,))), name="head")()
        Unused((("kernel", (3, 3, 16, self.num_classes)), ("bias", (self.num_classes,))),
               name="segmentation_head")()
        side = UPSAMPLE_TO * c.grid_size
        return resize_bilinear_align_corners(logits, side, side)


class DecoderCup(nn.Module):
    """SFM's regression decoder: four blocks of (bilinear ×2, [concat skip], ConvBNReLU ×2), channels
    D -> 256 -> 128 -> 64 -> 64; the last block's skip is `conv_more` (ConvBNReLU 1 -> 32) of the image.
    The widths are the original's hard-coded ones by default; other widths serve CPU-sized runs."""

    channels: tuple[int, ...] = CUP_CHANNELS
    skip_channels: int = CUP_SKIP_CHANNELS

    @nn.compact
    def __call__(self, x: jax.Array, images: jax.Array, train: bool) -> jax.Array:
        skip = ConvBNReLU(self.skip_channels, name="conv_more")(images, train)
        for index, features in enumerate(self.channels):
            x = resize_bilinear_align_corners(x, 2 * x.shape[1], 2 * x.shape[2])
            if index == len(self.channels) - 1:
                x = jnp.concatenate([x, skip], axis=-1)
            x = ConvBNReLU(features, name=f"blocks_{index}_conv1")(x, train)
            x = ConvBNReLU(features, name=f"blocks_{index}_conv2")(x, train)
        return x


class SFMRegressor(nn.Module):
    """SFM's regression model (`models_Regression.VisionTransformer`, Interpolation=False): [B, H, W, out].

    Needs in_chans = 1 and patch 16 (the skip convolution takes one channel at full resolution,
    reached by four ×2 upsamplings of the patch grid). For trace interpolation apply it to
    images · `interpolation_trace_mask(...)`: that is the original's `pred`. train as in SFMSegmenter.
    """

    cfg: MAEConfig
    out_channels: int = 1
    drop_path_rate: float = 0.0
    decoder_channels: tuple[int, ...] = CUP_CHANNELS  # the original's; narrower ones for CPU runs
    skip_channels: int = CUP_SKIP_CHANNELS

    def __post_init__(self) -> None:
        if len(self.decoder_channels) != len(CUP_CHANNELS) or min(self.decoder_channels) < 1 \
                or self.skip_channels < 1:
            raise ValueError(f"decoder_channels must be {len(CUP_CHANNELS)} positive widths (the original: "
                             f"{CUP_CHANNELS}) and skip_channels positive, got {self.decoder_channels} and "
                             f"{self.skip_channels}")
        if self.cfg.in_chans != 1 or self.cfg.patch_size != 2 ** len(CUP_CHANNELS):
            raise ValueError(f"SFMRegressor needs in_chans=1 and patch_size=16 (as the original decoder), "
                             f"got in_chans={self.cfg.in_chans}, patch_size={self.cfg.patch_size}")
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {self.out_channels}")
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        c = self.cfg
        _check_images("SFMRegressor", c, images)
        _, normed = _encoder(c, self.drop_path_rate).features(images, train=train)
        x = DecoderCup(tuple(self.decoder_channels), self.skip_channels, name="decoder")(
            _to_grid(normed, c.grid_size), images, train)
        Unused((("kernel", (c.embed_dim, self.out_channels)), ("bias", (self.out_channels,))), name="head")()
        return _conv(self.out_channels, 1, x.shape[-1], "segmentation_head")(x)


def encoder_params_from_mae(cfg_mae: MAEConfig, mae_params: dict[str, Any],
                            img_size: int) -> tuple[MAEConfig, dict[str, Any]]:
    """The encoder of pretrained/converted MAE params for a head at `img_size`: (cfg, params["encoder"]).

    As SFM's fine-tuning: the decoder is dropped, the position table is resized bicubically to the
    new grid and becomes learned (`mae.for_image_size`).
    """
    missing = [k for k in ENCODER_KEYS if k not in mae_params]
    missing += [f"blocks_{i}" for i in range(cfg_mae.depth) if f"blocks_{i}" not in mae_params]
    if missing:
        raise ValueError(f"not MAE params for this config: missing {', '.join(missing)}")
    encoder = {k: v for k, v in mae_params.items()
               if k in ENCODER_KEYS or k in {f"blocks_{i}" for i in range(cfg_mae.depth)}}
    return for_image_size(dataclasses.replace(cfg_mae, decoder=False), encoder, img_size)


def interpolation_trace_mask(rng: np.random.Generator, batch: int, width: int, *,
                             keep_ratio: float = 0.75, block: int = 16) -> np.ndarray:
    """SFM's trace-interpolation mask, [B, 1, W, 1] float32 with 1 = kept trace (NHWC broadcast).

    As `models_Regression.generate_mask`: of the W // block column blocks (16 traces each, fixed in
    the original, not the patch size), a uniformly random int(n·keep_ratio) are kept, the rest
    (and any W % block trailing columns) zeroed; one draw is shared by the whole batch. The model
    predicts from images · mask and the loss is taken on the zeroed traces.
    """
    if batch < 1 or width < block or block < 1:
        raise ValueError(f"need batch >= 1 and width >= block >= 1, got batch={batch}, width={width}, "
                         f"block={block}")
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
    blocks = width // block
    kept = rng.permutation(blocks)[: int(blocks * keep_ratio)]
    columns = np.zeros(width, np.float32)
    for index in kept:
        columns[index * block:(index + 1) * block] = 1.0
    return np.broadcast_to(columns[None, None, :, None], (batch, 1, width, 1)).copy()
