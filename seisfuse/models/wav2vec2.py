"""SeisLM: wav2vec 2.0 on 3-component seismograms, in Flax Linen.

A faithful port of SeisLM's PyTorch model (HuggingFace's `Wav2Vec2ForPreTraining` with a
multi-channel first conv); docs/specs.md lists the facts it reproduces. The same code imports
HuggingFace audio wav2vec2 checkpoints: `feat_extract_norm="group"` with the post-LN transformer
(`do_stable_layer_norm=False`) and `input_channels=1`.

Differences of form only: waveforms are channels-last [B, T, C]; attention keeps separate
`(D, heads, head_dim)` kernels (layers.MultiHeadAttention); the weight-normed positional conv keeps
`weight_g`/`weight_v` as parameters so training sees the same reparametrisation. Randomness is
explicit: span masks and negatives come from `seisfuse.masking` on the host, Gumbel noise from the
'gumbel' rng. The objective lives in `seisfuse.losses`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seisfuse import losses
from seisfuse.models.layers import (
    Dtype,
    Mlp,
    MultiHeadAttention,
    check_attention_impl,
    gelu_exact,
    layer_norm,
    logical,
    uniform_init,
    use_per_example_attention,
)
from seisfuse.models.presets import PresetConfig


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config(PresetConfig):
    """Shape and behaviour of a wav2vec 2.0 model (presets: tiny, seislm-base, seislm-large, hf-base)."""

    input_channels: int = 3
    conv_dim: tuple[int, ...] = (256, 256)
    conv_kernel: tuple[int, ...] = (3, 3)
    conv_stride: tuple[int, ...] = (2, 2)
    conv_bias: bool = True
    feat_extract_norm: str = "layer"  # "layer" (SeisLM) or "group" (HF audio base)
    hidden_size: int = 240
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = True  # pre-LN transformer (SeisLM); False: post-LN (HF audio base)
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    scale_quantizer_logits: bool = True  # SeisLM divides the quantizer logits by sqrt(conv_dim[-1])
    num_negatives: int = 100
    contrastive_logits_temperature: float = 0.1
    diversity_loss_weight: float = 0.1
    mask_time_prob: float = 0.65
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    initializer_range: float = 0.02
    # The released pretraining fed a frame-level attention mask that the model shortened again,
    # so only the first frames_after_conv(L) of L frames were valid (186 of 749). Off by default.
    pretraining_attention_quirk: bool = False
    # "per_example" (layers.per_example_attention, fastest on CPU), "fused"
    # (jax.nn.dot_product_attention, for accelerators) or "auto": per_example on a CPU backend.
    attention_impl: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0:
            raise ValueError("conv_dim, conv_kernel and conv_stride must be non-empty and of equal length, "
                             f"got {self.conv_dim}, {self.conv_kernel}, {self.conv_stride}")
        check_attention_impl(self.attention_impl)
        if self.feat_extract_norm not in ("layer", "group"):
            raise ValueError(f"feat_extract_norm must be 'layer' or 'group', got {self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"{self.num_attention_heads} attention heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"{self.num_conv_pos_embedding_groups} positional conv groups")
        if self.codevector_dim % self.num_codevector_groups:
            raise ValueError(f"codevector_dim {self.codevector_dim} is not divisible by "
                             f"{self.num_codevector_groups} codevector groups")

    @property
    def per_example_attention(self) -> bool:
        return use_per_example_attention(self.attention_impl)

    @property
    def num_codevectors(self) -> int:
        return self.num_codevector_groups * self.num_codevectors_per_group

    def frames(self, num_samples: int) -> int:
        """Frames the conv feature encoder makes of `num_samples` samples (0 if too short)."""
        return int(frames_after_conv(np.asarray(num_samples), self.conv_kernel, self.conv_stride))


WAV2VEC2_PRESETS: dict[str, Wav2Vec2Config] = {
    "tiny": Wav2Vec2Config(conv_dim=(32, 32), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64,
                           num_codevectors_per_group=16, codevector_dim=32, proj_codevector_dim=32),
    "seislm-base": Wav2Vec2Config(),
    "seislm-large": Wav2Vec2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    # HuggingFace facebook/wav2vec2-base layout, for importing audio checkpoints.
    "hf-base": Wav2Vec2Config(input_channels=1, conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                              conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
                              feat_extract_norm="group", hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, do_stable_layer_norm=False,
                              scale_quantizer_logits=False, mask_time_prob=0.05),
}
Wav2Vec2Config.PRESETS, Wav2Vec2Config.KIND = WAV2VEC2_PRESETS, "wav2vec2"


def frames_after_conv(lengths: Any, kernels: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """Valid-conv output length floor((n − k)/s) + 1 per layer (works on ints, numpy and jax arrays)."""
    for k, s in zip(kernels, strides, strict=True):
        lengths = (lengths - k) // s + 1
    return lengths


def prepare_waveforms(waveforms: Any, channels: int = 3) -> np.ndarray:
    """Host-side check and SeisLM normalisation of raw traces [B, T, C] -> float32.

    Per trace and channel: demean, then divide by (std + 1e-10), a std of 0 replaced by 1, as the
    original data pipeline. Raises on wrong rank, wrong channel count or non-finite samples, which
    would otherwise turn every output into NaN without saying why.
    """
    x = np.asarray(waveforms)
    check_waveform_shape(x.shape, channels)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"waveforms contain NaN or inf (first at batch {bad[0]}, sample {bad[1]}, "
                         f"channel {bad[2]})")
    x = x.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    std[std == 0] = 1.0
    return (x / (std + 1e-10)).astype(np.float32)


def check_waveform_shape(shape: tuple[int, ...], channels: int) -> None:
    """Raise a ValueError naming the problem unless `shape` is [B, T, channels]."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"waveforms must be [B, T, C] (batch, samples, channels), got shape {shape}")
    if shape[-1] != channels:
        hint = " (looks channels-first: seisfuse takes [B, T, C])" if shape[1] == channels else ""
        raise ValueError(f"waveforms must have {channels} channels in the last axis, got shape "
                         f"{shape}{hint}")


def check_inputs(cfg: Wav2Vec2Config, waveforms: jax.Array, attention_mask: jax.Array | None = None) -> None:
    """Raise a ValueError naming the problem unless `waveforms` [B, T, C] (and the optional sample
    mask [B, T]) fit `cfg`; concrete inputs (eager calls, or closed over under jit) must be finite."""
    check_waveform_shape(waveforms.shape, cfg.input_channels)
    if cfg.frames(waveforms.shape[1]) < 1:
        raise ValueError(f"{waveforms.shape[1]} samples are too few for the conv feature encoder")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(waveforms.shape[:2]):
        raise ValueError(f"attention_mask must be [B, T] = {tuple(waveforms.shape[:2])}, "
                         f"got {tuple(attention_mask.shape)}")
    if not isinstance(waveforms, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(waveforms))):
        raise ValueError("waveforms contain NaN or inf")


# --------------------------------------------------------------------------- feature encoder


class FeatureConv(nn.Module):
    """Valid strided Conv1d computed as one matmul over the k taps (kernel [k, C_in, C_out])."""

    features: int
    kernel_size: int
    stride: int
    use_bias: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, c_in = self.kernel_size, self.stride, x.shape[-1]
        fan_in = k * c_in
        kernel = self.param("kernel", logical(nn.initializers.normal(math.sqrt(2.0 / fan_in)),
                                              (None, "conv_in", "conv_out")), (k, c_in, self.features))
        frames = (x.shape[1] - k) // s + 1
        if frames < 1:
            raise ValueError(f"input of {x.shape[1]} steps is shorter than the conv kernel {k}")
        # Tap j of output frame t reads x[s·t + j]: stack the k strided views along channels.
        taps = [jax.lax.slice_in_dim(x, j, j + s * (frames - 1) + 1, stride=s, axis=1) for j in range(k)]
        y = jnp.concatenate(taps, axis=-1) @ kernel.reshape(fan_in, self.features).astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", logical(uniform_init(1 / math.sqrt(fan_in)), ("conv_out",)),
                              (self.features,))
            y = y + bias.astype(self.dtype)
        return y


class FeatureEncoder(nn.Module):
    """Conv stack: per layer conv -> norm -> exact GELU ("layer": LayerNorm over channels in every
    layer; "group": per-channel GroupNorm over time in the first layer only)."""

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, waveforms: jax.Array) -> jax.Array:
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        x = waveforms.astype(dtype)
        for i, (dim, k, s) in enumerate(zip(c.conv_dim, c.conv_kernel, c.conv_stride, strict=True)):
            x = ConvLayer(dim, k, s, c.conv_bias, c.feat_extract_norm, i == 0, c.layer_norm_eps,
                          dtype, name=f"conv_layers_{i}")(x)
        return x


class ConvLayer(nn.Module):
    """One feature-encoder layer; parameter names follow `conv_layers.{i}.{conv,layer_norm}`."""

    features: int
    kernel_size: int
    stride: int
    use_bias: bool
    norm: str
    first: bool
    eps: float
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = FeatureConv(self.features, self.kernel_size, self.stride, self.use_bias, self.dtype,
                        name="conv")(x)
        if self.norm == "layer":
            x = layer_norm(self.eps, self.dtype, "layer_norm")(x)
        elif self.first:
            # GroupNorm(num_groups = channels): each channel normalised over time on its own.
            x = nn.GroupNorm(num_groups=self.features, epsilon=self.eps, dtype=self.dtype,
                             use_fast_variance=False, name="layer_norm",
                             scale_init=logical(nn.initializers.ones, ("conv_out",)),
                             bias_init=logical(nn.initializers.zeros, ("conv_out",)))(x)
        return gelu_exact(x)


class FeatureProjection(nn.Module):
    """LayerNorm (its output, "extract_features", feeds the quantizer) -> Linear to the hidden size."""

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        normed = layer_norm(c.layer_norm_eps, dtype, "layer_norm")(features)
        bound = 1 / math.sqrt(features.shape[-1])
        hidden = nn.Dense(c.hidden_size, dtype=dtype, name="projection",
                          kernel_init=logical(uniform_init(bound), ("conv_out", "embed")),
                          bias_init=logical(uniform_init(bound), ("embed",)))(normed)
        return hidden, normed


# --------------------------------------------------------------------------- transformer


class WeightNormConv(nn.Module):
    """Grouped "same" Conv1d with weight norm over the kernel-tap axis: w = g · v / ‖v‖ per tap.

    `weight_v` [k, C/groups, C] (Flax conv layout) and `weight_g` [k] stay separate parameters, as
    torch's weight_norm(dim=2), so gradients see the same reparametrisation. An even kernel pads
    (k/2, k/2 − 1): torch pads k/2 on both sides and drops the last output frame, the same thing.
    """

    features: int
    kernel_size: int
    groups: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, groups, width = self.kernel_size, self.groups, self.features
        fan_in = (width // groups) * k
        v = self.param("weight_v", logical(uniform_init(1 / math.sqrt(fan_in)), (None, None, "embed")),
                       (k, width // groups, width))
        # torch's weight_norm starts from g = ‖v‖, i.e. w = v.
        g = self.param("weight_g", logical(lambda *_: jnp.sqrt(jnp.sum(v * v, axis=(1, 2))), (None,)))
        bias = self.param("bias", logical(nn.initializers.zeros, ("embed",)), (width,))
        norm = jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=(1, 2), keepdims=True))
        w = g.astype(jnp.float32)[:, None, None] * v.astype(jnp.float32) / norm
        return (grouped_conv_fft(x, w, groups) + bias).astype(self.dtype)


def _fast_fft_length(n: int) -> int:
    """Smallest 2^a·3^b·5^c >= n (lengths FFT libraries handle fastest)."""
    best = 1 << (n - 1).bit_length()
    for p3 in (1, 3, 9, 27, 81):
        for p5 in (1, 5, 25, 125):
            m = p3 * p5
            while m < n:
                m *= 2
            best = min(best, m)
    return best


def grouped_conv_fft(x: jax.Array, w: jax.Array, groups: int) -> jax.Array:
    """"Same" grouped cross-correlation y[t] = Σ_j x[t + j − k/2] · w[j] via real FFTs, in float32.

    x [B, L, C]; w [k, C/groups, C] (Flax layout); zero padding (k/2, (k − 1)/2). XLA's CPU grouped
    convolution with SeisLM's k = 128 is ~50x slower than this (forward + backward), and the FFT
    route costs O(L log L) per channel instead of O(L·k); float32 results agree to ~1e-6.
    """
    batch, length, channels = x.shape
    k, c_in, _ = w.shape
    c_out = channels // groups
    n = _fast_fft_length(length + k - 1)
    spectrum = jnp.fft.rfft(x.astype(jnp.float32).reshape(batch, length, groups, c_in), n=n, axis=1)
    # Correlation = convolution with the kernel reversed in time; output channel o = g·c_out + j.
    kernel = jnp.fft.rfft(w[::-1].reshape(k, c_in, groups, c_out), n=n, axis=0)
    y = jnp.fft.irfft(jnp.einsum("bfgi,figo->bfgo", spectrum, kernel), n=n, axis=1)
    start = k - 1 - k // 2
    return y[:, start:start + length].reshape(batch, length, channels)


class PositionalConvEmbedding(nn.Module):
    """Relative position signal: exact GELU of the weight-normed grouped conv (`pos_conv_embed.conv`)."""

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        return gelu_exact(WeightNormConv(c.hidden_size, c.num_conv_pos_embeddings,
                                         c.num_conv_pos_embedding_groups, jnp.dtype(c.dtype),
                                         name="conv")(x))


class EncoderLayer(nn.Module):
    """Pre-LN (do_stable_layer_norm) or post-LN transformer layer with HF's parameter names."""

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        init = nn.initializers.normal(c.initializer_range)
        attention = MultiHeadAttention(c.num_attention_heads, qkv_init=init, out_init=init, dtype=dtype,
                                       per_example=c.per_example_attention, name="attention")
        feed_forward = Mlp(c.intermediate_size, kernel_init=init, dtype=dtype,
                           names=("intermediate_dense", "output_dense"), name="feed_forward")
        norm1 = layer_norm(c.layer_norm_eps, dtype, "layer_norm")
        norm2 = layer_norm(c.layer_norm_eps, dtype, "final_layer_norm")
        if c.do_stable_layer_norm:
            x = x + attention(norm1(x), key_mask)
            return x + feed_forward(norm2(x))
        x = norm1(x + attention(x, key_mask))
        return norm2(x + feed_forward(x))


class Encoder(nn.Module):
    """x + PosConv(x), then the layers; the one LayerNorm comes last (pre-LN) or first (post-LN).

    Returns every hidden state in HuggingFace's `output_hidden_states` order (N + 1 of them): the
    input of each of the N layers, then the output. Pre-LN: [embedding, layers 0..N−2 un-normed,
    final LayerNorm output]; post-LN: [LayerNorm(embedding), layers 0..N−1]. The last one is the
    encoder's output (unused ones cost nothing under jit).
    """

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array | None) -> tuple[jax.Array, ...]:
        c = self.cfg
        if frame_mask is not None:
            x = jnp.where(frame_mask[..., None], x, 0)
        x = x + PositionalConvEmbedding(c, name="pos_conv_embed")(x)
        norm = layer_norm(c.layer_norm_eps, jnp.dtype(c.dtype), "layer_norm")
        if not c.do_stable_layer_norm:
            x = norm(x)
        states = []
        for i in range(c.num_hidden_layers):
            states.append(x)
            x = EncoderLayer(c, name=f"layers_{i}")(x, frame_mask)
        states.append(norm(x) if c.do_stable_layer_norm else x)
        return tuple(states)


def weighted_layer_sum(hidden_states: tuple[jax.Array, ...] | list[jax.Array],
                       layer_weights: jax.Array) -> jax.Array:
    """Σ_i softmax(layer_weights)_i · hidden_states[i] (SeisLM's `use_weighted_layer_sum`).

    The downstream models normalise each state with its own LayerNorm first; that stays with them
    because those norms are their parameters (`lns.{i}`), not the trunk's.
    """
    if layer_weights.shape != (len(hidden_states),):
        raise ValueError(f"layer_weights must have one weight per hidden state ({len(hidden_states)}), "
                         f"got shape {layer_weights.shape}")
    weights = jax.nn.softmax(layer_weights.astype(jnp.float32))
    stacked = jnp.stack(hidden_states, axis=0)
    return jnp.einsum("n,n...->...", weights.astype(stacked.dtype), stacked,
                      precision=jax.lax.Precision.HIGHEST)


def frame_attention_mask(cfg: Wav2Vec2Config, num_frames: int, batch: int,
                         attention_mask: jax.Array | None) -> jax.Array | None:
    """bool [B, L] of valid frames (right padding), or None when every frame is valid.

    `attention_mask` [B, T] marks real samples (HF's convention); frames past the conv output
    length of the real samples are padding. With `pretraining_attention_quirk` the frame count is
    shortened once more, as the released pretraining did.
    """
    if attention_mask is None and not cfg.pretraining_attention_quirk:
        return None
    if attention_mask is None:
        lengths = jnp.full((batch,), num_frames, jnp.int32)
    else:
        lengths = frames_after_conv(jnp.sum(attention_mask.astype(jnp.int32), axis=-1),
                                    cfg.conv_kernel, cfg.conv_stride)
    if cfg.pretraining_attention_quirk:
        lengths = frames_after_conv(lengths, cfg.conv_kernel, cfg.conv_stride)
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


class Wav2Vec2Model(nn.Module):
    """Feature encoder -> projection -> time masking -> transformer.

    Returns (last hidden state [B, L, H], extract_features, every hidden state as `Encoder`).
    """

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, waveforms: jax.Array, mask_time_indices: jax.Array | None = None,
                 attention_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
        c = self.cfg
        features = FeatureEncoder(c, name="feature_extractor")(waveforms)
        hidden, extract_features = FeatureProjection(c, name="feature_projection")(features)
        batch, frames, _ = hidden.shape
        if mask_time_indices is not None:
            if tuple(mask_time_indices.shape) != (batch, frames):
                raise ValueError(f"mask_time_indices must be [B, L] = {(batch, frames)} for "
                                 f"{waveforms.shape[1]} samples, got {tuple(mask_time_indices.shape)}")
            # Declared only when used: fine-tuned checkpoints may not carry it.
            embed = self.param("masked_spec_embed", logical(nn.initializers.uniform(1.0), ("embed",)),
                               (c.hidden_size,))
            hidden = jnp.where(mask_time_indices.astype(bool)[..., None], embed.astype(hidden.dtype),
                               hidden)
        frame_mask = frame_attention_mask(c, frames, batch, attention_mask)
        states = Encoder(c, name="encoder")(hidden, frame_mask)
        return states[-1], extract_features, states


# --------------------------------------------------------------------------- quantizer


def canonical_code_ids(codebook: jax.Array) -> jax.Array:
    """[G, V] int32: for each code vector the first index in its group holding an identical vector.

    Two frames get identical quantized vectors exactly when their canonical ids agree in every
    group; the contrastive loss uses this to mask negatives identical to the positive.
    """
    equal = jnp.all(codebook[:, :, None, :] == codebook[:, None, :, :], axis=-1)
    return jnp.argmax(equal, axis=-1).astype(jnp.int32)


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer: G groups of V code vectors picked by (straight-through Gumbel) argmax."""

    cfg: Wav2Vec2Config

    @nn.compact
    def __call__(self, features: jax.Array, mask_time_indices: jax.Array, temperature: jax.Array | float,
                 train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """features [B, L, C] -> (quantized [B, L, codevector_dim], perplexity, code ids [B, L, G])."""
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        groups, per_group = c.num_codevector_groups, c.num_codevectors_per_group
        width = c.codevector_dim // groups
        codebook = self.param("codevectors", logical(nn.initializers.uniform(1.0),
                                                     (None, "codevectors", None)),
                              (1, groups * per_group, width))
        logits = nn.Dense(groups * per_group, dtype=dtype, name="weight_proj",
                          kernel_init=logical(nn.initializers.normal(1.0), ("conv_out", "codevectors")),
                          bias_init=logical(nn.initializers.zeros, ("codevectors",)))(features)
        if c.scale_quantizer_logits:
            logits = logits / math.sqrt(features.shape[-1])
        batch, frames, _ = logits.shape
        logits = logits.reshape(batch, frames, groups, per_group).astype(jnp.float32)
        if train:
            noise = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
            soft = jax.nn.softmax((logits + noise) / temperature, axis=-1)
            codes = jnp.argmax(soft, axis=-1)
            # Straight-through: the forward value is exactly one-hot, the gradient that of `soft`.
            probs = jax.nn.one_hot(codes, per_group, dtype=jnp.float32) + (soft - jax.lax.stop_gradient(soft))
            perplexity = losses.codevector_perplexity(jax.nn.softmax(logits, axis=-1), mask_time_indices)
        else:
            codes = jnp.argmax(logits, axis=-1)
            probs = jax.nn.one_hot(codes, per_group, dtype=jnp.float32)
            perplexity = losses.codevector_perplexity(probs, mask_time_indices)
        table = codebook.reshape(groups, per_group, width)
        quantized = jnp.einsum("blgv,gvd->blgd", probs.astype(dtype), table.astype(dtype))
        canonical = canonical_code_ids(jax.lax.stop_gradient(table))
        code_ids = canonical[jnp.arange(groups), codes]
        return quantized.reshape(batch, frames, groups * width), perplexity, code_ids


# --------------------------------------------------------------------------- pretraining model


class Wav2Vec2ForPreTraining(nn.Module):
    """SeisLM's pretraining model. `encode` -> last hidden state; `__call__` -> the objective.

    Parameter tree (mirrors the PyTorch keys): wav2vec2/{masked_spec_embed, feature_extractor,
    feature_projection, encoder}, quantizer/{codevectors, weight_proj}, project_hid, project_q.
    """

    cfg: Wav2Vec2Config

    def setup(self) -> None:
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        self.wav2vec2 = Wav2Vec2Model(c)
        self.quantizer = GumbelVectorQuantizer(c)
        # torch.nn.Linear's default init (reset_parameters in the original): U(±1/sqrt(fan_in)).
        hid_bound, q_bound = 1 / math.sqrt(c.hidden_size), 1 / math.sqrt(c.codevector_dim)
        self.project_hid = nn.Dense(c.proj_codevector_dim, dtype=dtype,
                                    kernel_init=logical(uniform_init(hid_bound), ("embed", None)),
                                    bias_init=logical(uniform_init(hid_bound), (None,)))
        self.project_q = nn.Dense(c.proj_codevector_dim, dtype=dtype,
                                  kernel_init=logical(uniform_init(q_bound), (None, None)),
                                  bias_init=logical(uniform_init(q_bound), (None,)))

    def encode(self, waveforms: jax.Array, *, mask_time_indices: jax.Array | None = None,
               attention_mask: jax.Array | None = None) -> jax.Array:
        """Last hidden state [B, L, H] of waveforms [B, T, C]; masked frames (bool [B, L]) get
        `masked_spec_embed`; `attention_mask` [B, T] (1 = real sample) excludes right padding."""
        check_inputs(self.cfg, waveforms, attention_mask)
        return self.wav2vec2(waveforms, mask_time_indices, attention_mask)[0]

    def __call__(self, waveforms: jax.Array, *, mask_time_indices: jax.Array,
                 sampled_negative_indices: jax.Array, gumbel_temperature: jax.Array | float = 2.0,
                 train: bool = False, attention_mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """The wav2vec 2.0 objective, sum-reduced over masked frames as the original.

        mask_time_indices bool [B, L]; sampled_negative_indices int [B, L, K] into the flattened
        B·L frames (see `seisfuse.masking`). train=True draws Gumbel noise from the 'gumbel' rng.
        """
        check_inputs(self.cfg, waveforms, attention_mask)
        c = self.cfg
        frames = c.frames(waveforms.shape[1])
        if sampled_negative_indices.ndim != 3 or tuple(sampled_negative_indices.shape[:2]) != (
                waveforms.shape[0], frames):
            raise ValueError(f"sampled_negative_indices must be [B, L, K] with [B, L] = "
                             f"{(waveforms.shape[0], frames)}, got {tuple(sampled_negative_indices.shape)}")
        mask = mask_time_indices.astype(bool)
        hidden, extract_features, _ = self.wav2vec2(waveforms, mask, attention_mask)
        projected_states = self.project_hid(hidden)
        quantized, perplexity, code_ids = self.quantizer(extract_features, mask, gumbel_temperature, train)
        projected_quantized_states = self.project_q(quantized)
        terms = losses.wav2vec2_loss(
            projected_states, projected_quantized_states, code_ids, mask, sampled_negative_indices,
            perplexity, num_codevectors=c.num_codevectors,
            temperature=c.contrastive_logits_temperature, diversity_weight=c.diversity_loss_weight)
        return {**terms, "codevector_perplexity": perplexity, "projected_states": projected_states,
                "projected_quantized_states": projected_quantized_states}
