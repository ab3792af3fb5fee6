"""SeisLM's downstream models in Flax Linen: the phase picker and the event classifier.

Ports of `MultiDimWav2Vec2ForFrameClassification` (phase picking: per-sample P / S / noise
probabilities) and `Wav2Vec2ForSequenceClassification` (foreshock/aftershock classification:
logits) from SeisLM's `task_specific` package, on the trunk of `seisfuse.models.wav2vec2`. The
parameter tree keeps the trunk under `params["wav2vec2"]` (the same subtree as
`Wav2Vec2ForPreTraining`, so a pretrained trunk copies in and optimizer labels can freeze
`wav2vec2/feature_extractor` or all of `wav2vec2`) and names the head after the PyTorch keys
(`double_conv/double_conv_0`, `classifier`, `head_1`, `head_4`, `layer_weights`, `lns_{i}`).
BatchNorm running statistics live in the `batch_stats` collection. docs/seislm-downstream.md
describes both models, their quirks and the converter.

`train=True` affects the head only (batch statistics, dropout from the 'dropout' rng); the trunk
always runs deterministically, without the trunk dropouts or SpecAugment of the original training.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seisfuse.models.layers import gelu_exact, layer_norm, uniform_init
from seisfuse.models.wav2vec2 import (
    Wav2Vec2Config,
    Wav2Vec2Model,
    check_inputs,
    weighted_layer_sum,
)

BN_EPS = 1e-5  # torch.nn.BatchNorm1d / LayerNorm defaults, used by the original heads
BN_MOMENTUM = 0.1  # torch convention: new = (1 − m)·old + m·batch (Flax's momentum 0.9)
PHASES = ("P", "S", "noise")  # the picker's output channels, in order
HEAD_KERNEL = 3
CLASSIFIER_STRIDES = ((2, 2), (2, 2))  # the classifier's two DoubleConvBlocks


def vector_cross_entropy(probs: jax.Array, targets: jax.Array, eps: float = 1e-5) -> jax.Array:
    """SeisLM's picking loss: −mean_batch Σ_classes mean_samples targets · log(probs + eps).

    probs, targets: [B, T, classes] (channels-last; the original's [B, classes, T] transposed) or
    [B, classes] (then no mean over samples). The eps inside the log is the original's.
    """
    if probs.shape != targets.shape or probs.ndim not in (2, 3):
        raise ValueError(f"probs and targets must both be [B, T, classes] or [B, classes], got "
                         f"{probs.shape} and {targets.shape}")
    h = targets * jnp.log(probs + eps)
    h = h.mean(axis=1).sum(axis=-1) if h.ndim == 3 else h.sum(axis=-1)
    return -h.mean()


def interpolate_linear(x: jax.Array, size: int) -> jax.Array:
    """torch.nn.functional.interpolate(mode='linear', align_corners=False) along axis 1 of [B, L, C].

    Same weights as torch, bit for bit: source coordinate scale·(i + 0.5) − 0.5 clamped at 0, with
    the float32 scale = L / size; torch's kernel evaluates it as one fused multiply-add (a single
    rounding, which float64 arithmetic rounded once to float32 reproduces; plain float32 arithmetic
    is 1 ulp off, up to 3e-5 of a neighbour difference). The two neighbours are weighted
    (1 − λ, λ), the last sample repeats at the right edge. A gather of two rows per output sample.
    """
    length = x.shape[1]
    scale = np.float32(length) / np.float32(size)
    centres = (np.arange(size, dtype=np.float32) + np.float32(0.5)).astype(np.float64)
    src = np.maximum((np.float64(scale) * centres - 0.5).astype(np.float32), np.float32(0))
    lower = src.astype(np.int64)
    upper = np.minimum(lower + 1, length - 1)
    lam = np.clip(src - lower.astype(np.float32), 0, 1).astype(np.float32)
    w1 = jnp.asarray(lam, x.dtype)[None, :, None]
    w0 = jnp.asarray(np.float32(1) - lam, x.dtype)[None, :, None]
    return jnp.take(x, lower, axis=1) * w0 + jnp.take(x, upper, axis=1) * w1


class BatchNorm1d(nn.Module):
    """torch.nn.BatchNorm1d over the last axis: batch statistics when training, running ones otherwise.

    Unlike flax.linen.BatchNorm, the running variance is updated with the unbiased batch variance
    (n/(n − 1)), as torch does, so fine-tuning moves `batch_stats` exactly as the original.
    """

    eps: float = BN_EPS
    momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        mean_stat = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        var_stat = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        if train:
            count = x.size // channels
            if count < 2:
                raise ValueError("BatchNorm in training needs more than one value per channel "
                                 f"(batch x time = {count}); use a larger batch or train=False")
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axis=axes)
            var = jnp.square(xf - mean).mean(axis=axes)
            if not self.is_initializing():
                m = self.momentum
                mean_stat.value = (1 - m) * mean_stat.value + m * mean
                var_stat.value = (1 - m) * var_stat.value + m * var * (count / (count - 1))
        else:
            mean, var = mean_stat.value, var_stat.value
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(x.dtype)


def _conv_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """torch Conv1d's default U(±1/sqrt(k · C_in)) for a Flax kernel [k, C_in, C_out]."""
    return uniform_init(1 / math.sqrt(shape[0] * shape[1]))(key, shape, dtype)


class DoubleConvBlock(nn.Module):
    """SeisLM's DoubleConvBlock: (Conv1d k3 no bias -> BatchNorm1d -> exact GELU -> dropout) x 2.

    Submodule names follow the torch Sequential indices: `double_conv_0`/`_4` convs, `_1`/`_5` norms.
    padding "SAME" (the picker, strides (1, 1)) or "VALID" (the classifier, strides (2, 2)).
    """

    features: int
    padding: str
    strides: tuple[int, int]
    dropout_rate: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for (conv, norm), stride in zip(((0, 1), (4, 5)), self.strides, strict=True):
            x = nn.Conv(self.features, (HEAD_KERNEL,), strides=(stride,), padding=self.padding,
                        use_bias=False, dtype=self.dtype, kernel_init=_conv_init,
                        name=f"double_conv_{conv}")(x)
            x = gelu_exact(BatchNorm1d(name=f"double_conv_{norm}")(x, train))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


def _trunk_features(module: nn.Module, waveforms: jax.Array) -> jax.Array:
    """The downstream models' `get_wav2vec2_hidden_states`: [B, L, H].

    Without the weighted layer sum: the last hidden state. With it: each of the N + 1 hidden states
    through its own LayerNorm `lns_{i}` (torch default eps 1e-5), weighted by softmax(layer_weights).
    Called from the heads' compact `__call__`, so the trunk and these parameters belong to them.
    """
    cfg: Wav2Vec2Config = module.cfg
    last, _, states = Wav2Vec2Model(cfg, name="wav2vec2")(waveforms)
    if not module.use_weighted_layer_sum:
        return last
    count = cfg.num_hidden_layers + 1
    layer_weights = module.param("layer_weights", lambda _key: jnp.full((count,), 1 / count, jnp.float32))
    dtype = jnp.dtype(cfg.dtype)
    normed = [layer_norm(BN_EPS, dtype, f"lns_{i}")(state) for i, state in enumerate(states)]
    return weighted_layer_sum(normed, layer_weights)


def _check_dropout(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"head_dropout_rate must be in [0, 1), got {rate}")


class SeisLMPicker(nn.Module):
    """Phase picker: waveforms [B, T, C] -> per-sample probabilities [B, T, num_labels] (P, S, noise).

    Hidden states [B, L, H] are linearly interpolated to the T samples, the raw waveform (as given)
    is appended (H + C channels), then DoubleConvBlock ('same', stride 1) -> dropout -> `classifier`
    Linear -> softmax over the classes.
    """

    cfg: Wav2Vec2Config
    num_labels: int = 3
    use_weighted_layer_sum: bool = False
    head_dropout_rate: float = 0.2

    @nn.compact
    def __call__(self, waveforms: jax.Array, *, train: bool = False) -> jax.Array:
        check_inputs(self.cfg, waveforms)
        _check_dropout(self.head_dropout_rate)
        dtype = jnp.dtype(self.cfg.dtype)
        hidden = _trunk_features(self, waveforms)
        samples = waveforms.shape[1]
        if hidden.shape[1] != samples:
            hidden = interpolate_linear(hidden, samples)
        x = jnp.concatenate([hidden, waveforms.astype(hidden.dtype)], axis=-1)
        x = DoubleConvBlock(x.shape[-1], "SAME", (1, 1), self.head_dropout_rate, dtype,
                            name="double_conv")(x, train)
        x = nn.Dropout(self.head_dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_labels, dtype=dtype, name="classifier",
                          kernel_init=nn.initializers.normal(self.cfg.initializer_range))(x)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _classifier_min_frames() -> int:
    """Fewest trunk frames the classifier head's four valid stride-2 k3 convs accept (31)."""
    frames = 1
    for _ in range(2 * len(CLASSIFIER_STRIDES)):
        frames = (frames - 1) * 2 + HEAD_KERNEL
    return frames


class SeisLMClassifier(nn.Module):
    """Event classifier: waveforms [B, T, C] -> logits [B, num_classes].

    Hidden states [B, L, H] -> `head_1` DoubleConvBlock H -> H and `head_2` H -> classifier_proj_size
    (valid, strides 2, 2: 749 -> 374 -> 186 -> 92 -> 45 frames) -> mean over time -> `head_4` Linear.
    """

    cfg: Wav2Vec2Config
    num_classes: int
    classifier_proj_size: int = 256
    use_weighted_layer_sum: bool = False
    head_dropout_rate: float = 0.2

    @nn.compact
    def __call__(self, waveforms: jax.Array, *, train: bool = False) -> jax.Array:
        check_inputs(self.cfg, waveforms)
        _check_dropout(self.head_dropout_rate)
        frames = self.cfg.frames(waveforms.shape[1])
        need = _classifier_min_frames()
        if frames < need:
            samples = need
            for k, s in zip(reversed(self.cfg.conv_kernel), reversed(self.cfg.conv_stride), strict=True):
                samples = (samples - 1) * s + k
            raise ValueError(f"{waveforms.shape[1]} samples give {frames} trunk frames; the classifier "
                             f"head's strided convs need at least {need} frames ({samples} samples)")
        dtype = jnp.dtype(self.cfg.dtype)
        x = _trunk_features(self, waveforms)
        for index, width in ((1, self.cfg.hidden_size), (2, self.classifier_proj_size)):
            x = DoubleConvBlock(width, "VALID", CLASSIFIER_STRIDES[index - 1], self.head_dropout_rate,
                                dtype, name=f"head_{index}")(x, train)
        pooled = x.astype(jnp.float32).mean(axis=1)
        bound = 1 / math.sqrt(self.classifier_proj_size)
        return nn.Dense(self.num_classes, dtype=dtype, name="head_4", kernel_init=uniform_init(bound),
                        bias_init=uniform_init(bound))(pooled).astype(jnp.float32)

